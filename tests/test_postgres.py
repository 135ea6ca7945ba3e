"""Postgres-specific behaviour, in one process (several nodes are several ``Postgres`` objects).

The shared behaviour suite (test_behaviour.py) also runs against Postgres; multi-process,
crash and server-restart tests are in the other test_postgres_*.py files.
"""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pachyderm_typed import DatabaseUnavailableError, Ecosystem, SendInsideActivationError, StorageError, UpgradeError
from pachyderm_typed.ecosystems import Postgres
from pachyderm_typed.ecosystems._pg_schema import lock_key
from pachyderm_typed.ecosystems._postgres import inspect_postgres
from tests.entities import READ_HOOK, App, Box, BoxApp, Boxed, Burst, Counter, Fanout, Feed, Feeder, Forward, Forwarder, Gate, Increment, Picky, Record, Recorder, Unlock, Work
from tests.helpers_pgfaults.app import Pay, Wallet1, Wallet2, WalletV1, WalletV2
from tests.helpers_postgres.support import DSN, ROOT, namespace, new_namespace, requires_postgres
from tests.threads import run_on_threads

__all__ = ["namespace"]  # the fixture

pytestmark = requires_postgres

WAIT = 20.0


def test_state_survives_closing_every_node(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace) as world:
        for _ in range(3):
            world.send_sync(Counter.post("kept", Increment()))
    with Postgres(App, DSN, namespace=namespace) as again:
        assert again.state(Counter.address("kept")) == 3
        assert again.send_sync(Counter.post("kept", Increment())) == 4


def test_namespaces_share_a_database_without_seeing_each_other(namespace: str) -> None:
    other = new_namespace()
    try:
        with Postgres(App, DSN, namespace=namespace) as one, Postgres(App, DSN, namespace=other) as two:
            one.send_sync(Counter.post("c", Increment(by=5)))
            one.send(Picky.post("p", Work(1)))
            assert two.state(Counter.address("c")) == 0
            assert two.dead_letters() == []
            assert two.send_sync(Counter.post("c", Increment())) == 1
            assert one.state(Counter.address("c")) == 5
    finally:
        Postgres.drop_namespace(DSN, other)
    assert lock_key(namespace, "Counter", b'"c"') != lock_key(other, "Counter", b'"c"')


def test_nodes_starting_at_once_create_the_schema_once(namespace: str) -> None:
    start = threading.Barrier(6)
    opened: list[Postgres[Any]] = []
    failures: list[BaseException] = []

    def open_node() -> None:
        start.wait()
        try:
            opened.append(Postgres(App, DSN, namespace=namespace))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    run_on_threads(open_node, 6)
    try:
        assert failures == []
        assert len(opened) == 6
        values = sorted(node.send_sync(Counter.post("c", Increment())) for node in opened)
        assert values == [1, 2, 3, 4, 5, 6]
    finally:
        for node in opened:
            node.close()
    with psycopg.connect(DSN) as conn:
        rows = conn.execute(sql.SQL("SELECT key, value FROM {}.meta").format(sql.Identifier(namespace))).fetchall()
    assert rows == [("schema_version", "1")]


def test_a_schema_from_newer_code_is_refused_and_left_alone(namespace: str) -> None:
    Postgres(App, DSN, namespace=namespace).close()
    with psycopg.connect(DSN) as conn:
        conn.execute(sql.SQL("UPDATE {}.meta SET value = '99'").format(sql.Identifier(namespace)))
    with pytest.raises(StorageError, match="schema version 99.*newer code"):
        Postgres(App, DSN, namespace=namespace)


def test_bad_arguments_get_clear_errors() -> None:
    for bad in ("Bad-Name", "pg_catalog", "public", "", "x" * 49):
        with pytest.raises(ValueError, match="namespace"):
            Postgres(App, DSN, namespace=bad)
    with pytest.raises(ValueError, match="invalid PostgreSQL DSN"):
        Postgres(App, "host=127.0.0.1 port", namespace="fine")
    with pytest.raises(TypeError, match="dsn must be a str"):
        Postgres(App, None, namespace="fine")  # type: ignore[arg-type]


def test_an_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(DatabaseUnavailableError, match="cannot connect to PostgreSQL at 127.0.0.1:1/test") as caught:
        Postgres(App, "postgresql://postgres@127.0.0.1:1/test", namespace="nowhere", connect_timeout=1)
    assert caught.value.applied is False


class WalletApp1(Ecosystem[Wallet1]): ...


class WalletApp2(Ecosystem[Wallet2]): ...


def test_stored_states_are_upgraded_and_newer_ones_refused(namespace: str) -> None:
    with Postgres(WalletApp1, DSN, namespace=namespace) as old:
        assert old.send_sync(Wallet1.post("w", Pay(3))) == WalletV1(3)
    with Postgres(WalletApp2, DSN, namespace=namespace) as new:
        assert new.state(Wallet2.address("w")) == WalletV2(300)
        assert new.send_sync(Wallet2.post("w", Pay(1))) == WalletV2(400)  # stored as version 2 now
    with Postgres(WalletApp1, DSN, namespace=namespace) as old:
        with pytest.raises(UpgradeError, match="state_version 2.*newer code"):
            old.state(Wallet1.address("w"))
        with pytest.raises(UpgradeError, match="newer code"):
            old.send_sync(Wallet1.post("w", Pay(1)))
        with pytest.raises(UpgradeError):
            old.send(Wallet1.post("w", Pay(1)))
        assert old.dead_letters() == []
    with Postgres(WalletApp2, DSN, namespace=namespace) as new:
        assert new.state(Wallet2.address("w")) == WalletV2(400)  # untouched by the old node


def test_dead_letters_are_shared_by_every_node(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace) as a, Postgres(App, DSN, namespace=namespace) as b:
        a.send(Picky.post("p", Work(7)))
        (letter,) = b.dead_letters()
        assert letter.envelope == Picky.post("p", Work(7))
        assert "gate closed" in letter.reason
        b.send_sync(Picky.post("p", Unlock()))
        b.retry(letter)
        assert a.dead_letters() == []
        assert a.state(Picky.address("p")) == Gate(open=True, total=7)
        with pytest.raises(LookupError):
            a.retry(letter)  # taken by b already: nothing is applied twice
        assert a.state(Picky.address("p")) == Gate(open=True, total=7)


def test_a_follower_sees_every_state_another_node_commits(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace, workers=0) as watcher, \
            Postgres(App, DSN, namespace=namespace) as busy:
        with watcher.follow(Counter.address("c")) as updates:
            assert updates.state == 0
            for _ in range(5):
                busy.send(Counter.post("c", Increment()))
            for _ in range(5):
                busy.send(Forwarder.post("f", Forward("c", 10)))  # applied to c by busy's worker
            seen = [updates.next(timeout=WAIT) for _ in range(10)]
        assert seen[:5] == [1, 2, 3, 4, 5]
        assert seen[5:] == [15, 25, 35, 45, 55]


def test_outbox_order_holds_when_several_nodes_process_it(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace, workers=0) as sender, \
            Postgres(App, DSN, namespace=namespace, workers=2) as one, \
            Postgres(App, DSN, namespace=namespace, workers=2) as two:
        logs = [sender.follow(Recorder.address(f"log{n}")) for n in range(4)]
        for n in range(4):
            sender.send(Fanout.post(f"f{n}", Burst(f"log{n}", 50)))
        for log in logs:
            states = [log.next(timeout=WAIT) for _ in range(50)]
            assert [len(state) for state in states] == list(range(1, 51))  # each state once, in order
            assert [r.n for r in states[-1]] == list(range(50))  # FIFO from the fanout
            log.close()
        assert one.processed + two.processed == 200


def test_pending_messages_wait_in_the_database_for_any_node(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace, workers=0) as lonely:
        lonely.send(Fanout.post("f", Burst("later", 30)))  # 30 outbox messages, no worker anywhere
        assert lonely.state(Recorder.address("later")) == ()
    with Postgres(App, DSN, namespace=namespace, workers=0) as watcher:
        with watcher.follow(Recorder.address("later")) as log:
            with Postgres(App, DSN, namespace=namespace):  # a node with a worker picks them up
                states = [log.next(timeout=WAIT) for _ in range(30)]
    assert states[-1] == tuple(Record("fanout", n) for n in range(30))


def test_send_processes_older_pending_messages_first(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace, workers=0) as node:
        node.send(Fanout.post("f", Burst("log", 5)))  # pending, nobody processes them
        node.send(Recorder.post("log", Record("caller", 99)))  # applied after the 5 older ones
        assert [r.n for r in node.state(Recorder.address("log"))] == [0, 1, 2, 3, 4, 99]


def test_inspect_prints_kinds_and_one_entity(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace, workers=0) as world:
        world.send_sync(Counter.post("c", Increment(by=4)))
        world.send_sync(Counter.post("d", Increment()))
        world.send(Picky.post("p", Work(1)))  # a dead letter
        world.send(Fanout.post("f", Burst("r", 3)))  # 3 pending (no workers)
    out = io.StringIO()
    assert inspect_postgres(DSN, ["--namespace", namespace], out) == 0
    text = out.getvalue()
    assert f"namespace {namespace!r} (schema version 1)" in text
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:] if line.strip()}
    assert lines["Counter"] == ["2", "0", "0"]
    assert lines["Recorder"] == ["0", "3", "0"]
    assert lines["Picky"] == ["0", "0", "1"]
    assert lines["total"] == ["3", "3", "1"]

    out = io.StringIO()
    assert inspect_postgres(DSN, ["--namespace", namespace, "Counter", "c"], out) == 0
    assert '"state": 4' in out.getvalue() and '"version": 1' in out.getvalue()

    out = io.StringIO()
    assert inspect_postgres(DSN, [f"--namespace={namespace}", "Counter", "nobody"], out) == 1
    assert "Counter nobody has no stored state" in out.getvalue()

    out = io.StringIO()
    assert inspect_postgres(DSN, ["--namespace", "t_missing_ns"], out) == 1
    assert "no pachyderm-typed namespace 't_missing_ns'" in out.getvalue()

    out = io.StringIO()
    assert inspect_postgres(DSN, ["--namespace", "Bad-Name"], out) == 2
    assert inspect_postgres(DSN, ["--namespace", namespace, "Counter"], out) == 2

    out = io.StringIO()
    assert inspect_postgres("postgresql://postgres@127.0.0.1:1/test", [], out) == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/test" in out.getvalue()


def test_the_library_imports_without_psycopg() -> None:
    program = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("psycopg", "psycopg_binary", "psycopg_c"):
            raise ImportError("psycopg is blocked for this test")
sys.meta_path.insert(0, Block())
import pachyderm_typed
from pachyderm_typed.ecosystems import InMemory
try:
    from pachyderm_typed.ecosystems import Postgres
except ImportError as exc:
    print("hint:", "pachyderm-typed[postgres]" in str(exc))
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hint: True"


def test_followers_leave_no_rows_behind(namespace: str) -> None:
    def count(table: str) -> int:
        with psycopg.connect(DSN) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(namespace), sql.Identifier(table))
            ).fetchone()
        assert row is not None
        return int(row[0])

    with Postgres(App, DSN, namespace=namespace, workers=0) as watcher, Postgres(App, DSN, namespace=namespace) as node:
        first = watcher.follow(Counter.address("c"))
        second = watcher.follow(Counter.address("c"))
        node.send_sync(Counter.post("c", Increment()))
        node.send_sync(Counter.post("c", Increment()))
        assert [first.next(timeout=WAIT), first.next(timeout=WAIT)] == [1, 2]
        assert count("follows") == 2 and count("history") == 2  # second has not read them yet
        first.close()
        assert [second.next(timeout=WAIT), second.next(timeout=WAIT)] == [1, 2]
        assert count("follows") == 1
        node.send_sync(Counter.post("unfollowed", Increment()))
        assert count("history") == 2  # no history for entities nobody follows
        kept = watcher.follow(Counter.address("kept"))
    assert list(kept) == [] and list(second) == []  # closing the node ends its subscriptions
    assert count("follows") == 0 and count("history") == 0


def test_the_connection_pool_lends_each_connection_to_one_caller_and_closes_them_when_closed() -> None:
    """The pool has no lock (a signal handler's call may land inside it, see ``_Pool``)."""
    from pachyderm_typed import ClosedError
    from pachyderm_typed.ecosystems._postgres import _Pool

    pool = _Pool(lambda: psycopg.connect(DSN), keep=2)
    first, fresh = pool.take()
    assert fresh
    pool.give(first)
    again, fresh = pool.take()
    assert again is first and not fresh
    second, third = pool.take()[0], pool.take()[0]
    second.execute("SELECT 1")  # left inside a transaction: not reusable as it is
    for conn in (second, again, third):
        pool.give(conn)
    assert second.closed and not again.closed and not third.closed  # `keep` 2 kept, idle only

    lent: set[int] = set()
    errors: list[str] = []
    guard = threading.Lock()

    def borrow() -> None:
        for _ in range(100):
            conn, _ = pool.take()
            with guard:
                if id(conn) in lent:
                    errors.append("a connection was lent to two callers at once")
                lent.add(id(conn))
            conn.execute("SELECT 1").fetchone()  # in use for a round trip
            conn.rollback()
            with guard:
                lent.discard(id(conn))
            pool.give(conn)

    run_on_threads(borrow, 8)
    assert errors == []

    kept = list(pool._idle)
    assert kept and len(kept) <= 2
    pool.close()
    assert all(conn.closed for conn in kept)
    late = psycopg.connect(DSN)
    pool.give(late)  # given back after the pool closed: closed, not kept
    assert late.closed
    with pytest.raises(ClosedError):
        pool.take()


def test_a_handler_error_raised_inside_a_call_as_it_decodes_a_state_is_raised_as_is(namespace: str) -> None:
    """The main thread's send_sync decodes the stored state itself; a signal landing there
    whose handler lets its refused call's error out fails that call with that error, not
    with one calling the state corrupt, and applies nothing. (pytest runs tests in the
    main thread.)"""
    with Postgres(BoxApp, DSN, namespace=namespace) as world:
        assert world.send_sync(Box.post("b", Increment(by=5))) == Boxed(5)

        def handler(signum: int, frame: object) -> None:
            world.send_sync(Counter.post("c", Increment()))  # refused: the call runs entity code

        previous = signal.signal(signal.SIGUSR1, handler)
        READ_HOOK.append(lambda: signal.raise_signal(signal.SIGUSR1))
        try:
            with pytest.raises(SendInsideActivationError, match="signal handler"):
                world.send_sync(Box.post("b", Increment()))
        finally:
            READ_HOOK.clear()
            signal.signal(signal.SIGUSR1, previous)
        assert world.send_sync(Box.post("b", Increment())) == Boxed(6)
        assert world.state(Counter.address("c")) == 0
        assert world.dead_letters() == []


def test_a_validator_that_calls_the_ecosystem_blocks_its_entity_on_a_worker_not_the_batch(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker decoding a stored state whose validator calls the ecosystem (refused: it
    runs inside the engine) leaves that entity's messages pending, says why, and goes on
    with the other entities' messages; once the validator behaves, they are applied."""
    with Postgres(BoxApp, DSN, namespace=namespace) as world:
        assert world.send_sync(Box.post("b", Increment(by=5))) == Boxed(5)
        READ_HOOK.append(lambda: world.send(Counter.post("c", Increment())))
        try:
            with caplog.at_level(logging.WARNING, logger="pachyderm_typed.postgres"):
                world.send(Feeder.post("f", Feed("b")))  # the worker applies what the two forward
                world.send(Forwarder.post("f", Forward("d")))
                deadline = time.monotonic() + WAIT
                while world.state(Counter.address("d")) == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                while "called the ecosystem, which was refused" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.01)
            assert world.state(Counter.address("d")) == 1
            assert "decoding the stored state of Box('b') called the ecosystem, which was refused: send() was called" in caplog.text
            assert "corrupt" not in caplog.text
        finally:
            READ_HOOK.clear()
        assert world.state(Box.address("b")) == Boxed(5)  # its message is pending, not dropped
        assert world.send_sync(Box.post("b", Increment())) == Boxed(7)  # the pending one first, once
        assert world.state(Counter.address("c")) == 0
        assert world.dead_letters() == []
