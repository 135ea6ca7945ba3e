"""Postgres ecosystem benchmark: activations per second with 1 and 4 node processes, and
``send_sync`` latency, against raw single-row "lock, update, commit" transactions measured
in the same run on the same server (absolute numbers drift on these machines; ratios less).

    .venv/bin/python bench/bench_postgres.py [--dsn DSN] [--tokens 4000] [--hops 9] [--seconds 3]

Workload: a Spawner's one activation puts ``tokens`` messages in ``pending``; each token
hops ``hops`` times between ``entities`` Hopper entities (each hop is an activation that
commits a new state and sends the next hop), then reports to one Sink. Nodes are separate
processes running ``Postgres(App, dsn)``; the clock runs from the Spawner's ``send`` to the
moment a follower on the (worker-less) driver node sees the Sink count every token.

Only 127.0.0.1 is contacted (the default DSN).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import attrs
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pachyderm_typed import Ecosystem, Entity, Outbox  # noqa: E402

DSN = os.environ.get("PACHYDERM_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@attrs.frozen
class Start:
    tokens: int
    hops: int
    entities: int


@attrs.frozen
class Hop:
    token: int
    left: int
    entities: int


@attrs.frozen
class Done:
    token: int


class Spawner(Entity[str, Start, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Start, state: int) -> tuple[Outbox, int]:
        n = message.entities
        return [Hopper.post(f"h{t % n}", Hop(t, message.hops, n)) for t in range(message.tokens)], state + 1


class Hopper(Entity[str, Hop, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Hop, state: int) -> tuple[Outbox, int]:
        if message.left == 0:
            return [Sink.post("sink", Done(message.token))], state + 1
        return [Hopper.post(f"h{next_hopper(message)}", Hop(message.token, message.left - 1, message.entities))], state + 1


def next_hopper(message: Hop) -> int:
    # Where the next hop goes: a fixed spread over the entities, different per token and hop.
    return (message.token * 7919 + message.left * 104729) % message.entities


class Sink(Entity[str, Done, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Done, state: int) -> tuple[Outbox, int]:
        return [], state + 1


@attrs.frozen
class Bump: ...


class Counter(Entity[str, Bump, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Bump, state: int) -> tuple[Outbox, int]:
        return [], state + 1


class App(Ecosystem[Spawner | Hopper | Sink | Counter]): ...


# -- child processes ------------------------------------------------------------------------


def run_node(dsn: str, namespace: str, workers: int) -> None:
    from pachyderm_typed.ecosystems import Postgres

    with Postgres(App, dsn, namespace=namespace, workers=workers) as world:
        print("ready", flush=True)
        sys.stdin.read()  # run until the driver closes our stdin
        print(f"processed {world.processed}", flush=True)


def run_raw(dsn: str, table: str, rows: int, seconds: float, start_at: float) -> None:
    import psycopg

    rng = random.Random()
    with psycopg.connect(dsn) as conn:
        print("ready", flush=True)
        while time.time() < start_at:
            time.sleep(0.001)
        count = 0
        deadline = time.perf_counter() + seconds
        select = sql.SQL("SELECT v FROM {} WHERE k = %s FOR UPDATE").format(sql.Identifier(table))
        update = sql.SQL("UPDATE {} SET v = v + 1 WHERE k = %s").format(sql.Identifier(table))
        while time.perf_counter() < deadline:
            k = rng.randrange(rows)
            conn.execute(select, (k,))
            conn.execute(update, (k,))
            conn.commit()
            count += 1
    print(f"count {count}", flush=True)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def wait_line(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited (code {proc.wait()}) before printing {prefix!r}")
        if line.startswith(prefix):
            return line.strip()


# -- measurements ---------------------------------------------------------------------------


def raw_rate(dsn: str, processes: int, seconds: float) -> float:
    import psycopg

    table = f"bench_raw_{uuid.uuid4().hex[:8]}"
    rows = 10_000
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (k int PRIMARY KEY, v bigint NOT NULL)").format(sql.Identifier(table)))
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT g, 0 FROM generate_series(0, %s) g").format(sql.Identifier(table)), (rows - 1,)
        )
    try:
        start_at = time.time() + 1.0 + 0.3 * processes
        procs = [spawn("--raw", dsn, table, str(rows), str(seconds), str(start_at)) for _ in range(processes)]
        for proc in procs:
            wait_line(proc, "ready")
        total = sum(int(wait_line(proc, "count").split()[1]) for proc in procs)
        for proc in procs:
            proc.wait()
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return total / seconds


def pachyderm_rate(
    dsn: str, nodes: int, tokens: int, hops: int, entities: int, workers: int = 1
) -> tuple[float, int, float, list[int]]:
    from pachyderm_typed.ecosystems import Postgres

    namespace = f"bench_{uuid.uuid4().hex[:10]}"
    driver = Postgres(App, dsn, namespace=namespace, workers=0)
    procs: list[subprocess.Popen[str]] = []
    try:
        procs = [spawn("--node", dsn, namespace, str(workers)) for _ in range(nodes)]
        for proc in procs:
            wait_line(proc, "ready")
        with driver.follow(Sink.address("sink")) as sink:
            started = time.perf_counter()
            driver.send(Spawner.post("spawner", Start(tokens, hops, entities)))
            for state in sink:
                if state >= tokens:
                    break
            elapsed = time.perf_counter() - started
        shares = []
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            shares.append(int(wait_line(proc, "processed").split()[1]))
            proc.wait()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        driver.close()
        Postgres.drop_namespace(dsn, namespace)
    activations = 1 + tokens * (hops + 1) + tokens
    return activations / elapsed, activations, elapsed, shares


def send_sync_latency(dsn: str, calls: int) -> tuple[float, float]:
    from pachyderm_typed.ecosystems import Postgres

    namespace = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        with Postgres(App, dsn, namespace=namespace) as world:
            for n in range(50):  # warm up connections and prepared statements
                world.send_sync(Counter.post(f"c{n % 10}", Bump()))
            samples = []
            for n in range(calls):
                begin = time.perf_counter()
                world.send_sync(Counter.post(f"c{n % 100}", Bump()))
                samples.append(time.perf_counter() - begin)
    finally:
        Postgres.drop_namespace(dsn, namespace)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def raw_latency(dsn: str, calls: int) -> float:
    import psycopg

    table = f"bench_raw_{uuid.uuid4().hex[:8]}"
    samples = []
    select = sql.SQL("SELECT v FROM {} WHERE k = %s FOR UPDATE").format(sql.Identifier(table))
    update = sql.SQL("UPDATE {} SET v = v + 1 WHERE k = %s").format(sql.Identifier(table))
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(sql.SQL("CREATE TABLE {} (k int PRIMARY KEY, v bigint NOT NULL)").format(sql.Identifier(table)))
        setup.execute(sql.SQL("INSERT INTO {} SELECT g, 0 FROM generate_series(0, 99) g").format(sql.Identifier(table)))
    try:
        with psycopg.connect(dsn) as conn:
            for n in range(calls + 50):
                begin = time.perf_counter()
                conn.execute(select, (n % 100,))
                conn.execute(update, (n % 100,))
                conn.commit()
                if n >= 50:
                    samples.append(time.perf_counter() - begin)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--hops", type=int, default=9)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="worker threads per node")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each raw measurement")
    parser.add_argument("--calls", type=int, default=1000, help="send_sync calls for the latency")
    args = parser.parse_args()

    print(f"PostgreSQL at {args.dsn.rpartition('@')[2]}; {os.cpu_count()} CPUs; "
          f"{args.tokens} tokens x {args.hops + 1} hops over {args.entities} entities; "
          f"{args.workers} worker thread(s) per node")
    rows = []
    for nodes in (1, 4):
        raw = raw_rate(args.dsn, nodes, args.seconds)
        rate, activations, elapsed, shares = pachyderm_rate(
            args.dsn, nodes, args.tokens, args.hops, args.entities, args.workers
        )
        rows.append((nodes, raw, rate, activations, elapsed, shares))
    print()
    print(f"{'nodes':>5}  {'raw lock/update/commit tx/s':>28}  {'activations/s':>14}  {'ratio':>6}  "
          f"{'activations':>11}  {'seconds':>7}  per node")
    for nodes, raw, rate, activations, elapsed, shares in rows:
        print(f"{nodes:>5}  {raw:>28,.0f}  {rate:>14,.0f}  {rate / raw:>5.1f}x  {activations:>11,}  "
              f"{elapsed:>7.2f}  {shares}")
    median, p99 = send_sync_latency(args.dsn, args.calls)
    raw_median = raw_latency(args.dsn, args.calls)
    print()
    print(f"send_sync latency from an idle node ({args.calls} calls): median {median * 1e3:.2f} ms, "
          f"p99 {p99 * 1e3:.2f} ms (raw lock/update/commit transaction median {raw_median * 1e3:.2f} ms, "
          f"ratio {median / raw_median:.1f}x)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--node":
        run_node(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--raw":
        run_raw(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
    else:
        main()
