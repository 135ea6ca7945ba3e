"""Guards that turn a hang into a test failure."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from pachyderm_typed import World
from pachyderm_typed.testing import WorldFactory
from tests.conftest import MakeWorld


@contextlib.contextmanager
def hangs_fail(seconds: int = 20) -> Iterator[None]:
    """Turn a call left waiting forever into a failure (pytest runs tests in the main thread,
    where SIGALRM's handler can interrupt a blocked call)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still waiting after {seconds} s: the engine stopped answering")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fail_stuck(make_world: MakeWorld, world: World[Any], what: str) -> NoReturn:
    """Fail a test whose world waits forever: that world cannot be closed either, so it is
    left to its daemon threads rather than hang the teardown."""
    assert isinstance(make_world, WorldFactory)
    make_world.opened.remove(world)
    pytest.fail(what)
