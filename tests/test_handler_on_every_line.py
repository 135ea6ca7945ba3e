"""A signal handler calling in on every line of the package the main thread runs (a real
process, real signals; see handler_on_every_line_child)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pachyderm_typed.ecosystems import LocalDisk, Postgres
from tests.entities import App, Counter
from tests.handler_fuzz import run_pair
from tests.helpers_postgres.support import DSN, UNAVAILABLE, new_namespace

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["inmemory", "localdisk", "postgres"])
def ecosystem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(ecosystem, where): a file in tmp_path, or a namespace dropped afterwards."""
    name: str = request.param
    if name != "postgres":
        yield name, str(tmp_path / "every-line.db")
        return
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    namespace = new_namespace()
    try:
        yield name, namespace
    finally:
        Postgres.drop_namespace(DSN, namespace)


def test_a_handler_calling_in_on_any_line_is_answered_or_refused_and_loses_nothing(
    ecosystem: tuple[str, str],
) -> None:
    """Wherever it lands, the handler's call is answered or refused with a clear error, never
    left waiting for what the interrupted code holds (before: a subscription's lock, then
    Postgres's local-follower lock); every committed state reaches the subscription, in order."""
    check_every_line_report(*ecosystem)


@pytest.mark.parametrize("name", ["inmemory", "localdisk"])
def test_a_handler_calling_in_while_another_thread_commits_is_answered_or_refused(
    name: str, tmp_path: Path
) -> None:
    """The same, with another thread holding the commit lock each time the handler runs, so
    the handler's calls wait for that thread to answer them. Before the fix, in memory, a
    handler landing just after the main thread queued its message had its call processed
    with it and answered after it, in the chain of wake-ups the main thread passes on as it
    leaves: it never did, as it waited for the handler."""
    check_every_line_report(name, str(tmp_path / "every-line.db"), "held")


def check_every_line_report(name: str, where: str, *options: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.handler_on_every_line_child", name, where, *options],
        cwd=ROOT, capture_output=True, text=True, timeout=120,  # a call left waiting hangs the child
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    answered, seen = report["answered"], report["seen"]
    assert report["lines"] > 50 and answered, "the signals did not land in the engine"
    assert seen == list(range(1, 11 + len(answered))), "a committed state was not handed out, in order"
    if name == "localdisk":
        with LocalDisk(App, where) as world:
            assert world.state(Counter.address("c")) == len(seen)
    elif name == "postgres":
        with Postgres(App, DSN, namespace=where, workers=0) as world:
            assert world.state(Counter.address("c")) == len(seen)


def test_a_handler_discarding_the_dead_letter_being_retried_is_refused_not_left_waiting(
    ecosystem: tuple[str, str],
) -> None:
    """A handler landing anywhere in a retry discards that same dead letter: it succeeds before
    the retry takes it, is told it is gone after, and is refused in between; never left waiting
    for the letter's row, which the interrupted retry holds until the handler returns (before:
    a hang on Postgres). Each letter is applied by its retry or discarded, never both."""
    name, where = ecosystem
    done = subprocess.run(
        [sys.executable, "-m", "tests.dead_letter_handler_child", name, where],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert sum(outcome["lines"] for outcome in report["rounds"]) > 50, "the signals did not land in the engine"
    for outcome, total in zip(report["rounds"], report["totals"], strict=True):
        assert outcome["retried"] + outcome["discarded"] == 1, outcome
        assert total == (1 if outcome["retried"] else 0), (outcome, total)
    assert report["left"] == []
    if name != "localdisk":  # LocalDisk moves the letter on a thread of its own: nothing to refuse
        assert any(outcome["reentrant"] for outcome in report["rounds"]), report


@pytest.mark.parametrize("main_op", ["send_sync", "state", "follow"])
@pytest.mark.parametrize("name", ["inmemory", "localdisk", "postgres"])
def test_a_handler_awaiting_an_async_call_is_refused_where_the_engine_waits_for_it(name: str, main_op: str) -> None:
    """A handler may run an event loop of its own and await asend_sync. Where the main thread
    is inside the engine (in memory: a call; LocalDisk: a read; Postgres: any call), the
    awaited work runs on another thread, which waits for what the interrupted call holds,
    and the handler for that thread: the child hung there, in all three (found by
    ``python -m tests.handler_fuzz``). Refused with ReentrantCallError now, served elsewhere,
    and every answered call counts once (the child checks; see ``handler_fuzz``)."""
    if name == "postgres" and UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    ok, detail, report = run_pair(name, main_op, "asend_sync")
    assert ok, detail
    assert report["lines"] > 20, "the signals did not land in the engine"
    if name == "inmemory" or main_op != "send_sync":  # (LocalDisk's main thread waits outside the engine)
        assert report["refused"], "no handler landed where the main thread holds the engine"


@pytest.mark.parametrize("main_op", ["send", "send_sync", "retry"])
@pytest.mark.parametrize("name", ["localdisk", "postgres"])
def test_ctrl_c_on_any_line_of_a_call_applies_it_once_or_not_at_all(name: str, main_op: str) -> None:
    """A KeyboardInterrupt lands, once per call, wherever Python would run Ctrl-C's handler in
    the main thread's call (a timer's SIGALRM; see ``EveryLine``). The call is applied once or
    not at all, no other caller notices, and the main thread's later calls work: a Postgres
    call interrupted just after it marked the thread as activating used to look as if it left
    the mark set (an artefact of the timer going off inside the trace function itself)."""
    if name == "postgres" and UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    ok, detail, report = run_pair(name, main_op, "raise")
    assert ok, detail
    assert report["lines"] > 30, "the signals did not land in the engine"
    assert report["interrupted"] > 10, "no interrupt stopped a call"
