"""The Postgres rows of the fault matrix: real node processes, real SIGKILL, a real server.

Each test runs node processes (tests/helpers_pgfaults/node.py) in a fresh namespace and
hurts them: SIGKILL right before or right after a COMMIT, at random offsets from commits,
while 32 callers share one node, while a 5,000-message backlog is being recovered, while
v2 code upgrades v1 records; or ``pg_terminate_backend`` on every connection of the nodes
while they are under load. Afterwards, from another node: every acknowledged call is
applied exactly once, a call that raised ``DatabaseUnavailableError(applied=False)`` is not
applied, nothing is applied twice, every forwarded message arrived exactly once, in order.
"""

from __future__ import annotations

import random
import time

import pytest

from pachyderm_typed import UpgradeError
from pachyderm_typed.ecosystems import Postgres
from tests.helpers_pgfaults.app import Pay, PayAll, Payroll1, Wallet1, Wallet2, WalletApp1, WalletApp2, WalletV2
from tests.helpers_pgfaults.support import (
    FaultNode,
    check_deposits,
    count_rows,
    library_log,
    query,
    snapshot,
    terminate_backends,
    wait_until,
)
from tests.helpers_postgres.app import Account, Log, NodesApp, Spawner, Spread, Tally
from tests.helpers_postgres.support import DSN, namespace, requires_postgres

__all__ = ["namespace"]  # the fixture

pytestmark = requires_postgres

ACCOUNTS = 16
SINKS = 8


def _drained(namespace: str) -> bool:
    return count_rows(namespace, "pending") == 0


def _finish(namespace: str, live: list[FaultNode]) -> None:
    """Stop the load of the live nodes, let them drain every pending message, close them."""
    for node in live:
        node.say("stop")
    for node in live:
        node.wait_for("load stopped")
    wait_until(lambda: _drained(namespace), "the surviving nodes to process every pending message")
    for node in live:
        node.close()


def _kill_all(nodes: list[FaultNode]) -> None:
    for node in nodes:
        node.kill_if_running()


# -- SIGKILL during a commit ------------------------------------------------------------------


def test_sigkill_right_before_or_right_after_commit_is_all_or_nothing(namespace: str) -> None:
    jobs = 40
    everyone: list[FaultNode] = []

    def paused(name: str, *args: str) -> tuple[FaultNode, str]:
        node = FaultNode(namespace, name, *args)
        everyone.append(node)
        line = node.wait_for("paused ")
        node.sigkill()
        return node, line.split()[-1]

    checker = Postgres(NodesApp, DSN, namespace=namespace, workers=0)
    try:
        checker.send(Spawner.post("sp", Spread(workers=jobs, records=0)))  # 40 Jobs wait in `pending`
        start = snapshot(namespace)
        job_seqs = {row[0] for row in start["pending"]}

        # A worker's batch, killed with its COMMIT never sent: none of it ever shows.
        paused("wb", "--workers", "1", "--commits", "before", "--on", "worker")
        assert snapshot(namespace) == start

        # Killed right after the server acknowledged COMMIT: all of it is there.
        _, detail = paused("wa", "--workers", "1", "--commits", "after", "--on", "worker")
        consumed = {int(seq) for seq in detail.removeprefix("seqs=").split(",")}
        assert consumed == job_seqs  # one batch took every Job
        now = snapshot(namespace)
        assert not {row[0] for row in now["pending"]} & consumed
        assert count_rows(namespace, "pending") == jobs  # one Tally tick per Job, not yet processed
        workers = query("SELECT version FROM {s}.entities WHERE kind = 'Worker'", namespace)
        assert sorted(v for (v,) in workers) == [1] * jobs

        # A caller's transaction (its 6th call), killed before and after COMMIT.
        caller_args = ("--workers", "0", "--threads", "1", "--accounts", str(ACCOUNTS), "--sinks", str(SINKS))
        before, lost_op = paused("cb", *caller_args, "--commits", "before", "--on", "caller", "--skip", "5")
        after, kept_op = paused("ca", *caller_args, "--commits", "after", "--on", "caller", "--skip", "5")
        assert len(before.acks()) == 5 and lost_op not in before.acks()
        assert len(after.acks()) == 5 and kept_op not in after.acks()

        def ops_of(op: str) -> tuple[str, ...]:
            return checker.state(Account.address(op.rsplit(":", 2)[1])).ops

        assert lost_op not in ops_of(lost_op)
        assert ops_of(kept_op).count(kept_op) == 1  # committed, though the caller never heard back

        drain = FaultNode(namespace, "drain", "--workers", "2")
        everyone.append(drain)
        drain.wait_for("ready")
        _finish(namespace, [drain])
        assert checker.state(Tally.address("tally")) == jobs
        counts = check_deposits(checker, everyone, ACCOUNTS, SINKS)
        assert counts["applied"] == counts["acked"] + 1  # the 10 acknowledged calls and kept_op
    finally:
        _kill_all(everyone)
        checker.close()


def test_sigkill_at_random_offsets_from_commits(namespace: str) -> None:
    """Two nodes under load; 12 times, one is SIGKILLed 0-4 ms after it starts a COMMIT."""
    rng = random.Random(6_0001)
    args = ("--workers", "2", "--threads", "3", "--tasks", "3", "--accounts", str(ACCOUNTS),
            "--sinks", str(SINKS), "--commits", "trace")
    checker = Postgres(NodesApp, DSN, namespace=namespace, workers=0)  # creates the schema first
    live = [FaultNode(namespace, f"n{i}", *args) for i in range(2)]
    everyone = list(live)
    try:
        for _ in range(12):
            slot = rng.randrange(len(live))
            node = live[slot]
            node.wait_for("ready")
            node.wait_count("commit ", node.count("commit ") + rng.randint(1, 40))
            time.sleep(rng.uniform(0, 0.004))
            node.sigkill()
            live[slot] = FaultNode(namespace, f"n{slot}", *args)
            everyone.append(live[slot])
        for node in live:
            node.wait_count("ack ", 50)  # each replacement works too
        _finish(namespace, live)
        counts = check_deposits(checker, everyone, ACCOUNTS, SINKS)
        assert counts["acked"] >= 100
        kills = [node for node in everyone if node.proc.returncode == -9]
        assert len(kills) == 12
    finally:
        _kill_all(everyone)
        checker.close()


# -- SIGKILL during group commit with many callers --------------------------------------------


def test_sigkill_while_32_callers_share_a_node(namespace: str) -> None:
    """16 threads and 16 asyncio tasks call one node; it is SIGKILLed mid-flight 3 times,
    while another node keeps processing the forwarded messages."""
    rng = random.Random(6_0002)
    accounts = 32
    args = ("--workers", "1", "--threads", "16", "--tasks", "16", "--accounts", str(accounts), "--sinks", str(SINKS))
    checker = Postgres(NodesApp, DSN, namespace=namespace, workers=0)
    other = FaultNode(namespace, "other", "--workers", "2")
    everyone = [other]
    try:
        for round_no in range(3):
            node = FaultNode(namespace, f"callers{round_no}", *args)
            everyone.append(node)
            node.wait_for("ready")
            node.wait_count("ack ", rng.randint(100, 300))
            node.sigkill()
        last = FaultNode(namespace, "callers-last", *args)
        everyone.append(last)
        last.wait_for("ready")
        last.wait_count("ack ", 50)
        _finish(namespace, [last, other])
        counts = check_deposits(checker, everyone, accounts, SINKS)
        assert counts["acked"] >= 350
    finally:
        _kill_all(everyone)
        checker.close()


# -- SIGKILL during recovery of pending messages ----------------------------------------------


def test_sigkill_while_nodes_recover_5000_pending_messages(namespace: str) -> None:
    """A fan-out of 5,000 messages waits in the database; nodes that drain it are SIGKILLed
    right before or right after one of their commits, 8 times; every message is delivered once."""
    rng = random.Random(6_0003)
    jobs, records = 4000, 1000
    checker = Postgres(NodesApp, DSN, namespace=namespace, workers=0)
    everyone: list[FaultNode] = []

    def start() -> FaultNode:
        # One worker with small batches: once it pauses at its kill point, the node does nothing more,
        # so the backlog cannot run out before the last kill.
        mode = rng.choice(("before", "after"))
        node = FaultNode(namespace, f"r{len(everyone)}", "--workers", "1", "--batch-entities", "32",
                         "--commits", mode, "--on", "worker", "--skip", str(rng.randrange(6)))
        everyone.append(node)
        return node

    try:
        checker.send(Spawner.post("sp", Spread(workers=jobs, records=records)))
        assert count_rows(namespace, "pending") == jobs + records
        live = [start(), start()]
        for _ in range(8):
            slot = rng.randrange(2)
            live[slot].wait_for("paused ")
            live[slot].sigkill()
            live[slot] = start()
        assert count_rows(namespace, "pending") > 0, "the backlog was gone before the last kill"
        for node in live:
            node.kill_if_running()  # still paused, or about to pause
        final = [FaultNode(namespace, f"final{i}", "--workers", "2") for i in range(2)]
        everyone += final
        _finish(namespace, final)

        rows = query("SELECT kind, count(*), min(version), max(version) FROM {s}.entities GROUP BY kind", namespace)
        assert {kind: (n, low, high) for kind, n, low, high in rows} == {
            "Spawner": (1, 1, 1), "Worker": (jobs, 1, 1), "Tally": (1, jobs, jobs), "Log": (1, records, records),
        }
        assert checker.state(Tally.address("tally")) == jobs
        assert checker.state(Log.address("log")) == tuple(range(records))  # exactly once, in order
        assert count_rows(namespace, "dead_letters") == 0
    finally:
        _kill_all(everyone)
        checker.close()


# -- SIGKILL during an upgrade of old records -------------------------------------------------


def test_sigkill_while_v2_nodes_upgrade_v1_records(namespace: str) -> None:
    rng = random.Random(6_0004)
    wallets = 1500
    v1_record, v2_record = b'{"v":1,"s":{"balance":3}}', b'{"v":2,"s":{"cents":400}}'
    everyone: list[FaultNode] = []
    try:
        with Postgres(WalletApp1, DSN, namespace=namespace, workers=2) as v1:
            v1.send(Payroll1.post("p", PayAll(wallets, 3)))
            wait_until(lambda: _drained(namespace), "v1 to write its records")
        with Postgres(WalletApp1, DSN, namespace=namespace, workers=0) as v1:
            v1.send(Payroll1.post("p", PayAll(wallets, 1)))  # left pending for v2 nodes
        assert query("SELECT count(*) FROM {s}.entities WHERE kind = 'Wallet' AND state = %s",
                     namespace, [v1_record]) == [(wallets,)]

        def start() -> FaultNode:
            node = FaultNode(namespace, f"v2-{len(everyone)}", "--app", "wallet2", "--workers", "1",
                             "--batch-entities", "32", "--commits", rng.choice(("before", "after")),
                             "--on", "worker", "--skip", str(rng.randrange(4)))
            everyone.append(node)
            return node

        live = [start(), start()]
        for _ in range(6):
            slot = rng.randrange(2)
            live[slot].wait_for("paused ")
            live[slot].sigkill()
            live[slot] = start()
        assert count_rows(namespace, "pending") > 0, "the upgrade was over before the last kill"
        for node in live:
            node.kill_if_running()
        final = FaultNode(namespace, "v2-final", "--app", "wallet2", "--workers", "2")
        everyone.append(final)
        _finish(namespace, [final])
        rows = query("SELECT state, version, count(*) FROM {s}.entities WHERE kind = 'Wallet' GROUP BY 1, 2", namespace)
        assert [(bytes(state), version, n) for state, version, n in rows] == [(v2_record, 2, wallets)]

        # A v1 node facing v2 records: a clear UpgradeError, and nothing changes.
        before = snapshot(namespace)
        with Postgres(WalletApp1, DSN, namespace=namespace, workers=0) as old:
            with pytest.raises(UpgradeError, match=r"Wallet\('w0'\) has state_version 2.*newer code"):
                old.state(Wallet1.address("w0"))
            with pytest.raises(UpgradeError, match="newer code"):
                old.send_sync(Wallet1.post("w0", Pay(1)))
            with pytest.raises(UpgradeError, match="newer code"):
                old.send(Wallet1.post("w0", Pay(1)))
            assert old.dead_letters() == []
            assert snapshot(namespace) == before
            old.send(Payroll1.post("p", PayAll(3, 1)))  # pending Pays to w0..w2, for a v1 worker
        before = snapshot(namespace)
        with library_log() as log, Postgres(WalletApp1, DSN, namespace=namespace, workers=1):
            wait_until(lambda: sum("cannot process the pending messages of Wallet" in m for m in log) >= 3,
                       "the v1 worker to meet the v2 records")
        assert snapshot(namespace) == before  # left for v2 nodes: not applied, not dead-lettered
        with Postgres(WalletApp2, DSN, namespace=namespace, workers=1) as new:
            wait_until(lambda: _drained(namespace), "a v2 node to take over")
            assert [new.state(Wallet2.address(f"w{i}")) for i in range(4)] == [WalletV2(500)] * 3 + [WalletV2(400)]
    finally:
        _kill_all(everyone)


# -- the database going away mid-transaction ----------------------------------------------------


def test_terminated_connections_under_load_give_clear_errors_and_lose_nothing(namespace: str) -> None:
    """``pg_terminate_backend`` on every connection of two loaded nodes, 15 times."""
    rng = random.Random(6_0005)
    args = ("--workers", "2", "--threads", "6", "--tasks", "6", "--accounts", str(ACCOUNTS), "--sinks", str(SINKS))
    nodes = [FaultNode(namespace, f"n{i}", *args) for i in range(2)]
    try:
        for node in nodes:
            node.wait_for("ready")
            node.wait_count("ack ", 20)
        for _ in range(15):
            time.sleep(rng.uniform(0.05, 0.3))
            assert terminate_backends(namespace) > 0
        # The nodes carry on by themselves: callers reconnect, workers and listeners too.
        marks = [node.count("ack ") for node in nodes]
        for node, mark in zip(nodes, marks):
            node.wait_count("ack ", mark + 30)
        _finish(namespace, nodes)  # includes: the workers drained every forwarded message
    finally:
        _kill_all(nodes)
    with Postgres(NodesApp, DSN, namespace=namespace, workers=0) as checker:
        counts = check_deposits(checker, nodes, ACCOUNTS, SINKS)
    # Whatever broke, callers saw only DatabaseUnavailableError: check_deposits found no "error" lines.
    assert counts["acked"] >= 100
    print("after 15 terminations:", counts)
