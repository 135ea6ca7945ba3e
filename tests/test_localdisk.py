"""LocalDisk in one process: the file format, bad input, versioned state, memory, dead letters, group commit.

(The behaviour every ecosystem shares runs on LocalDisk too: see test_behaviour.py.)
"""

from __future__ import annotations

import asyncio
import json
import linecache
import os
import random
import signal
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import cattrs.gen
import pytest

from pachyderm_typed import (
    ActivationError,
    AlreadyOpenError,
    ClosedError,
    CodecError,
    DeclarationError,
    Ecosystem,
    Entity,
    Outbox,
    ReentrantCallError,
    SendInsideActivationError,
    StorageError,
    Subscription,
    UpgradeError,
)
from pachyderm_typed.ecosystems import LocalDisk
from pachyderm_typed._dbmfile import put_statement
from pachyderm_typed._world import Batch, Regroup
from tests.entities import (
    READ_HOOK, App, Box, BoxApp, Boxed, Counter, Feed, Feeder, Gate, Increment, Picky, Ping, PingPong, Unlock, Work,
)
from tests.guards import hangs_fail
from tests.helpers_localdisk.workload import Entry, Fan, Log, Spread
from tests.helpers_localdisk.workload import Work as LogWork

WAIT = 20.0


def raw_rows(path: Path) -> dict[bytes, bytes]:
    """Every record in a (closed) file, read with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        return {bytes(k): bytes(v) for k, v in conn.execute("SELECT key, value FROM Dict")}
    finally:
        conn.close()


def raw_put(path: Path, key: bytes, value: bytes) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("REPLACE INTO Dict (key, value) VALUES (?, ?)", (key, value))
    finally:
        conn.close()


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- the file --------------------------------------------------------------------------------


def test_the_file_is_a_private_dbm_sqlite3_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Counter.post("c", Increment()))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "app.db.lock").stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    try:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table'").fetchone()
        assert " ".join(sql.split()) == "CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    rows = raw_rows(path)
    assert json.loads(rows[b"meta:format"]) == {"format": "pachyderm-typed/localdisk", "version": 1}
    assert json.loads(rows[b'state:Counter\x00"c"']) == {"v": 1, "s": 1}


@pytest.mark.parametrize("sqlite_version", [sqlite3.sqlite_version_info, (3, 23, 0)], ids=["upsert", "replace"])
def test_the_put_statement_stores_new_and_known_keys_in_the_dbm_table(
    tmp_path: Path, sqlite_version: tuple[int, ...]
) -> None:
    # The upsert this SQLite runs, and REPLACE for SQLite before 3.24: the same records either way.
    conn = sqlite3.connect(tmp_path / "put.db", isolation_level=None)
    try:
        conn.execute("CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
        conn.execute(put_statement(2, sqlite_version), [b"a", b"1", b"b", b"1"])
        before = dict(conn.execute("SELECT key, rowid FROM Dict"))
        # A known key, a new one, and a key written twice in one statement (the last wins).
        conn.execute(put_statement(3, sqlite_version), [b"a", b"2", b"c", b"1", b"c", b"3"])
        assert dict(conn.execute("SELECT key, value FROM Dict")) == {b"a": b"2", b"b": b"1", b"c": b"3"}
        after = dict(conn.execute("SELECT key, rowid FROM Dict"))
        if sqlite_version >= (3, 24, 0):
            assert after[b"a"] == before[b"a"]  # rewritten in place
    finally:
        conn.close()


def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        assert world.send_sync(Counter.post("c", Increment(by=4))) == 4
        world.send_sync(PingPong.post("bob", Ping(reply_to=PingPong.address("alice"))))
    with LocalDisk(App, path) as world:
        assert world.state(Counter.address("c")) == 4
        wait_for(lambda: world.state(PingPong.address("alice")) == "ponged", "the pong")
        assert world.state(PingPong.address("bob")) == "pinged"
        with world.follow(Counter.address("c")) as updates:
            assert updates.state == 4
            world.send(Counter.post("c", Increment()))
            assert updates.next(timeout=WAIT) == 5


def test_a_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    first = LocalDisk(App, path)
    first.send_sync(Counter.post("c", Increment()))
    with pytest.raises(AlreadyOpenError, match=rf"{path} is already open in this process"):
        LocalDisk(App, str(path))
    assert first.send_sync(Counter.post("c", Increment())) == 2  # the first one is unharmed
    first.close()
    with LocalDisk(App, path) as again:
        assert again.state(Counter.address("c")) == 2


def test_an_unstorable_declaration_fails_before_the_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "never.db"
    with pytest.raises(DeclarationError, match="Opaque cannot be stored"):
        LocalDisk(Ecosystem[Opaque], path)
    assert not path.exists()
    with pytest.raises(ValueError, match="cache_size"):
        LocalDisk(App, path, cache_size=0)


class Handle:  # not attrs: the codec cannot store it
    pass


class Opaque(Entity[str, Increment, Handle | None]):
    def activate(self, message: Increment, state: Handle | None) -> tuple[Outbox, Handle | None]:
        return [], Handle()


# -- bad files: a clear error, nothing overwritten ------------------------------------------


def _assert_refused(path: Path, match: str, app: Any = App) -> None:
    before = path.read_bytes()
    with pytest.raises(StorageError, match=match):
        LocalDisk(app, path)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my precious notes\n" * 100)
    _assert_refused(path, r"notes.txt is not a LocalDisk file \(not an SQLite database\)")


def test_a_path_that_cannot_be_the_file_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    """A folder, a device, or a path in a folder that does not exist: each refused with a
    message naming what is wrong, and nothing is created (no lock file beside it either)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(StorageError, match=r"folder is not a regular file: LocalDisk needs a file path"):
        LocalDisk(App, folder)
    with pytest.raises(StorageError, match=r"/dev/null is not a regular file"):
        LocalDisk(App, "/dev/null")
    missing = tmp_path / "no-such-folder" / "app.db"
    with pytest.raises(StorageError, match=r"the directory .*no-such-folder does not exist; create it first"):
        LocalDisk(App, missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    assert list(folder.iterdir()) == []


def test_a_database_with_a_damaged_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Counter.post("c", Increment()))
    data = bytearray(path.read_bytes())
    data[0:16] = b"garbage garbage!"
    path.write_bytes(bytes(data))
    _assert_refused(path, "not an SQLite database")


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        for n in range(300):
            world.send(Counter.post(f"counter-{n}" * 5, Increment()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_refused(path, "is truncated")


def test_a_damaged_page_is_reported_when_read(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        for n in range(300):
            world.send(Counter.post(f"counter-{n}" * 5, Increment()))
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page, len(data), page):  # scribble over every page but the first
        data[offset + 8: offset + 64] = b"\xff" * 56
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(StorageError, match="damaged|malformed|corrupt"):
        with LocalDisk(App, path) as world:
            world.state(Counter.address("counter-7" * 5))
    assert path.read_bytes() == before


def test_other_sqlite_databases_and_foreign_dbm_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    _assert_refused(other, "not a LocalDisk \\(dbm\\) file: it has tables \\['users'\\]")

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
    conn.execute("INSERT INTO Dict VALUES (CAST('hello' AS BLOB), CAST('world' AS BLOB))")
    conn.commit()
    conn.close()
    _assert_refused(foreign, "a dbm file that pachyderm-typed did not write")


def test_a_file_from_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    LocalDisk(App, path).close()
    raw_put(path, b"meta:format", b'{"format": "pachyderm-typed/localdisk", "version": 99}')
    _assert_refused(path, "format version 99, newer than this pachyderm-typed understands")


def test_a_pending_message_of_an_unknown_kind_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "ghost.db"
    LocalDisk(App, path).close()
    raw_put(path, b"pending:00000000000000000001", b'{"kind":"Ghost","id":"g","m":{}}')
    _assert_refused(path, r"pending message pending:00000000000000000001 .*'Ghost', which App does not declare")


def test_a_corrupt_state_record_is_an_error_for_that_entity_only(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Counter.post("ok", Increment()))
    key = b'state:Counter\x00"bad"'
    raw_put(path, key, b"{not json")
    with LocalDisk(App, path) as world:
        with pytest.raises(CodecError, match=r"stored state of Counter\('bad'\) in .* is corrupt"):
            world.state(Counter.address("bad"))
        with pytest.raises(ActivationError, match="its stored state cannot be used") as caught:
            world.send_sync(Counter.post("bad", Increment()))
        assert isinstance(caught.value.__cause__, CodecError)
        assert world.send_sync(Counter.post("ok", Increment())) == 2
    assert raw_rows(path)[key] == b"{not json"


# -- versioned state -------------------------------------------------------------------------


@attrs.frozen
class Bump:
    pass


class CounterV1(Entity[str, Bump, int]):
    kind = "Versioned"

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Bump, state: int) -> tuple[Outbox, int]:
        return [], state + 1


@attrs.frozen
class CountV2:
    count: int


class CounterV2(Entity[str, Bump, CountV2]):
    kind = "Versioned"
    state_version = 2
    upgrades = {1: lambda n: {"count": n}}

    def init(self, entity_id: str) -> CountV2:
        return CountV2(0)

    def activate(self, message: Bump, state: CountV2) -> tuple[Outbox, CountV2]:
        return [], CountV2(state.count + 1)


@attrs.frozen
class CountV3:
    total: int
    note: str


class CounterV3(Entity[str, Bump, CountV3]):
    kind = "Versioned"
    state_version = 3
    upgrades = {
        1: lambda n: {"count": n},
        2: lambda data: {"total": data["count"], "note": "upgraded from v2"},
    }

    def init(self, entity_id: str) -> CountV3:
        return CountV3(0, "new")

    def activate(self, message: Bump, state: CountV3) -> tuple[Outbox, CountV3]:
        return [], attrs.evolve(state, total=state.total + 1)


def _version_of(path: Path, entity_id: str) -> Any:
    return json.loads(raw_rows(path)[b'state:Versioned\x00"' + entity_id.encode() + b'"'])


def test_an_upgrade_chain_v1_v2_v3_applies_to_records_written_by_v1_code(tmp_path: Path) -> None:
    path = tmp_path / "versions.db"
    with LocalDisk(Ecosystem[CounterV1], path) as v1:
        for _ in range(3):
            v1.send_sync(CounterV1.post("old", Bump()))
        v1.send_sync(CounterV1.post("older", Bump()))
    with LocalDisk(Ecosystem[CounterV2], path) as v2:
        assert v2.send_sync(CounterV2.post("mid", Bump())) == CountV2(1)  # a v2 record
    assert _version_of(path, "old") == {"v": 1, "s": 3}
    with LocalDisk(Ecosystem[CounterV3], path) as v3:
        assert v3.state(CounterV3.address("old")) == CountV3(3, "upgraded from v2")
        assert v3.state(CounterV3.address("mid")) == CountV3(1, "upgraded from v2")
        assert v3.send_sync(CounterV3.post("old", Bump())) == CountV3(4, "upgraded from v2")
    assert _version_of(path, "old") == {"v": 3, "s": {"total": 4, "note": "upgraded from v2"}}
    assert _version_of(path, "older") == {"v": 1, "s": 1}  # untouched until it is committed again
    assert _version_of(path, "mid") == {"v": 2, "s": {"count": 1}}


def test_a_record_from_newer_code_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "versions.db"
    with LocalDisk(Ecosystem[CounterV3], path) as v3:
        v3.send_sync(CounterV3.post("new", Bump()))
    before = raw_rows(path)
    with LocalDisk(Ecosystem[CounterV1], path) as v1:
        with pytest.raises(UpgradeError, match=r"state_version 3, but this code knows CounterV1 only up to version 1"):
            v1.state(CounterV1.address("new"))
        with pytest.raises(ActivationError) as caught:
            v1.send_sync(CounterV1.post("new", Bump()))
        assert isinstance(caught.value.__cause__, UpgradeError)
        v1.send(CounterV1.post("new", Bump()))  # nobody waits: it becomes a dead letter, retryable later
        (letter,) = v1.dead_letters()
        assert "newer code" in letter.reason
    assert raw_rows(path)[b'state:Versioned\x00"new"'] == before[b'state:Versioned\x00"new"']
    with LocalDisk(Ecosystem[CounterV3], path) as v3:  # the newer code takes the message back
        v3.retry(v3.dead_letters()[0])
        assert v3.state(CounterV3.address("new")) == CountV3(2, "new")


class RenamedCounter(Entity[str, Bump, int]):
    kind = "Versioned"  # the stored name stays when the class is renamed

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Bump, state: int) -> tuple[Outbox, int]:
        return [], state + 10


def test_an_explicit_kind_keeps_data_across_a_class_rename(tmp_path: Path) -> None:
    path = tmp_path / "rename.db"
    with LocalDisk(Ecosystem[CounterV1], path) as before:
        before.send_sync(CounterV1.post("x", Bump()))
    with LocalDisk(Ecosystem[RenamedCounter], path) as after:
        assert after.send_sync(RenamedCounter.post("x", Bump())) == 11


# -- what activations return must be storable -----------------------------------------------


@attrs.frozen
class Holder:
    value: object


@attrs.frozen
class Keep:
    value: object


class Keeper(Entity[str, Keep, Holder | None]):
    def activate(self, message: Keep, state: Holder | None) -> tuple[Outbox, Holder | None]:
        return [], Holder(Handle() if message.value == "handle" else message.value)


def test_an_unstorable_message_is_rejected_at_send_and_an_unstorable_state_fails_its_activation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keep.db"
    with LocalDisk(Ecosystem[Keeper], path) as world:
        assert world.send_sync(Keeper.post("k", Keep(1))) == Holder(1)
        with pytest.raises(CodecError, match="cannot store the message"):
            world.send(Keeper.post("k", Keep(Handle())))
        assert world.dead_letters() == []
        # A new state (and each message an activation sends) is checked as it is returned.
        with pytest.raises(ActivationError, match="what it returned cannot be stored"):
            world.send_sync(Keeper.post("k", Keep("handle")))
        assert world.state(Keeper.address("k")) == Holder(1)
    with LocalDisk(Ecosystem[Keeper], path) as world:
        assert world.state(Keeper.address("k")) == Holder(1)


class Glancer(Entity[str, Keep, int]):
    """Looks at what a message holds, keeps only a count: its messages never need storing."""

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Keep, state: int) -> tuple[Outbox, int]:
        if message.value == "fail":
            raise ValueError("told to fail")
        return [], state + 1


def test_send_sync_takes_a_message_it_will_never_store_and_send_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "glance.db"
    with LocalDisk(Ecosystem[Glancer], path) as world:
        # Applied in the commit that accepts it, or failed back to the caller: never a record.
        assert world.send_sync(Glancer.post("g", Keep(Handle()))) == 1
        # send might have to keep it as a dead letter, so it is refused before it is queued.
        with pytest.raises(CodecError, match="cannot store the message"):
            world.send(Glancer.post("g", Keep(Handle())))

        async def from_a_task() -> None:
            with pytest.raises(CodecError, match="cannot store the message"):
                await world.asend(Glancer.post("g", Keep(Handle())))
            assert await world.asend_sync(Glancer.post("g", Keep(Handle()))) == 2

        asyncio.run(from_a_task())
        with pytest.raises(ActivationError, match="told to fail"):
            world.send_sync(Glancer.post("g", Keep("fail")))
        assert world.dead_letters() == []
    with LocalDisk(Ecosystem[Glancer], path) as world:
        assert world.state(Glancer.address("g")) == 2
        assert world.dead_letters() == []


# -- bounded memory --------------------------------------------------------------------------


def test_idle_entities_are_evicted_and_reload_transparently(tmp_path: Path) -> None:
    with LocalDisk(App, tmp_path / "many.db", cache_size=10) as world:
        for round_no in range(1, 4):
            for n in range(200):
                assert world.send_sync(Counter.post(f"c{n}", Increment())) == round_no
            assert world._states is world._cache
            assert len(world._states) <= 10
        assert [world.state(Counter.address(f"c{n}")) for n in range(200)] == [3] * 200


def test_a_batch_larger_than_the_cache_never_loses_an_update(tmp_path: Path) -> None:
    with LocalDisk(LogWork, tmp_path / "fan.db", cache_size=2) as world:
        world.send_sync(Fan.post("f", Spread("l", 400)))
        wait_for(lambda: len(world.state(Log.address("l"))) == 400, "the fan-out")
        assert world.state(Log.address("l")) == tuple(range(400))


def test_eviction_under_concurrent_senders_never_loses_an_update(tmp_path: Path) -> None:
    # A cache far smaller than the working set: states are evicted and reloaded while other
    # callers process and commit. A stale reload would show as a missing increment.
    path = tmp_path / "churn.db"
    entities = [f"c{n}" for n in range(40)]
    plans = [[random.Random(seed).choice(entities) for _ in range(300)] for seed in range(12)]
    with LocalDisk(App, path, cache_size=8) as world:

        def thread_sender(plan: list[str]) -> None:
            for name in plan:
                world.send_sync(Counter.post(name, Increment()))

        async def task_senders(plans: list[list[str]]) -> None:
            async def one(plan: list[str]) -> None:
                for name in plan:
                    await world.asend_sync(Counter.post(name, Increment()))

            await asyncio.gather(*(one(plan) for plan in plans))

        threads = [threading.Thread(target=thread_sender, args=(plan,)) for plan in plans[:6]]
        threads.append(threading.Thread(target=asyncio.run, args=(task_senders(plans[6:]),)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        expected = {name: sum(plan.count(name) for plan in plans) for name in entities}
        assert {name: world.state(Counter.address(name)) for name in entities} == expected
        assert len(world._states) <= 8  # everything is committed: nothing dirty holds a place
    with LocalDisk(App, path) as world:
        assert {name: world.state(Counter.address(name)) for name in entities} == expected


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letters_are_persisted_and_retryable_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dead.db"
    with LocalDisk(App, path) as world:
        world.send(Picky.post("p", Work(5)))
        world.send(Picky.post("p", Work(6)))
        assert [letter.envelope.message for letter in world.dead_letters()] == [Work(5), Work(6)]
    with LocalDisk(App, path) as world:
        first, second = world.dead_letters()
        assert "gate closed, cannot take 5" in first.reason
        world.send_sync(Picky.post("p", Unlock()))
        world.retry(first)
        world.discard(second)
        assert world.dead_letters() == []
        with pytest.raises(LookupError):
            world.retry(first)
    with LocalDisk(App, path) as world:
        assert world.dead_letters() == []
        assert world.state(Picky.address("p")).total == 5


# -- group commit ----------------------------------------------------------------------------


class CountingDisk(LocalDisk[Any]):
    """Counts commits: how many transactions the waiting callers shared."""

    commits = 0

    def _commit(self, batch: Batch) -> None:
        super()._commit(batch)
        self.commits += 1


def test_concurrent_threads_share_one_commit(tmp_path: Path) -> None:
    with CountingDisk(App, tmp_path / "group.db") as world:
        results: list[int] = []
        with world._run_lock:  # hold the engine while all callers queue up
            threads = [
                threading.Thread(target=lambda n=n: results.append(world.send_sync(Counter.post(f"t{n}", Increment()))))
                for n in range(8)
            ]
            for thread in threads:
                thread.start()
            wait_for(lambda: len(world._queue) == 8, "eight queued callers")
        for thread in threads:
            thread.join()
        assert results == [1] * 8
        assert world.commits == 1


def test_concurrent_asyncio_tasks_share_one_commit(tmp_path: Path) -> None:
    with CountingDisk(App, tmp_path / "group.db") as world:

        async def main() -> list[int]:
            await world.asend_sync(Counter.post("warm-up", Increment()))  # starts the worker
            world.commits = 0
            world._run_lock.acquire()  # hold the engine while all tasks queue up
            tasks = [asyncio.ensure_future(world.asend_sync(Counter.post(f"a{n}", Increment()))) for n in range(16)]
            while len(world._queue) < 16:
                await asyncio.sleep(0.001)
            world._run_lock.release()
            return await asyncio.gather(*tasks)

        assert asyncio.run(main()) == [1] * 16
        assert world.commits == 1


class SizedDisk(LocalDisk[Any]):
    """Records how many messages each commit carried."""

    sizes: list[int]

    def _commit(self, batch: Batch) -> None:
        super()._commit(batch)
        self.sizes.append(len(batch))


def test_a_main_thread_call_is_committed_without_the_cascade_it_causes(tmp_path: Path) -> None:
    """The main thread hands its call to the worker (see MainThreadCall), which processes it
    as the caller would have: up to its message, so its commit does not wait for the
    messages its activation sent. (pytest runs tests in the main thread.)"""
    world = SizedDisk(LogWork, tmp_path / "main.db")
    world.sizes = []
    with world:
        assert world.send_sync(Fan.post("f", Spread("log", 50))) == 1
        deadline = time.monotonic() + 20
        while len(world.state(Log.address("log"))) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert world.state(Log.address("log")) == tuple(range(50))
    assert world.sizes[0] == 1, world.sizes  # the Fan's message alone
    assert sum(world.sizes) == 51




class Interrupted(Exception):
    """What a signal handler raises in these tests (KeyboardInterrupt would stop pytest)."""


class Stopped(BaseException):
    """Ctrl-C's KeyboardInterrupt as far as the library can tell (pytest would stop for the real one)."""


def test_an_exception_a_handler_raises_as_a_shielded_call_starts_its_thread_is_raised_as_is(
    tmp_path: Path,
) -> None:
    """The main thread's dead_letters() runs on a thread of its own, and Thread.start() waits
    for that thread on a Condition. An exception raised just as that wait takes the
    Condition's lock back (as Ctrl-C's KeyboardInterrupt can land there) left the lock
    released, and the call raised RuntimeError("release unlocked lock") instead (seen once in
    the Ctrl-C row of the fault matrix). The trace function raises where such a handler
    would. (pytest runs tests in the main thread.)"""
    landed = [False]

    def tracer(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name == "_acquire_restore" and not landed[0]:
            landed[0] = True
            raise Interrupted

    with LocalDisk(App, tmp_path / "start.db") as world:
        sys.settrace(tracer)
        try:
            with pytest.raises(Interrupted):
                world.dead_letters()
        finally:
            sys.settrace(None)
        assert landed[0], "this Python's Thread.start() no longer waits there"
        assert world.dead_letters() == []
        assert world.send_sync(Counter.post("c", Increment())) == 1


def test_an_exception_raised_as_the_first_stored_state_is_decoded_leaves_decoding_working(tmp_path: Path) -> None:
    """cattrs makes a class's structuring code the first time it meets the class, and marks
    the class as being made just before a ``try``. Ctrl-C landing between the two (a signal's
    handler runs as the call that marks it returns) left the mark in the main thread for
    good: every later read of that entity there failed, called corrupt ("does not fit Gate:
    RecursionError"). The codec now has it made when the ecosystem is built. The trace
    function raises exactly there, if a read still makes anything; nothing may be made."""
    path = tmp_path / "first-decode.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Picky.post("g", Unlock()))
    made: list[int] = []

    def tracer(frame: Any, event: str, arg: object) -> Any:
        filename = frame.f_code.co_filename
        if "cattrs" not in filename or f"gen{os.sep}" not in filename:
            return tracer
        if event == "line":
            made.append(frame.f_lineno)
            here = linecache.getline(filename, frame.f_lineno).strip()
            before = [linecache.getline(filename, n).strip() for n in range(frame.f_lineno - 3, frame.f_lineno)]
            if here == "try:" and "working_set.add(cl)" in before:
                raise Stopped  # as KeyboardInterrupt, a BaseException: the codec lets it through
        return tracer

    world = LocalDisk(App, path)  # a new codec: nothing decoded yet
    try:
        sys.settrace(tracer)
        try:
            first = world.state(Picky.address("g"))
        except Stopped:
            first = None
        finally:
            sys.settrace(None)
        assert world.state(Picky.address("g")) == Gate(open=True, total=0)
        assert first == Gate(open=True, total=0)
        assert made == [], "reading a stored state made converter code"
    finally:
        world.close()
        vars(cattrs.gen.already_generating).pop("working_set", None)  # (after a failure: leave the thread clean)


@pytest.mark.parametrize("read", ["state", "follow"])
def test_an_exception_raised_as_a_context_manager_exits_in_an_inline_read_strands_nobody(
    tmp_path: Path, read: str
) -> None:
    """Python runs a signal handler (Ctrl-C) as any Python function starts, a context
    manager's ``__exit__`` too. The main thread's inline read used to hold the commit lock in
    one written as a generator: an exception there left the generator suspended and the lock
    held, and every caller waited for good. Reads take no such lock now. The trace function
    raises where such a handler would, at the start of each ``__exit__`` written in Python
    that runs during the read. (pytest runs tests in the main thread.)"""
    exits: list[str] = []

    def tracer(frame: Any, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code.co_name == "__exit__" and frame.f_code.co_filename.endswith(
            "contextlib.py"
        ):
            exits.append(frame.f_code.co_filename)
            raise Interrupted
        return None

    kept: list[Interrupted] = []  # as a program may keep what it caught (its traceback holds the frames)
    world = LocalDisk(App, tmp_path / "read.db")  # closed only if nothing is stuck (closing would wait too)
    world.send_sync(Counter.post("c", Increment()))
    sys.settrace(tracer)
    try:
        got = world.state(Counter.address("c")) if read == "state" else world.follow(Counter.address("c"))
    except Interrupted as exc:
        kept.append(exc)
        got = None
    finally:
        sys.settrace(None)
    if isinstance(got, Subscription):
        got.close()
    answers: list[int] = []
    caller = threading.Thread(
        target=lambda: answers.append(world.send_sync(Counter.post("c", Increment()))), daemon=True
    )
    caller.start()
    caller.join(20)
    assert answers == [2], "a caller waited for a lock the interrupted read kept"
    assert world.state(Counter.address("c")) == 2
    world.close()
    assert not kept and not exits, "an inline read ran a context manager written in Python"


@pytest.mark.parametrize("read", ["stored", "new"])
def test_a_signal_handler_inside_a_read_may_unfollow_and_close_and_is_refused_the_rest(
    tmp_path: Path, read: str
) -> None:
    """The main thread's state() holds the engine's locks while it decodes a stored state
    (or runs init() for a new entity); a signal raised from there runs its handler right
    there, every time. Calls that need those locks are refused (they would wait for the
    read forever); closing a subscription or the world is done once the read lets go.
    (pytest runs tests in the main thread.)"""
    path = tmp_path / "box.db"
    world = LocalDisk(BoxApp, path, cache_size=1)
    world.send_sync(Box.post("b", Increment(by=5)))
    world.send_sync(Counter.post("c", Increment()))  # the cache holds one: "b" is read from the file
    following = world.follow(Counter.address("c"))
    seen: list[str] = []

    def handler(signum: int, frame: object) -> None:
        for name, call in (
            ("send_sync", lambda: world.send_sync(Counter.post("c", Increment()))),
            ("state", lambda: world.state(Counter.address("c"))),
            ("dead_letters", world.dead_letters),
        ):
            try:
                call()
                seen.append(f"{name} answered")
            except (ReentrantCallError, SendInsideActivationError) as exc:
                assert "signal handler" in str(exc)
                seen.append(f"{name} refused: {type(exc).__name__}")
        following.close()
        seen.append("unfollowed")
        world.close()
        seen.append("closing")

    previous = signal.signal(signal.SIGUSR1, handler)
    READ_HOOK.append(lambda: signal.raise_signal(signal.SIGUSR1))
    try:
        with hangs_fail():
            got = world.state(Box.address("b" if read == "stored" else "new"))
    finally:
        READ_HOOK.clear()
        signal.signal(signal.SIGUSR1, previous)
    assert got == (Boxed(5) if read == "stored" else Boxed(0))
    # In init() the handler runs inside entity code, which must not call the ecosystem anyway.
    refusal = "ReentrantCallError" if read == "stored" else "SendInsideActivationError"
    assert seen == [f"{name} refused: {refusal}" for name in ("send_sync", "state", "dead_letters")] + [
        "unfollowed", "closing"
    ]
    assert following.closed
    deadline = time.monotonic() + 20
    while not world.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert world.closed  # refusing calls now; the file is released a moment later
    while True:
        try:
            again = LocalDisk(BoxApp, path)
            break
        except AlreadyOpenError:
            assert time.monotonic() < deadline, "the close never released the file"
            time.sleep(0.01)
    with again:
        assert again.state(Box.address("b")) == Boxed(5)
        assert again.state(Counter.address("c")) == 1


@pytest.mark.parametrize("disk_busy", [False, True], ids=["disk idle", "commit in flight"])
def test_queued_asyncio_calls_share_one_commit(tmp_path: Path, disk_busy: bool) -> None:
    # Whether the disk is idle or busy when they queue up, the worker commits them together.
    world = SizedDisk(App, tmp_path / "queued.db")
    world.sizes = []
    count = 150

    async def main() -> list[int]:
        await world.asend_sync(Counter.post("warm-up", Increment()))  # starts the worker
        world.sizes.clear()
        # Held as a commit holds it. (Not as a reader, which asks for the lock: a holder lets
        # it in between two batches and then waits to take the lock back, and this test
        # holds it until the worker has processed the tasks' messages. Under load the
        # warm-up's commit could still hold the lock here, and both waited for good.)
        committing = world._committing(ask=False)
        if disk_busy:
            committing.__enter__()  # first: the engine's lock order is commit lock, then run lock
        world._run_lock.acquire()  # hold the engine while all tasks queue up
        tasks = [asyncio.ensure_future(world.asend_sync(Counter.post(f"a{n}", Increment()))) for n in range(count)]
        while len(world._queue) < count:
            await asyncio.sleep(0.001)
        world._run_lock.release()
        if disk_busy:
            while world._queue or len(world._open) + sum(map(len, world._sealed)) < count:
                await asyncio.sleep(0.001)
            committing.__exit__(None, None, None)  # lets go, then hands what is processed to the committer
        return await asyncio.gather(*tasks)

    with world:
        assert asyncio.run(main()) == [1] * count
        assert world.sizes == [count]
    with LocalDisk(App, tmp_path / "queued.db") as reopened:
        assert [reopened.state(Counter.address(f"a{n}")) for n in range(count)] == [1] * count


class SlowDisk(SizedDisk):
    """A disk whose commits take 20 ms (the file is real; the sleep stands in for a slow fsync)."""

    def _commit(self, batch: Batch) -> None:
        time.sleep(0.02)
        super()._commit(batch)


def test_on_a_slow_disk_looping_threads_regroup_into_one_commit(tmp_path: Path) -> None:
    # Committing whatever is ready splits 8 looping callers into two groups of 4 that
    # take turns; on a slow disk the committer waits for the ones it answered instead.
    world = SlowDisk(App, tmp_path / "slow.db")
    world.sizes = []
    calls = 30

    def run(n: int) -> None:
        for _ in range(calls):
            world.send_sync(Counter.post(f"t{n}", Increment()))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    world.close()
    sizes = world.sizes
    middle = sizes[len(sizes) // 4 : -len(sizes) // 4]  # after it has measured, before callers finish
    assert sum(middle) / len(middle) > 6, sizes
    with LocalDisk(App, tmp_path / "slow.db") as reopened:
        assert [reopened.state(Counter.address(f"t{n}")) for n in range(8)] == [calls] * 8


def test_reads_are_served_while_looping_callers_keep_the_committer_busy(tmp_path: Path) -> None:
    """On a slow disk the committer waits for the callers it answered and commits again, so
    it always has work: it kept the commit lock from batch to batch, and state(), follow()
    and dead_letters(), which wait for that lock, waited as long as the callers kept calling
    (this test ran into its deadline). Now it lets them in between two batches."""
    world = SlowDisk(App, tmp_path / "busy.db")
    world.sizes = []
    deadline = time.monotonic() + 20  # only so that a failure ends: served, reads take a few commits
    done_reading = threading.Event()
    calls = [0] * 4
    reads: list[object] = []

    def call(n: int) -> None:
        while not done_reading.is_set() and time.monotonic() < deadline:
            world.send_sync(Counter.post("shared", Increment()))
            calls[n] += 1

    def read() -> None:
        while sum(calls) < 8:  # the callers are looping
            time.sleep(0.005)
        for _ in range(3):
            reads.append(world.state(Counter.address("shared")))
        reads.append(world.dead_letters())
        with world.follow(Counter.address("shared")) as subscription:
            reads.append(subscription)
        done_reading.set()

    threads = [threading.Thread(target=call, args=(n,)) for n in range(4)] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served_while_busy = done_reading.is_set() and time.monotonic() < deadline
    world.close()
    assert served_while_busy, (reads, calls)
    states = reads[:3]
    assert all(isinstance(state, int) for state in states) and states == sorted(states), reads
    with LocalDisk(App, tmp_path / "busy.db") as reopened:
        assert reopened.state(Counter.address("shared")) == sum(calls)


def test_the_committer_waits_only_when_the_answered_callers_return_within_a_commit() -> None:
    regroup = Regroup()
    assert not regroup.pays(8)  # nothing measured yet
    regroup.answered(group=1, count=4)
    for _ in range(3):
        regroup.came_back()
    assert regroup.back_after is None  # one is still away
    regroup.came_back()
    took = regroup.back_after
    regroup.answered(group=2, count=4)
    assert took is not None and regroup.per_caller == took / 4  # measured per caller
    regroup.commit_seconds, regroup.per_caller = 0.002, 0.0001
    assert regroup.pays(4)  # 4 answered + 4 queued are back in 0.8 ms, within a 2 ms commit
    regroup.per_caller = 0.0003
    assert not regroup.pays(4)  # 8 would take 2.4 ms: committing the 4 now is better
    assert regroup.pays(0)  # the 4 answered alone are back in 1.2 ms
    regroup.count = 1
    assert not regroup.pays(0)  # one caller: nothing to regroup
    regroup.count = 0
    assert not regroup.pays(4)  # nobody answered: nobody to wait for


# -- a failed commit --------------------------------------------------------------------------


def test_a_failed_commit_changes_nothing_and_work_resumes(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with LocalDisk(LogWork, path) as world:
        world.send_sync(Log.post("l", Entry(1)))
        world._file.conn.execute("PRAGMA query_only = 1")  # SQLite now refuses every write
        with pytest.raises(StorageError, match="committing failed"):
            world.send_sync(Log.post("l", Entry(2)))
        with pytest.raises(StorageError):
            world.send(Fan.post("f", Spread("l", 3)))
        world._file.conn.execute("PRAGMA query_only = 0")
        assert world.state(Log.address("l")) == (1,)
        world.send_sync(Fan.post("f", Spread("l", 3)))
        wait_for(lambda: len(world.state(Log.address("l"))) == 4, "the fan-out")
        assert world.state(Log.address("l")) == (1, 0, 1, 2)


# -- pipelined commits ------------------------------------------------------------------------


class HeldDisk(LocalDisk[Any]):
    """Lets the test hold the first commit of an entity's message, to put another batch in flight behind it."""

    hold: str | None
    held: threading.Event
    go: threading.Event

    def _commit(self, batch: Batch) -> None:
        if self.hold is not None and any(item.envelope.address.id == self.hold for item, _ in batch.done):
            self.hold = None
            self.held.set()
            assert self.go.wait(WAIT)
        super()._commit(batch)


def _held(path: Path, hold: str) -> HeldDisk:
    world = HeldDisk(App, path)
    world.hold, world.held, world.go = hold, threading.Event(), threading.Event()
    return world


def _call(world: LocalDisk[Any], entity: str, results: dict[str, object]) -> threading.Thread:
    def run() -> None:
        try:
            results[entity] = world.send_sync(Counter.post(entity, Increment()))
        except Exception as exc:  # noqa: BLE001 - the test inspects what the caller got
            results[entity] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_batch_is_processed_while_the_previous_one_commits(tmp_path: Path) -> None:
    results: dict[str, object] = {}
    with _held(tmp_path / "pipe.db", hold="a") as world:
        first = _call(world, "a", results)
        assert world.held.wait(WAIT)  # a's batch is committing
        second = _call(world, "b", results)
        wait_for(lambda: bool(world._open.done), "b processed while a's commit is in flight")
        assert results == {}  # neither is durable yet, so neither caller has an answer
        world.go.set()
        first.join(WAIT)
        second.join(WAIT)
        assert results == {"a": 1, "b": 1}
    with LocalDisk(App, tmp_path / "pipe.db") as world:
        assert world.state(Counter.address("a")) == world.state(Counter.address("b")) == 1


def test_a_failed_commit_fails_the_batches_behind_it_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    results: dict[str, object] = {}
    with _held(tmp_path / "fail.db", hold="a") as world:
        assert world.send_sync(Counter.post("b", Increment())) == 1
        first = _call(world, "a", results)
        assert world.held.wait(WAIT)
        second = _call(world, "b", results)  # processed on top of a's uncommitted batch
        wait_for(lambda: bool(world._open.done), "b processed while a's commit is in flight")
        with world._file._use:
            world._file.conn.execute("PRAGMA query_only = 1")  # SQLite now refuses every write
        world.go.set()
        first.join(WAIT)
        second.join(WAIT)
        assert isinstance(results["a"], StorageError) and isinstance(results["b"], StorageError)
        with world._file._use:
            world._file.conn.execute("PRAGMA query_only = 0")
        # The cache forgot both batches: states come from the file again.
        assert world.state(Counter.address("a")) == 0
        assert world.state(Counter.address("b")) == 1
        assert world.send_sync(Counter.post("b", Increment())) == 2
    with LocalDisk(App, tmp_path / "fail.db") as world:
        assert world.state(Counter.address("a")) == 0
        assert world.state(Counter.address("b")) == 2


def test_state_waits_for_what_was_processed_to_be_durable(tmp_path: Path) -> None:
    results: dict[str, object] = {}
    read: list[object] = []
    with _held(tmp_path / "read.db", hold="a") as world:
        caller = _call(world, "a", results)
        assert world.held.wait(WAIT)
        reader = threading.Thread(target=lambda: read.append(world.state(Counter.address("a"))))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive() and read == []  # 1 is processed but not durable: not shown yet
        world.go.set()
        caller.join(WAIT)
        reader.join(WAIT)
        assert read == [1] and results == {"a": 1}


def test_followers_see_every_committed_state_once_in_order_under_concurrent_senders(tmp_path: Path) -> None:
    with LocalDisk(App, tmp_path / "follow.db") as world:
        world.send_sync(Counter.post("shared", Increment()))
        with world.follow(Counter.address("shared")) as subscription:
            start = subscription.state

            def sender() -> None:
                for _ in range(100):
                    world.send_sync(Counter.post("shared", Increment()))

            async def tasks() -> None:
                await asyncio.gather(*(world.asend(Counter.post("shared", Increment())) for _ in range(200)))

            threads = [threading.Thread(target=sender) for _ in range(8)]
            threads.append(threading.Thread(target=lambda: asyncio.run(tasks())))
            for thread in threads:
                thread.start()
            seen = [subscription.next(timeout=WAIT) for _ in range(1000)]
            for thread in threads:
                thread.join(WAIT)
        assert seen == list(range(start + 1, start + 1001))
        assert world.state(Counter.address("shared")) == start + 1000


def test_close_under_load_answers_or_refuses_every_caller_and_keeps_every_answered_call(tmp_path: Path) -> None:
    """8 threads (some also reading state) and 8 tasks send until close(): nobody hangs,
    each call is either answered or refused with ClosedError, and the file holds exactly
    the answered ones (what was processed when close() began is committed and answered)."""
    for trial in range(3):
        path = tmp_path / f"close-{trial}.db"
        world = LocalDisk(App, path)
        answered = [0]
        counting = threading.Lock()  # += on a shared int is not atomic across threads
        unexpected: list[str] = []

        def thread_sender(n: int) -> None:
            envelope = Counter.post(f"c{n % 3}", Increment())
            try:
                while True:
                    world.send_sync(envelope)
                    with counting:
                        answered[0] += 1
                    if n % 4 == 0:
                        world.state(Counter.address("c0"))
            except ClosedError:
                pass
            except Exception as exc:  # noqa: BLE001 - reported below
                unexpected.append(repr(exc))

        async def task_sender(n: int) -> None:
            try:
                while True:
                    await world.asend_sync(Counter.post(f"c{n % 3}", Increment()))
                    with counting:
                        answered[0] += 1
            except ClosedError:
                pass
            except Exception as exc:  # noqa: BLE001 - reported below
                unexpected.append(repr(exc))

        async def tasks() -> None:
            await asyncio.gather(*(task_sender(n) for n in range(8)))

        senders = [threading.Thread(target=thread_sender, args=(n,)) for n in range(8)]
        senders.append(threading.Thread(target=lambda: asyncio.run(tasks())))
        for sender in senders:
            sender.start()
        wait_for(lambda: answered[0] > 200, "calls to be answered before closing")
        world.close()
        for sender in senders:
            sender.join(WAIT)
        assert not [sender for sender in senders if sender.is_alive()], "a caller hangs after close()"
        assert unexpected == []
        with LocalDisk(App, path) as reopened:
            assert sum(reopened.state(Counter.address(f"c{n}")) for n in range(3)) == answered[0]


def test_an_error_a_signal_handler_raises_inside_a_read_is_raised_as_is_not_called_corrupt(
    tmp_path: Path,
) -> None:
    """A handler that does not catch its refused call lets ReentrantCallError out inside
    the read, in the middle of decoding a stored state. The read raises it as it is: the
    stored state is fine, and calling it corrupt would send its reader after a fault the
    file does not have. (pytest runs tests in the main thread.)"""
    path = tmp_path / "box.db"
    with LocalDisk(BoxApp, path, cache_size=1) as world:
        world.send_sync(Box.post("b", Increment(by=5)))
        world.send_sync(Counter.post("c", Increment()))  # the cache holds one: "b" is read from the file

        def handler(signum: int, frame: object) -> None:
            world.send_sync(Counter.post("c", Increment()))  # refused: the read holds the locks

        previous = signal.signal(signal.SIGUSR1, handler)
        READ_HOOK.append(lambda: signal.raise_signal(signal.SIGUSR1))
        try:
            with hangs_fail(), pytest.raises(ReentrantCallError, match="signal handler"):
                world.state(Box.address("b"))
        finally:
            READ_HOOK.clear()
            signal.signal(signal.SIGUSR1, previous)
        assert world.state(Box.address("b")) == Boxed(5)
        assert world.state(Counter.address("c")) == 1


def test_a_validator_that_calls_the_ecosystem_is_named_in_the_dead_letter_not_called_corrupt(
    tmp_path: Path,
) -> None:
    """The worker loading a stored state whose validator calls the ecosystem (refused: it
    runs inside the engine) cannot use that state; the message becomes a dead letter whose
    reason names the refused call, and a retry applies it once the validator behaves."""
    with LocalDisk(BoxApp, tmp_path / "box.db", cache_size=1) as world:
        world.send_sync(Box.post("b", Increment(by=5)))
        world.send_sync(Counter.post("c", Increment()))  # the cache holds one: "b" is read from the file
        READ_HOOK.append(lambda: world.send(Counter.post("c", Increment())))
        try:
            world.send_sync(Feeder.post("f", Feed("b")))  # the worker applies what it forwards
            deadline = time.monotonic() + 20
            while not world.dead_letters() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            READ_HOOK.clear()
        [letter] = world.dead_letters()
        assert "decoding the stored state of Box('b')" in letter.reason
        assert "called the ecosystem, which was refused: send() was called" in letter.reason
        assert "corrupt" not in letter.reason and "does not fit" not in letter.reason
        world.retry(letter)
        assert world.state(Box.address("b")) == Boxed(6)
        assert world.state(Counter.address("c")) == 1
