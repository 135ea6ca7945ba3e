"""Fixtures: a fresh, isolated world per test, on every ecosystem that is available here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pachyderm_typed import World
from pachyderm_typed.ecosystems import InMemory

PG_DSN = os.environ.get("PACHYDERM_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")

MakeWorld = Callable[..., World[Any]]


def _postgres_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'pachyderm-typed[postgres]')"
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure means "no server to test against"
        return f"cannot connect to {PG_DSN}: {exc}"
    return None


@pytest.fixture(params=["inmemory", "localdisk", "postgres"])
def make_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeWorld]:
    """``make_world(App, **options)`` opens a world on the parametrised ecosystem."""
    opened: list[World[Any]] = []
    cleanups: list[Callable[[], None]] = []
    kind = request.param

    if kind == "inmemory":
        def make(app: Any, **options: Any) -> World[Any]:
            return InMemory(app, **options)
    elif kind == "localdisk":
        try:
            from pachyderm_typed.ecosystems import LocalDisk
        except ImportError:
            pytest.skip("LocalDisk is not built yet")

        def make(app: Any, **options: Any) -> World[Any]:
            return LocalDisk(app, tmp_path / f"world{len(opened)}.db", **options)
    else:
        reason = _postgres_reason()
        if reason:
            pytest.skip(reason)
        try:
            from pachyderm_typed.ecosystems import Postgres
        except ImportError:
            pytest.skip("Postgres is not built yet")
        namespace = f"t_{uuid.uuid4().hex[:12]}"
        cleanups.append(lambda: Postgres.drop_namespace(PG_DSN, namespace))

        def make(app: Any, **options: Any) -> World[Any]:
            return Postgres(app, PG_DSN, namespace=namespace, **options)

    def tracked(app: Any, **options: Any) -> World[Any]:
        world = make(app, **options)
        opened.append(world)
        return world

    try:
        yield tracked
    finally:
        for world in opened:
            world.close()
        for cleanup in cleanups:
            cleanup()
