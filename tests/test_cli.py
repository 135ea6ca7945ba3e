"""``python -m pachyderm_typed inspect`` as a user runs it: a real subprocess, on a file and a DSN."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pachyderm_typed.ecosystems import LocalDisk
from tests.conftest import PG_DSN, POSTGRES_UNAVAILABLE
from tests.entities import App, Counter, Increment


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pachyderm_typed", "inspect", *args], capture_output=True, text=True, timeout=60
    )


def test_inspect_a_localdisk_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Counter.post("c", Increment(by=4)))
    summary = inspect(str(path))
    assert summary.returncode == 0, summary.stderr
    assert "Counter" in summary.stdout and "pending messages: 0" in summary.stdout
    one = inspect(str(path), "Counter", "c")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == 4
    missing = inspect(str(tmp_path / "nope.db"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    usage = inspect(str(path), "Counter")
    assert usage.returncode == 2


def test_inspect_a_postgres_namespace() -> None:
    if POSTGRES_UNAVAILABLE:
        pytest.skip(POSTGRES_UNAVAILABLE)
    from pachyderm_typed.ecosystems import Postgres

    namespace = f"cli_{uuid.uuid4().hex[:12]}"
    try:
        with Postgres(App, PG_DSN, namespace=namespace) as world:
            world.send_sync(Counter.post("c", Increment(by=5)))
        summary = inspect(PG_DSN, "--namespace", namespace)
        assert summary.returncode == 0, summary.stdout + summary.stderr
        assert "Counter" in summary.stdout
        one = inspect(PG_DSN, "--namespace", namespace, "Counter", "c")
        assert one.returncode == 0, one.stdout + one.stderr
        record = json.loads(one.stdout)
        assert (record["kind"], record["id"], record["state"]) == ("Counter", "c", 5)
        absent = inspect(PG_DSN, f"--namespace={namespace}", "Counter", "nobody")
        assert absent.returncode == 1
    finally:
        Postgres.drop_namespace(PG_DSN, namespace)
