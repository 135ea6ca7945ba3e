"""Soak run: minutes of high-concurrency traffic on LocalDisk and Postgres, then an audit.

    .venv/bin/python bench/soak.py --minutes 10 [--ecosystem localdisk|postgres|both]
    .venv/bin/python bench/soak.py --minutes 0.5            # a quick check
    .venv/bin/python bench/soak.py --minutes 1 --ecosystem localdisk --cache-size 2   # evicting

A benchmark, not a test: it prints, it asserts nothing about speed.

Load: ``--threads`` plain threads (``send_sync``/``send`` alternately) and ``--tasks``
asyncio tasks on one event loop (``asend_sync``/``asend``). Each client is one sender with
its own sequence numbers ``0, 1, 2, ...`` and waits for each call before the next. Client
``c`` sends ``Msg(c, i)`` to ``Hub(c % HUBS)`` (several clients share a hub, so entities are
contended); the hub forwards ``Msg(c, i)`` to ``Sink(i % SINKS)`` through its outbox.

Audit without unbounded state: each hub and sink keeps, per client, how many messages it
applied and the highest sequence number seen, and counts every arrival that is not higher
than the last one (a duplicate or a FIFO violation). FIFO per (sender, receiver) holds and
each client reaches each sink through one hub only, so at the end, with ``n`` calls
acknowledged to client ``c``: the hub must hold ``(n, n - 1)`` for ``c``, each sink ``s``
must hold exactly the number of ``i < n`` with ``i % SINKS == s``, and no anomaly anywhere.
Strictly increasing arrivals from a known set, as many as the set has, are exactly that
set: nothing lost, nothing doubled. LocalDisk is audited after closing and reopening the file.

A watcher thread reads beside the load (see ``Watcher``): its reads and the states pushed to
its subscription must never go back.

Every ``--every`` seconds a row: elapsed time, calls acknowledged per second in the interval
(each call is two activations: the hub's and the forwarded sink's), RSS of this process
(``VmRSS``; for Postgres also the second node process), and the pending (not yet applied)
forwarded messages. Postgres runs two nodes: this process (the callers, with 2 workers) and
a worker-only node subprocess; its own namespace in ``--dsn`` is dropped at the end. Only
127.0.0.1 is contacted by default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pachyderm_typed import DatabaseUnavailableError, Ecosystem, Entity, Outbox, World  # noqa: E402
from pachyderm_typed.ecosystems._localdisk import DEFAULT_CACHE_SIZE  # noqa: E402

DSN = os.environ.get("PACHYDERM_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
T = TypeVar("T")
HUBS = 8
SINKS = 4


@attrs.frozen
class Msg:
    client: int
    seq: int


@attrs.frozen
class Seen:
    """Per client: (messages applied, highest seq seen); and arrivals out of sequence."""

    marks: dict[int, tuple[int, int]] = attrs.field(factory=dict)
    anomalies: int = 0

    def add(self, message: Msg) -> Seen:
        count, last = self.marks.get(message.client, (0, -1))
        marks = dict(self.marks)
        marks[message.client] = (count + 1, max(last, message.seq))
        return Seen(marks, self.anomalies + (message.seq <= last))


class Hub(Entity[int, Msg, Seen]):
    def init(self, entity_id: int) -> Seen:
        return Seen()

    def activate(self, message: Msg, state: Seen) -> tuple[Outbox, Seen]:
        return [Sink.post(message.seq % SINKS, message)], state.add(message)


class Sink(Entity[int, Msg, Seen]):
    def init(self, entity_id: int) -> Seen:
        return Seen()

    def activate(self, message: Msg, state: Seen) -> tuple[Outbox, Seen]:
        return [], state.add(message)


class Soak(Ecosystem[Hub | Sink]): ...


# -- measuring --------------------------------------------------------------------------


def rss_mib(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Load:
    """The clients: threads and asyncio tasks, each counting its acknowledged calls.

    The database may go away and come back during a long run (a restart): a call that
    reports ``DatabaseUnavailableError`` with ``applied=False`` is sent again; with an
    unknown outcome (``applied=None``) the client reads its hub's state to learn whether
    that one call was applied before deciding, as an application would.
    """

    def __init__(self, world: World[Any], threads: int, tasks: int) -> None:
        self.world = world
        self.acked = [0] * (threads + tasks)  # one writer per slot: no lock needed
        self.errors: list[str] = []
        self.retried = 0  # calls sent again after "nothing was applied"
        self.resolved = 0  # unknown outcomes settled by reading the hub
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(threads)]
        self._first_task = threads
        self._tasks = tasks
        self._loop_thread = threading.Thread(target=lambda: asyncio.run(self._async_clients()), daemon=True)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._loop_thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in [*self._threads, self._loop_thread]:
            thread.join()

    def total(self) -> int:
        return sum(self.acked)

    def _failed(self, client: int, exc: BaseException) -> None:
        self.errors.append(f"client {client} at seq {self.acked[client]}: {type(exc).__name__}: {exc}")
        self.stop.set()

    def _settle(self, client: int, seq: int, exc: DatabaseUnavailableError) -> bool:
        """After an outage: True if call ``seq`` was applied, False to send it again."""
        if exc.applied is False:
            self.retried += 1
            time.sleep(0.2)
            return False
        while True:  # settled even when stopping: the audit needs the exact count
            try:
                seen: Seen = self.world.state(Hub.address(client % HUBS))
            except DatabaseUnavailableError:
                time.sleep(0.2)
                continue
            self.resolved += 1
            return seen.marks.get(client, (0, -1))[1] >= seq

    def _client(self, client: int) -> None:
        world, acked, stop = self.world, self.acked, self.stop
        hub = Hub.address(client % HUBS)
        while not stop.is_set():
            seq = acked[client]
            try:
                if seq % 2:
                    world.send(hub.post(Msg(client, seq)))
                else:
                    world.send_sync(hub.post(Msg(client, seq)))
            except DatabaseUnavailableError as exc:
                if not self._settle(client, seq, exc):
                    continue
            except Exception as exc:  # reported in the verdict
                self._failed(client, exc)
                return
            acked[client] = seq + 1

    async def _async_client(self, client: int) -> None:
        world, acked, stop = self.world, self.acked, self.stop
        hub = Hub.address(client % HUBS)
        while not stop.is_set():
            seq = acked[client]
            try:
                if seq % 2:
                    await world.asend(hub.post(Msg(client, seq)))
                else:
                    await world.asend_sync(hub.post(Msg(client, seq)))
            except DatabaseUnavailableError as exc:
                if not await asyncio.to_thread(self._settle, client, seq, exc):
                    continue
            except Exception as exc:
                self._failed(client, exc)
                return
            acked[client] = seq + 1

    async def _async_clients(self) -> None:
        first = self._first_task
        await asyncio.gather(*(self._async_client(c) for c in range(first, first + self._tasks)))


class Watcher:
    """A reader beside the load, as a dashboard would be: it follows hub 0 and reads one hub's
    state after another, every 10 ms, until the load stops.

    What it sees must never go back: per client, a hub's count and highest number only grow.
    It counts its reads and the states pushed to it, and keeps the slowest read (a read
    returns once what was processed before it is committed, while the callers keep the
    store busy).
    """

    def __init__(self, world: World[Any], stop: threading.Event) -> None:
        self.world = world
        self.stop = stop
        self.reads = 0
        self.pushed = 0
        self.backwards = 0
        self.slowest = 0.0
        self.slow = 0  # reads that took over 100 ms
        self.errors: list[str] = []
        self._last: dict[tuple[str, int], dict[int, tuple[int, int]]] = {}  # per (source, hub)
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _saw(self, source: str, hub: int, seen: Seen) -> None:
        # (reads and pushes are checked apart: the subscription hands out every state in
        # order, so it may still be behind what a read just returned)
        last = self._last.setdefault((source, hub), {})
        for client, mark in seen.marks.items():
            if mark < last.get(client, (0, -1)):
                self.backwards += 1
            last[client] = mark

    def _watch(self) -> None:
        try:
            with self.world.follow(Hub.address(0)) as subscription:
                hub = 0
                while not self.stop.wait(0.01):
                    began = time.monotonic()
                    try:
                        seen = self.world.state(Hub.address(hub))
                    except DatabaseUnavailableError:
                        continue
                    took = time.monotonic() - began
                    self.slowest = max(self.slowest, took)
                    self.slow += took > 0.1
                    self.reads += 1
                    self._saw("read", hub, seen)
                    while True:
                        try:
                            pushed = subscription.next(timeout=0)
                        except TimeoutError:
                            break
                        self.pushed += 1
                        self._saw("pushed", 0, pushed)
                    hub = (hub + 1) % HUBS
        except Exception as exc:  # reported in the verdict
            self.errors.append(f"watcher: {type(exc).__name__}: {exc}")


def patiently(read: Callable[[], T]) -> T:
    """``read()``, tried again for up to 5 minutes while the database is unavailable."""
    deadline = time.monotonic() + 300
    while True:
        try:
            return read()
        except DatabaseUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def audit(acked: list[int], hubs: dict[int, Seen], sinks: dict[int, Seen]) -> tuple[int, int, list[str]]:
    """(lost, doubled or reordered, first problems) for the final states against the acks."""
    lost = excess = 0
    anomalies = sum(seen.anomalies for seen in [*hubs.values(), *sinks.values()])
    problems: list[str] = []
    for client, n in enumerate(acked):
        expected = {("hub", client % HUBS): (n, n - 1)}
        for s in range(SINKS):
            mine = range(s, n, SINKS)
            expected["sink", s] = (len(mine), mine[-1] if mine else -1)
        for (what, number), (want, want_last) in expected.items():
            count, last = (hubs if what == "hub" else sinks)[number].marks.get(client, (0, -1))
            if (count, last) != (want, want_last):
                lost += max(0, want - count)
                excess += max(0, count - want)
                problems.append(f"client {client}: {what} {number} applied {count} (last {last}), expected {want}")
    # A doubled message shows both as an anomaly and as one too many: count it once.
    return lost, max(anomalies, excess), problems[:10]


def read_all(world: World[Any]) -> tuple[dict[int, Seen], dict[int, Seen]]:
    return (
        {h: world.state(Hub.address(h)) for h in range(HUBS)},
        {s: world.state(Sink.address(s)) for s in range(SINKS)},
    )


def forwarded(sinks: dict[int, Seen]) -> int:
    return sum(count for seen in sinks.values() for count, _ in seen.marks.values())


def run(
    name: str,
    world: World[Any],
    args: argparse.Namespace,
    pending: Callable[[World[Any]], int],
    node_pids: list[int],
    reopen: Callable[[], World[Any]],
) -> bool:
    seconds = args.minutes * 60
    every = args.every or (30.0 if seconds >= 300 else 5.0)
    load = Load(world, args.threads, args.tasks)
    watcher = Watcher(world, load.stop)
    extra = "".join(f"  node{i + 2} RSS MiB" for i in range(len(node_pids)))
    print(f"\n== soak {name}: {args.threads} threads + {args.tasks} asyncio tasks, "
          f"{HUBS} hubs -> {SINKS} sinks, {args.minutes:g} min, a row every {every:g} s", flush=True)
    print(f"  elapsed s    calls/s  activations/s  RSS MiB{extra}   pending", flush=True)
    start = time.monotonic()
    rss_rows: list[float] = []
    load.start()
    watcher.start()
    last_total, last_time = 0, start
    while not load.stop.is_set():
        deadline = min(start + seconds, last_time + every)
        load.stop.wait(max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        total = load.total()
        rate = (total - last_total) / (now - last_time)
        rss = rss_mib()
        rss_rows.append(rss)
        nodes = "".join(f"  {rss_mib(pid):13.1f}" for pid in node_pids)
        print(f"  {now - start:9.0f}  {rate:9.0f}  {2 * rate:13.0f}  {rss:7.1f}{nodes}  {pending(world):8d}", flush=True)
        last_total, last_time = total, now
        if now - start >= seconds:
            break
    load.join()
    watcher.join()
    elapsed = time.monotonic() - start
    total = load.total()
    # Let the forwarded messages drain (the callers' own activations are all committed).
    drain_deadline = time.monotonic() + 300
    while time.monotonic() < drain_deadline:
        if forwarded(patiently(lambda: read_all(world))[1]) >= total:
            break
        time.sleep(0.2)
    world.close()
    with patiently(reopen) as fresh:  # audit from the store, not from this process's cache
        hubs, sinks = patiently(lambda: read_all(fresh))
        left = pending(fresh)
    lost, doubled, problems = audit(load.acked, hubs, sinks)
    growth = rss_rows[-1] - rss_rows[0] if rss_rows else float("nan")
    print(f"  {total:,} calls acknowledged in {elapsed:.0f} s ({total / elapsed:,.0f}/s, "
          f"{2 * total / elapsed:,.0f} activations/s); errors: {len(load.errors)}")
    if load.retried or load.resolved:
        print(f"  the database was unavailable at times: {load.retried} calls sent again (nothing applied), "
              f"{load.resolved} unknown outcomes settled by reading the hub")
    print(f"  RSS: first row {rss_rows[0]:.1f} MiB, last row {rss_rows[-1]:.1f} MiB, peak {max(rss_rows):.1f} MiB "
          f"(growth {growth:+.1f} MiB); pending after drain: {left}")
    print(f"  watcher: {watcher.reads:,} state() reads ({watcher.slow} over 100 ms, slowest "
          f"{watcher.slowest * 1e3:.1f} ms), "
          f"{watcher.pushed:,} states pushed to its subscription; {watcher.backwards} went back")
    for line in [*load.errors[:5], *watcher.errors, *problems]:
        print(f"  ! {line}")
    ok = lost == 0 and doubled == 0 and not load.errors and left == 0 and total > 0
    ok = ok and not watcher.errors and watcher.backwards == 0 and watcher.reads > 0
    print(f"  verdict {name}: {'PASS' if ok else 'FAIL'}: {lost} lost, {doubled} doubled or out of order (activations), "
          f"{total:,} acknowledged calls, {2 * total:,} activations audited", flush=True)
    return ok


def localdisk_pending(world: Any) -> int:
    """Pending rows in the file (a bench may look inside; the library has no public count)."""
    from pachyderm_typed._dbmfile import PENDING

    with world._run_lock:
        return 0 if world.closed else int(world._file.count(PENDING))


def soak_localdisk(args: argparse.Namespace) -> bool:
    from pachyderm_typed.ecosystems import LocalDisk

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        path = Path(tmp) / "soak.db"
        world = LocalDisk(Soak, path, cache_size=args.cache_size)
        ok = run(
            "LocalDisk", world, args,
            pending=localdisk_pending,
            node_pids=[],
            reopen=lambda: LocalDisk(Soak, path),
        )
        print(f"  file: {path.stat().st_size / 1024:.0f} KiB after close")
        return ok


def soak_postgres(args: argparse.Namespace) -> bool:
    import psycopg
    from psycopg import sql

    from pachyderm_typed.ecosystems import Postgres

    namespace = f"soak_{uuid.uuid4().hex[:10]}"
    world = Postgres(Soak, args.dsn, namespace=namespace, workers=2)
    node = subprocess.Popen(
        [sys.executable, __file__, "--node", namespace, "--dsn", args.dsn],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdin is not None and node.stdout is not None
    query = sql.SQL("SELECT count(*) FROM {}.pending").format(sql.Identifier(namespace))
    monitor: list[psycopg.Connection[Any]] = []

    def pending(world: World[Any]) -> int:
        """Rows in ``pending`` (-1 while the database is unavailable)."""
        try:
            if not monitor:
                monitor.append(psycopg.connect(args.dsn, autocommit=True, connect_timeout=3))
            row = monitor[0].execute(query).fetchone()
            return int(row[0]) if row else -1
        except psycopg.Error:
            for conn in monitor:
                conn.close()
            monitor.clear()
            return -1

    try:
        if node.stdout.readline().strip() != "ready":
            raise SystemExit("the second Postgres node did not start")
        ok = run(
            "Postgres (2 nodes)", world, args, pending=pending, node_pids=[node.pid],
            reopen=lambda: Postgres(Soak, args.dsn, namespace=namespace, workers=0),
        )
        node.stdin.close()
        print(f"  second node: {node.stdout.readline().strip()}")
        node.wait(60)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        for conn in monitor:
            conn.close()
        world.close()
        patiently(lambda: Postgres.drop_namespace(args.dsn, namespace))
    return ok


def node_main(namespace: str, dsn: str) -> None:
    """A worker-only Postgres node: process forwarded messages until stdin closes."""
    from pachyderm_typed.ecosystems import Postgres

    world = Postgres(Soak, dsn, namespace=namespace, workers=2)
    print("ready", flush=True)
    sys.stdin.read()
    processed = world.processed
    world.close()
    print(f"processed {processed:,} messages, RSS {rss_mib():.1f} MiB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--ecosystem", choices=["localdisk", "postgres", "both"], default="both")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument(
        "--cache-size", type=int, default=DEFAULT_CACHE_SIZE,
        help="LocalDisk's cache_size: 2 keeps evicting and reloading hubs and sinks under load",
    )
    parser.add_argument("--every", type=float, default=0.0, help="seconds between rows (default 30, or 5 if short)")
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--node", metavar="NAMESPACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        node_main(args.node, args.dsn)
        return 0
    print(f"soak: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, pid {os.getpid()}")
    ok = True
    if args.ecosystem in ("localdisk", "both"):
        ok &= soak_localdisk(args)
    if args.ecosystem in ("postgres", "both"):
        ok &= soak_postgres(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
