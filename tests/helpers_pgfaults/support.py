"""Support for the Postgres fault tests: the instrumented node process, raw SQL, the final checks.

Builds on tests/helpers_postgres/support.py (the server, namespaces, ``Node``).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
from collections import Counter as Multiset
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
from psycopg import sql

from pachyderm_typed.ecosystems import Postgres
from tests.helpers_postgres.app import Account, Sink
from tests.helpers_postgres.support import DSN, ROOT, Node

CHECKER = "pgfaults-checker"  # application_name of the tests' own raw connections


class FaultNode(Node):
    """A process of tests/helpers_pgfaults/node.py; reads its lines like ``Node`` does."""

    def __init__(self, namespace: str, name: str, *args: str) -> None:  # noqa: D107
        # Node.__init__ starts tests.helpers_postgres.node; the rest of Node is reused as is.
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers_pgfaults.node", DSN, namespace, name, *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def count(self, prefix: str) -> int:
        with self._changed:
            return sum(line.startswith(prefix) for line in self.lines)

    def wait_count(self, prefix: str, n: int, timeout: float = 60.0) -> None:
        """Wait until the node printed ``n`` lines starting with ``prefix`` (a hang guard, not a timing)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(line.startswith(prefix) for line in self.lines) < n:
                if "<eof>" in self.lines:
                    raise AssertionError(f"node {self.name} exited ({self.proc.wait()}) before {n} {prefix!r} lines")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"node {self.name} printed fewer than {n} {prefix!r} lines in {timeout} s")
                self._changed.wait(remaining)

    def fails(self) -> list[tuple[str, str]]:
        """(applied, op) of each call that raised DatabaseUnavailableError."""
        with self._changed:
            return [(line.split()[1], line.split()[2]) for line in self.lines if line.startswith("fail ")]


def connect() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(DSN, autocommit=True, application_name=CHECKER)


def query(statement: str, namespace: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    """Run ``statement`` with ``{s}`` standing for the namespace's schema."""
    with connect() as conn:
        params = tuple(params)
        cursor = conn.execute(sql.SQL(statement).format(s=sql.Identifier(namespace)), params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def count_rows(namespace: str, table: str) -> int:
    return int(query(f"SELECT count(*) FROM {{s}}.{table}", namespace)[0][0])


def snapshot(namespace: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables that hold data, in a stable order (for before/after comparisons)."""
    orders = {"entities": "kind, id", "pending": "seq", "dead_letters": "id"}
    return {
        table: [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in query(f"SELECT * FROM {{s}}.{table} ORDER BY {order}", namespace)]
        for table, order in orders.items()
    }


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll ``condition`` (a hang guard for work other processes do, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def library_log() -> Iterator[list[str]]:
    """The messages the Postgres ecosystem logs meanwhile (its workers' warnings, for instance)."""
    handler = _Collect()
    logger = logging.getLogger("pachyderm_typed.postgres")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def terminate_backends(namespace: str) -> int:
    """``pg_terminate_backend`` every connection of the namespace's nodes; how many there were."""
    with connect() as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (f"pachyderm-typed {namespace}",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def check_deposits(
    checker: Postgres[Any], nodes: Iterable[FaultNode], accounts: int, sinks: int
) -> dict[str, int]:
    """The invariants after a fault run of the Deposit load; returns counts for the report.

    Every acknowledged call applied exactly once; a call that raised with ``applied=False``
    not applied; nothing applied twice; FIFO per (sender, account); every applied deposit
    forwarded to its sink exactly once.
    """
    nodes = list(nodes)
    errors = [line for node in nodes for line in node.lines if line.startswith("error ")]
    assert not errors, f"calls failed with something other than DatabaseUnavailableError: {errors[:5]}"
    acked = Multiset(op for node in nodes for op in node.acks())
    assert all(n == 1 for n in acked.values()), "an op was acknowledged twice (the test's senders are broken)"
    fails = [fail for node in nodes for fail in node.fails()]
    assert {applied for applied, _ in fails} <= {"False", "None"}
    not_applied = {op for applied, op in fails if applied == "False"}

    ledgers = {f"a{i}": checker.state(Account.address(f"a{i}")) for i in range(accounts)}
    boxes = {f"s{i}": checker.state(Sink.address(f"s{i}")) for i in range(sinks)}
    assert checker.dead_letters() == []
    applied = Multiset(op for ledger in ledgers.values() for op in ledger.ops)
    twice = [op for op, n in applied.items() if n > 1]
    assert not twice, f"applied twice: {twice[:10]}"
    assert all(ledger.duplicates == 0 and ledger.out_of_order == 0 for ledger in ledgers.values())
    lost = set(acked) - set(applied)
    assert not lost, f"acknowledged but lost: {sorted(lost)[:10]}"
    ghosts = not_applied & set(applied)
    assert not ghosts, f"reported 'nothing was applied' but applied: {sorted(ghosts)[:10]}"
    forwarded = Multiset(f.op for box in boxes.values() for f in box)
    assert forwarded == applied, "forwarded messages did not arrive exactly once"
    for ledger in ledgers.values():
        by_sender: dict[str, list[int]] = {}
        for op in ledger.ops:
            sender, _, n = op.rsplit(":", 2)
            by_sender.setdefault(sender, []).append(int(n))
        assert all(ns == sorted(ns) for ns in by_sender.values()), "FIFO per (sender, account) broken"
    for box in boxes.values():
        for account, ledger in ledgers.items():
            arrived = [f.op for f in box if f.account == account]
            chosen = set(arrived)
            assert arrived == [op for op in ledger.ops if op in chosen], "FIFO per (account, sink) broken"
    return {
        "acked": len(acked),
        "applied": sum(applied.values()),
        "applied_unacked": len(set(applied) - set(acked)),
        "fail_false": len(not_applied),
        "fail_none": sum(1 for applied_flag, _ in fails if applied_flag == "None"),
    }
