"""Fixtures: a fresh, isolated world per test, on every ecosystem that is available here.

Built on the library's own testing helper (``pachyderm_typed.testing``), which users
get too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pachyderm_typed.testing"]
pytest.register_assert_rewrite("pachyderm_typed.testing")  # imported below, before pytest loads it as a plugin

from pachyderm_typed import World  # noqa: E402
from pachyderm_typed.testing import DEFAULT_DSN, WorldFactory  # noqa: E402

PG_DSN = os.environ.get("PACHYDERM_TEST_DSN", DEFAULT_DSN)

MakeWorld = Callable[..., World[Any]]


def _postgres_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'pachyderm-typed[postgres]')"
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            pass
    except Exception as exc:  # any failure means "no server to test against"
        return f"cannot connect to {PG_DSN}: {exc}"
    return None


@pytest.fixture(params=["inmemory", "localdisk", "postgres"])
def make_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorldFactory]:
    """``make_world(App, **options)`` opens a world on the parametrised ecosystem."""
    if request.param == "postgres":
        reason = _postgres_reason()
        if reason:
            pytest.skip(reason)
    factory = WorldFactory(request.param, tmp_path, PG_DSN)
    try:
        yield factory
    finally:
        factory.close()
