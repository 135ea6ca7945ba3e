"""Child processes for the LocalDisk fault tests: ``python -m tests.helpers_faults.child MODE ...``.

Modes (each prints "ready" once it is under way, and is meant to be SIGKILLed):
  callers PATH ROUND ACKS THREADS TASKS FANOUT PAD
        THREADS threads (send_sync/send alternately) and TASKS asyncio tasks
        (asend_sync/asend) send numbered Notes to the hubs; an ack line
        "SENDER SEQ" is appended to ACKS after each call returns
  reopen PATH
        open a tests.helpers_localdisk Work file (opening delivers its pending
        messages), print "open", and wait
  upgrade PATH ACKS COUNT THREADS
        open with the v2 code and Bump entities v0..v{COUNT-1} (stored by v1 code),
        an ack line "v{i} COUNT" after each send_sync returns
  fill PATH PAD FSIZE
        write Blobs of PAD characters until a commit is refused (FSIZE > 0: with
        that RLIMIT_FSIZE); then wait for a line on stdin, lift the limit if any,
        and write again; lines on stdout say what happened
  fill-many PATH PAD FSIZE THREADS TASKS
        THREADS threads and TASKS asyncio tasks write Blobs "b{caller}.{i}" and print
        "ack CALLER I", or "refused CALLER I ..." and write the same one again at
        once; stdin "freed" lifts the limit if any, "stop" ends and closes

The environment variable PACHYDERM_FAULT_HOOK wraps the store's commit (this is the
test harness, not the library; the real commit code runs):
  report                 print "committing N" right before the real SQL COMMIT
                         and "committed N" right after it
  before:SENDER:SEQ      in the commit that applies Note(SENDER, SEQ), print
                         "paused before ..." right before the real COMMIT and block
  after:SENDER:SEQ       the same, right after the COMMIT returned (durable, not acked)
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import threading
import time
from typing import Any

from pachyderm_typed import StorageError
from pachyderm_typed.ecosystems import LocalDisk
from pachyderm_typed.errors import PachydermError
from tests.helpers_faults.workload import HUBS, V2, Blob, Bump, Faults, Hub, Note, Put, VersionedV2
from tests.helpers_localdisk.workload import Work


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _HookedConnection:
    """Stands in for the store's ``sqlite3.Connection``; hooks only the statements that commit.

    Those are COMMIT, and a write outside a transaction: the store sends a small batch
    of puts as one multi-row statement (an upsert), which is its own transaction.
    """

    def __init__(self, conn: Any, hook: Any) -> None:
        self._conn = conn
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" or (sql.startswith(("INSERT", "REPLACE")) and not self._conn.in_transaction):
            return self._hook(lambda: self._conn.execute(sql, *args))
        return self._conn.execute(sql, *args)


def uncommitted_frames(wal: str) -> int:
    """Frames after the last commit frame in a WAL file, read from the frame headers.

    WAL header: 32 bytes, page size at 8, salts at 16..24. Each frame: a 24-byte
    header (page number, database size after commit, nonzero only in a commit
    frame; the salts at 8..16) and one page. Frames whose salts differ are left
    over from before the WAL was last restarted.
    """
    with open(wal, "rb") as handle:
        data = handle.read()
    if len(data) < 32:
        return 0
    page_size, salts = int.from_bytes(data[8:12], "big"), data[16:24]
    after_commit, offset = 0, 32
    while offset + 24 + page_size <= len(data) and data[offset + 8:offset + 16] == salts:
        after_commit = 0 if int.from_bytes(data[offset + 4:offset + 8], "big") else after_commit + 1
        offset += 24 + page_size
    return after_commit


def install_hook(world: LocalDisk[Any]) -> None:
    spec = os.environ.get("PACHYDERM_FAULT_HOOK", "")
    if not spec:
        return
    store = world._file  # noqa: SLF001 - the harness reaches in; the library is untouched
    wal = f"{store.path}-wal"
    batch_now: list[Any] = []
    commits = 0

    real_commit = world._commit  # noqa: SLF001

    def commit(batch: Any) -> None:
        batch_now.append(batch)
        try:
            real_commit(batch)
        finally:
            batch_now.pop()

    world._commit = commit  # type: ignore[method-assign]  # noqa: SLF001

    if spec == "report":
        def hook(run: Any) -> Any:
            nonlocal commits
            commits += 1
            say(f"committing {commits}")
            result = run()
            say(f"committed {commits}")
            return result
    else:
        when, sender, seq = spec.split(":")
        target = (sender, int(seq))

        def ours() -> bool:
            return bool(batch_now) and any(
                isinstance(item.envelope.message, Note) and (item.envelope.message.sender, item.envelope.message.seq) == target
                for item, _ in batch_now[-1].done
            )

        def hook(run: Any) -> Any:
            if not ours():
                return run()
            if when == "after":
                result = run()
            say(f"paused {when} {sender} {seq}: uncommitted WAL frames {uncommitted_frames(wal)}")
            threading.Event().wait()  # holds the run lock: nothing else commits until the kill
            return result

    store.conn = _HookedConnection(store.conn, hook)  # type: ignore[assignment]


class Acks:
    """Append-only ack lines, each flushed to the kernel before the next call starts."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def callers(path: str, round_no: str, acks_path: str, threads: int, tasks: int, fanout: int, pad: int) -> None:
    world = LocalDisk(Faults, path)
    install_hook(world)
    acks = Acks(acks_path)
    padding = "p" * pad

    def thread_sender(client: int) -> None:
        sender = f"{round_no}.{client}"
        hub = Hub.address(f"h{client % HUBS}")
        for seq in range(10**9):
            note = hub.post(Note(sender, seq, fanout, padding))
            if seq % 2:
                world.send(note)
            else:
                world.send_sync(note)
            acks.write(f"{sender} {seq}")

    async def task_sender(client: int) -> None:
        sender = f"{round_no}.{client}"
        hub = Hub.address(f"h{client % HUBS}")
        for seq in range(10**9):
            note = hub.post(Note(sender, seq, fanout, padding))
            if seq % 2:
                await world.asend(note)
            else:
                await world.asend_sync(note)
            acks.write(f"{sender} {seq}")

    async def all_tasks() -> None:
        await asyncio.gather(*(task_sender(threads + c) for c in range(tasks)))

    runners = [threading.Thread(target=thread_sender, args=(c,), daemon=True) for c in range(threads)]
    if tasks:
        runners.append(threading.Thread(target=lambda: asyncio.run(all_tasks()), daemon=True))
    for runner in runners:
        runner.start()
    say("ready")
    for runner in runners:
        runner.join()


def reopen(path: str) -> None:
    world = LocalDisk(Work, path)  # starts delivering what was pending at once
    install_hook(world)  # races the first batch: that one may commit unreported
    say("open")
    threading.Event().wait()


def upgrade(path: str, acks_path: str, count: int, threads: int) -> None:
    world = LocalDisk(V2, path)
    install_hook(world)
    acks = Acks(acks_path)

    def bump(first: int) -> None:
        for i in range(first, count, threads):
            state = world.send_sync(VersionedV2.post(f"v{i}", Bump()))
            acks.write(f"v{i} {state.count}")

    runners = [threading.Thread(target=bump, args=(t,), daemon=True) for t in range(threads)]
    for runner in runners:
        runner.start()
    say("ready")
    for runner in runners:
        runner.join()
    say("finished")
    threading.Event().wait()


def fill(path: str, pad: int, fsize: int) -> None:
    if fsize:
        # Past the limit write() fails with EFBIG instead of the process being killed by SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, hard))
    world = LocalDisk(Faults, path)
    say("ready")

    def put(i: int) -> None:
        key = f"b{i}"
        world.send_sync(Blob.post(key, Put(key, f"{key}:" + "x" * pad)))
        say(f"ack {i}")

    i = 0
    while True:
        try:
            put(i)
        except StorageError as exc:
            say(f"refused {i} {type(exc).__name__} {json.dumps(str(exc))}")
            break
        i += 1
        if i == 100_000:
            say("never refused")
            return
    sys.stdin.readline()  # the parent freed some space (or tells us to lift the limit)
    if fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    # The refused write left nothing behind, and what was acknowledged is still readable.
    # Only now: state() first commits what was processed before it (the worker may have
    # delivered reloaded pending notes meanwhile), which a full disk refuses.
    say(f"state refused {json.dumps(world.state(Blob.address(f'b{i}')))}")
    previous = world.state(Blob.address(f"b{i - 1}"))
    say(f"state previous {json.dumps(previous == f'b{i - 1}:' + 'x' * pad)}")
    try:
        for j in range(i, i + 3):  # the same ecosystem, still open, works again
            put(j)
    except PachydermError as exc:
        say(f"still refused {type(exc).__name__} {json.dumps(str(exc))}")
    world.close()
    say("closed")


class SlowWakeLoop(asyncio.SelectorEventLoop):
    """An event loop whose wake-ups from other threads take a moment, like a busy machine's.

    ``call_soon_threadsafe`` schedules the callback, then sleeps 2 ms before returning to
    the thread that called it (the GIL released, as in any syscall): the woken task runs
    meanwhile. The library's code runs unchanged; only the timing it meets is harsher.
    """

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:  # type: ignore[override]
        handle = super().call_soon_threadsafe(callback, *args, context=context)
        if threading.current_thread() is not self._thread:
            time.sleep(0.002)
        return handle

    def run_forever(self) -> None:
        self._thread = threading.current_thread()
        super().run_forever()


def fill_many(path: str, pad: int, fsize: int, threads: int, tasks: int) -> None:
    if fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, hard))
    world = LocalDisk(Faults, path)
    stop = threading.Event()
    problems: list[str] = []

    def envelope(caller: int, i: int) -> Any:
        key = f"b{caller}.{i}"
        return Blob.post(key, Put(key, f"{key}:" + "x" * pad))

    def refused(caller: int, i: int, exc: Exception) -> None:
        if not isinstance(exc, StorageError):
            problems.append(f"{caller} {i} {type(exc).__name__}: {exc}")
        say(f"refused {caller} {i} {type(exc).__name__} {json.dumps(str(exc))}")

    def thread_writer(caller: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                world.send_sync(envelope(caller, i)) if i % 2 else world.send(envelope(caller, i))
            except Exception as exc:  # every failure is reported; only StorageError is expected
                refused(caller, i, exc)  # and at once again: callers racing the failed commit
                continue
            say(f"ack {caller} {i}")
            i += 1

    async def task_writer(caller: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                await (world.asend_sync(envelope(caller, i)) if i % 2 else world.asend(envelope(caller, i)))
            except Exception as exc:
                refused(caller, i, exc)
                continue
            say(f"ack {caller} {i}")
            i += 1

    async def all_tasks() -> None:
        await asyncio.gather(*(task_writer(threads + c) for c in range(tasks)))

    def run_tasks() -> None:
        with asyncio.Runner(loop_factory=SlowWakeLoop) as runner:
            runner.run(all_tasks())

    runners = [threading.Thread(target=thread_writer, args=(c,), daemon=True) for c in range(threads)]
    runners.append(threading.Thread(target=run_tasks, daemon=True))
    for runner in runners:
        runner.start()
    say("ready")
    for line in sys.stdin:
        if line.strip() == "freed" and fsize:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        if line.strip() == "stop":
            break
    stop.set()
    for runner in runners:
        runner.join(20)
        if runner.is_alive():
            say("hung: a caller never returned")
            os._exit(3)
    world.close()
    say(f"closed {json.dumps(problems)}")


if __name__ == "__main__":
    mode, path, *rest = sys.argv[1:]
    if mode == "callers":
        threads, tasks, fanout, pad = (int(a) for a in rest[2:6])
        callers(path, rest[0], rest[1], threads, tasks, fanout, pad)
    elif mode == "reopen":
        reopen(path)
    elif mode == "upgrade":
        upgrade(path, rest[0], int(rest[1]), int(rest[2]))
    elif mode == "fill":
        fill(path, int(rest[0]), int(rest[1]))
    elif mode == "fill-many":
        pad, fsize, threads, tasks = (int(a) for a in rest[:4])
        fill_many(path, pad, fsize, threads, tasks)
    else:
        raise SystemExit(f"unknown mode {mode}")
