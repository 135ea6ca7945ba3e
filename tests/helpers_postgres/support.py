"""Test support for the Postgres tests: the server to use, namespaces, node processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DSN = os.environ.get("PACHYDERM_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[2]


def _unavailable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'pachyderm-typed[postgres]')"
    try:
        with psycopg.connect(DSN, connect_timeout=3):
            pass
    except Exception as exc:  # noqa: BLE001 - any failure means "no server to test against"
        return f"cannot connect to {DSN}: {exc}"
    return None


UNAVAILABLE = _unavailable()
requires_postgres = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")


def new_namespace() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh namespace, dropped after the test."""
    from pachyderm_typed.ecosystems import Postgres

    name = new_namespace()
    yield name
    Postgres.drop_namespace(DSN, name)


class Node:
    """A node process (tests/helpers_postgres/node.py) and the lines it printed."""

    def __init__(self, namespace: str, name: str, *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers_postgres.node", DSN, namespace, name, *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<eof>")
            self._changed.notify_all()

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                if "<eof>" in self.lines:
                    raise AssertionError(f"node {self.name} exited ({self.proc.wait()}) before {prefix!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"node {self.name} printed no {prefix!r} within {timeout} s")
                self._changed.wait(remaining)

    def acks(self) -> list[str]:
        with self._changed:
            return [line.split()[1] for line in self.lines if line.startswith("ack ")]

    def errors(self) -> list[str]:
        with self._changed:
            return [line for line in self.lines if line.startswith("error ")]

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join()

    def close(self, timeout: float = 30.0) -> int:
        """End stdin, wait for a clean exit; return how many messages the node processed."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        line = self.wait_for("processed", timeout)
        self.proc.wait(timeout)
        return int(line.split()[1])

    def kill_if_running(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
