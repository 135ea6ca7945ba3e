"""A signal handler's call whose commit is pushed to a subscription the main thread was
reading when the signal landed (a real process, real signals; see follow_handler_child)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pachyderm_typed.ecosystems import LocalDisk
from tests.entities import App, Counter

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ecosystem", ["inmemory", "localdisk"])
def test_a_handler_call_landing_in_a_subscription_read_is_pushed_to_it(tmp_path: Path, ecosystem: str) -> None:
    """Landing on every line of the read in turn, the handler's call commits and its state is
    pushed to the subscription being read: nothing waits for the interrupted read."""
    path = tmp_path / "follow.db"
    done = subprocess.run(
        [sys.executable, "-m", "tests.follow_handler_child", ecosystem, str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,  # a push left waiting hangs the child
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    answered, seen = report["answered"], report["seen"]
    assert report["lines"] > 5 and answered, "the signals did not land in the read"
    assert seen == list(range(1, 11 + len(answered))), "a committed state was not handed out, in order"
    if ecosystem == "localdisk":
        with LocalDisk(App, path) as world:
            assert world.state(Counter.address("c")) == len(seen)
