"""Helpers for testing your own entities: isolated worlds per test, and Hypothesis strategies.

In a ``conftest.py``::

    pytest_plugins = ["pachyderm_typed.testing"]

then, in a test::

    def test_counter(pachyderm_world):
        world = pachyderm_world(App)             # InMemory by default
        assert world.send_sync(Counter.post("c", Increment())) == 1

Choose the ecosystem with a marker, ``@pytest.mark.pachyderm_ecosystem("localdisk")``,
or run a test on several with ``@pytest.mark.parametrize("pachyderm_world",
["inmemory", "localdisk", "simulation"], indirect=True)``. Every world opened through
the fixture is closed after the test; LocalDisk files live in the test's ``tmp_path``;
Postgres worlds get a fresh schema (dropped afterwards) in the database named by the
``PACHYDERM_TEST_DSN`` environment variable.

Strategies (need ``hypothesis``): ``addresses(Counter, st.text())`` and
``envelopes(Counter, st.text(), st.builds(Increment))``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._ecosystem import Ecosystem
from pachyderm_typed._entity import Entity
from pachyderm_typed._world import World

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

E = TypeVar("E")
I = TypeVar("I")  # noqa: E741
M = TypeVar("M")
S = TypeVar("S")

ECOSYSTEMS = ("inmemory", "localdisk", "postgres", "simulation")
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


class WorldFactory:
    """Opens worlds of one ecosystem kind and closes (and cleans up) all of them at the end."""

    def __init__(self, ecosystem: str, directory: Path, dsn: str | None = None) -> None:
        if ecosystem not in ECOSYSTEMS:
            raise ValueError(f"unknown ecosystem {ecosystem!r}: choose one of {', '.join(ECOSYSTEMS)}")
        self.ecosystem = ecosystem
        self.directory = directory
        self.dsn = dsn or os.environ.get("PACHYDERM_TEST_DSN", DEFAULT_DSN)
        self.opened: list[World[Any]] = []
        self._cleanups: list[Callable[[], None]] = []
        self._namespace: str | None = None

    def __call__(self, declaration: type[Ecosystem[E]], **options: Any) -> World[E]:
        world = self._open(declaration, options)
        self.opened.append(world)
        return world

    def _open(self, declaration: type[Ecosystem[E]], options: dict[str, Any]) -> World[E]:
        from pachyderm_typed import ecosystems

        if self.ecosystem == "inmemory":
            return ecosystems.InMemory(declaration, **options)
        if self.ecosystem == "localdisk":
            path = self.directory / f"world-{len(self.opened)}.db"
            return ecosystems.LocalDisk(declaration, path, **options)
        if self.ecosystem == "simulation":
            return ecosystems.Simulation(declaration, **options)
        postgres = ecosystems.Postgres
        if self._namespace is None:
            namespace = f"test_{uuid.uuid4().hex[:16]}"
            self._namespace = namespace
            self._cleanups.append(lambda: postgres.drop_namespace(self.dsn, namespace))
        return postgres(declaration, self.dsn, namespace=self._namespace, **options)

    def close(self) -> None:
        for world in self.opened:
            world.close()
        self.opened.clear()
        for cleanup in self._cleanups:
            cleanup()
        self._cleanups.clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pachyderm_ecosystem(name): the ecosystem the pachyderm_world fixture opens"
    )


@pytest.fixture
def pachyderm_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorldFactory]:
    """A factory of fresh, isolated worlds, closed after the test."""
    ecosystem = getattr(request, "param", None)
    if ecosystem is None:
        marker = request.node.get_closest_marker("pachyderm_ecosystem")
        ecosystem = marker.args[0] if marker else "inmemory"
    factory = WorldFactory(ecosystem, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def addresses(entity: type[Entity[I, M, S]], ids: SearchStrategy[I]) -> SearchStrategy[Address[Any, M, S]]:
    """Addresses of ``entity`` with ids drawn from ``ids``."""
    return ids.map(entity.address)


def envelopes(
    entity: type[Entity[I, M, S]], ids: SearchStrategy[I], messages: SearchStrategy[M]
) -> SearchStrategy[Envelope[Any, S]]:
    """Envelopes to ``entity`` with ids from ``ids`` and messages from ``messages``."""
    from hypothesis import strategies as st

    return st.tuples(ids, messages).map(lambda pair: entity.post(pair[0], pair[1]))
