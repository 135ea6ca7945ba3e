"""Crash test: node processes under load are killed with SIGKILL at random moments.

Three nodes each run a load thread (``send`` and ``send_sync`` of Deposits to 20 accounts,
processed inline by the node) and two workers (processing the Forwarded messages every
deposit sends to one of 8 sinks). A random node is SIGKILLed every few tenths of a second
and replaced, at least 12 times. Afterwards: every acknowledged call is applied, nothing is
applied twice, every applied deposit was forwarded exactly once, and FIFO held for every
(sender, receiver) pair.
"""

from __future__ import annotations

import random
import time
from collections import Counter as Multiset

import psycopg
from psycopg import sql

from pachyderm_typed.ecosystems import Postgres
from tests.helpers_postgres.app import Account, NodesApp, Sink
from tests.helpers_postgres.support import DSN, Node, namespace, requires_postgres

__all__ = ["namespace"]  # the fixture

pytestmark = requires_postgres

ACCOUNTS = 20
SINKS = 8
KILLS = 12
MIN_ACKS_BETWEEN_KILLS = 50


def _pending(namespace: str) -> int:
    with psycopg.connect(DSN) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.pending").format(sql.Identifier(namespace))).fetchone()
    assert row is not None
    return int(row[0])


def test_sigkill_under_load_loses_nothing_and_doubles_nothing(namespace: str) -> None:
    rng = random.Random(20240611)
    checker = Postgres(NodesApp, DSN, namespace=namespace, workers=0)  # creates the schema first
    args = ("--workers", "2", "--load", str(ACCOUNTS), str(SINKS))
    live = [Node(namespace, f"n{i}", *args) for i in range(3)]
    everyone = list(live)
    kills = 0
    try:
        for node in live:
            node.wait_for("ready")
        while kills < KILLS:
            # Wait for real progress (not just time) so a loaded machine still kills under load.
            target = sum(len(node.acks()) for node in everyone) + MIN_ACKS_BETWEEN_KILLS
            deadline = time.monotonic() + 30
            while sum(len(node.acks()) for node in everyone) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            slot = rng.randrange(len(live))
            live[slot].sigkill()
            kills += 1
            live[slot] = Node(namespace, f"n{slot}", *args)
            everyone.append(live[slot])
        for node in live:
            node.wait_for("ready")
            node.wait_for("ack")  # each replacement did work too
            node.say("stop")
        for node in live:
            node.wait_for("load stopped")
        deadline = time.monotonic() + 60
        while _pending(namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pending(namespace) == 0, "the surviving nodes did not finish the forwarded messages"
        for node in live:
            node.close()
    finally:
        for node in everyone:
            node.kill_if_running()

    acked = {op for node in everyone for op in node.acks()}
    assert len(acked) > 500, "too little load to mean anything"
    assert not [e for node in everyone for e in node.errors()]

    with checker:
        ledgers = {f"a{i}": checker.state(Account.address(f"a{i}")) for i in range(ACCOUNTS)}
        sinks = {f"s{i}": checker.state(Sink.address(f"s{i}")) for i in range(SINKS)}
        assert checker.dead_letters() == []

    applied = [op for ledger in ledgers.values() for op in ledger.ops]
    assert len(applied) == len(set(applied)), "a deposit was applied twice"
    assert all(ledger.duplicates == 0 and ledger.out_of_order == 0 for ledger in ledgers.values())
    assert acked <= set(applied), f"acknowledged but lost: {sorted(acked - set(applied))[:10]}"
    # Unacknowledged ones (the call was cut by the kill) may be applied, but only once.
    forwarded = Multiset(f.op for sink in sinks.values() for f in sink)
    assert forwarded == Multiset(applied), "forwarded messages did not arrive exactly once"
    # FIFO per (sender, receiver): deposits of one sender to one account in increasing n,
    # and each account's forwards reach each sink in the order the account sent them.
    for ledger in ledgers.values():
        by_sender: dict[str, list[int]] = {}
        for op in ledger.ops:
            sender, _, n = op.rsplit(":", 2)
            by_sender.setdefault(sender, []).append(int(n))
        assert all(ns == sorted(ns) for ns in by_sender.values())
    for sink in sinks.values():
        for account, ledger in ledgers.items():
            arrived = [f.op for f in sink if f.account == account]
            sent = [op for op in ledger.ops if op in set(arrived)]
            assert arrived == sent
