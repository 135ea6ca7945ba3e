"""Fixtures: a fresh, isolated world per test, on every ecosystem that is available here.

Built on the library's own testing helper (``pachyderm_typed.testing``), which users
get too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pachyderm_typed.testing"]
pytest.register_assert_rewrite("pachyderm_typed.testing")  # imported below, before pytest loads it as a plugin

from pachyderm_typed import World  # noqa: E402
from pachyderm_typed.testing import WorldFactory  # noqa: E402
from tests.guards import hangs_fail  # noqa: E402
from tests.helpers_postgres.support import DSN as PG_DSN  # noqa: E402
from tests.helpers_postgres.support import UNAVAILABLE as POSTGRES_UNAVAILABLE  # noqa: E402

MakeWorld = Callable[..., World[Any]]

#: seconds any one test may take: a hang fails that test instead of holding the whole run
#: until CI gives up on it
TEST_SECONDS = 300


@pytest.fixture(autouse=True)
def _a_hang_fails_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs under ``hangs_fail`` (tests that arm a shorter one inside get this
    one back after it)."""
    with hangs_fail(TEST_SECONDS, f"{request.node.nodeid} hangs", again=30):
        yield


@pytest.fixture(params=["inmemory", "localdisk", "postgres"])
def make_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorldFactory]:
    """``make_world(App, **options)`` opens a world on the parametrised ecosystem."""
    if request.param == "postgres" and POSTGRES_UNAVAILABLE:
        pytest.skip(POSTGRES_UNAVAILABLE)
    factory = WorldFactory(request.param, tmp_path, PG_DSN)
    try:
        yield factory
    finally:
        factory.close()
