"""InMemory in a real process, under real signals. (Python runs signal handlers in the main
thread, in the middle of whatever it was doing; in memory the main thread works inline,
holding the engine's locks while it does.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60


def run(mode: str, seconds: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers_inmemory.child", mode, seconds],
        cwd=ROOT, capture_output=True, text=True, timeout=WAIT,
    )


def test_a_signal_handler_that_calls_in_is_answered_or_refused_never_left_waiting() -> None:
    """Landing inside the engine, the handler's call is refused (ReentrantCallError, or
    SendInsideActivationError inside an activation); elsewhere it is answered. Before the
    fix, one landing inside the engine waited forever for locks its own thread held."""
    done = run("handler", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    answered, refused = report["answered"], report["refused"]
    assert refused.get("ReentrantCallError", 0) > 0, f"no handler landed inside the engine: {report}"
    assert answered, f"no handler landed outside the engine: {report}"
    assert report["final"]["c"] == report["main"] + len(answered)  # each answered call counted once
    assert report["final"]["t"] == report["thread"]


def test_a_sigterm_handler_that_closes_the_world_mid_call_exits_cleanly() -> None:
    """A graceful shutdown: the handler lands wherever the main thread is (most often inside
    the engine), closes the world and exits. Before the fix, close() waited forever there."""
    done = run("sigterm", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["closing"]
