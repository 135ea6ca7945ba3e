"""Guards that turn a hang into a test failure."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from pachyderm_typed import World
from pachyderm_typed.testing import WorldFactory

if TYPE_CHECKING:  # conftest arms hangs_fail for every test: it imports this module
    from tests.conftest import MakeWorld


@contextlib.contextmanager
def hangs_fail(seconds: int = 20, what: str = "the engine stopped answering", again: int = 0) -> Iterator[None]:
    """Turn a call left waiting forever into a failure (pytest runs tests in the main thread,
    where SIGALRM's handler can interrupt a blocked call). ``again``: seconds after which it
    fires once more, if what runs after the first failure (closing a stuck world) hangs too."""

    def expired(signum: int, frame: object) -> None:
        signal.alarm(again)
        raise TimeoutError(f"still waiting after {seconds} s: {what}")

    previous = signal.signal(signal.SIGALRM, expired)
    outer = signal.alarm(seconds)  # the whole test's guard (conftest), armed again after
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        signal.alarm(outer)


def fail_stuck(make_world: MakeWorld, world: World[Any], what: str) -> NoReturn:
    """Fail a test whose world waits forever: that world cannot be closed either, so it is
    left to its daemon threads rather than hang the teardown."""
    assert isinstance(make_world, WorldFactory)
    make_world.opened.remove(world)
    pytest.fail(what)


def on_thread_or_fail(make_world: MakeWorld, world: World[Any], target: Callable[[], object], what: str,
                      seconds: float = 20.0) -> None:
    """Run ``target`` on a daemon thread and wait for it; still running after ``seconds``,
    it is waiting forever: fail the test (see ``fail_stuck``) with ``what``."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fail_stuck(make_world, world, f"{what} is still waiting after {seconds:g} s")
