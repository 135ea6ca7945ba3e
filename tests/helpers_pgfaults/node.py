"""One node of a fault test, as a real process, with optional load and commit instrumentation.

    python -m tests.helpers_pgfaults.node DSN NAMESPACE NAME [--app nodes|wallet1|wallet2]
        [--workers N] [--batch-entities N] [--threads N] [--tasks N] [--accounts N] [--sinks N]
        [--commits trace|before|after] [--on worker|caller] [--skip N]

Prints ``ready`` once open.

Load (``--threads``/``--tasks``, app ``nodes``): each thread calls ``send`` and ``send_sync``
alternately, each asyncio task ``asend`` and ``asend_sync``, with Deposits numbered per
(sender, account) (tests/helpers_postgres/app.py). After a call returns the node prints
``ack OP``; if it raised ``DatabaseUnavailableError``, ``fail APPLIED OP`` (APPLIED is
``False`` or ``None``, the error's ``applied``); any other exception, ``error OP ...``.

Commit instrumentation (this process only; the library code is unchanged): every write
transaction of the node (``Postgres._write``, which ends with COMMIT) is observed.
``trace`` prints ``commit WHO`` right before each COMMIT (WHO: ``worker`` or ``caller``), so
the parent can SIGKILL at a random offset from a commit. ``before``/``after``: the
(``--skip`` + 1)-th write transaction of ``--on`` prints ``paused before|after WHO DETAIL``
right before its COMMIT is sent / right after the server acknowledged it, and blocks until
killed. DETAIL is the caller's OP, or ``seqs=...`` (the pending rows a worker consumes).

stdin: ``stop`` stops the load (``load stopped`` once every call returned); end of stdin
closes the node, which prints ``processed N`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import os
import random
import sys
import threading
import time
from typing import Any

import psycopg

from pachyderm_typed import DatabaseUnavailableError, Ecosystem
from pachyderm_typed.ecosystems import Postgres
from tests.helpers_pgfaults.app import WalletApp1, WalletApp2
from tests.helpers_postgres.app import Account, Deposit, NodesApp
from tests.helpers_postgres.node import say

APPS: dict[str, type[Ecosystem[Any]]] = {"nodes": NodesApp, "wallet1": WalletApp1, "wallet2": WalletApp2}

# The Deposit being sent: a ContextVar, so that asyncio.to_thread carries it into the
# thread that runs the transaction, where the commit instrumentation reads it.
current_op: contextvars.ContextVar[str] = contextvars.ContextVar("current_op", default="-")


def _who() -> str:
    return "worker" if threading.current_thread().name.startswith("pachyderm-pg-worker") else "caller"


def instrument(mode: str, on: str, skip: int) -> None:
    real_write = Postgres._write
    real_commit = psycopg.Connection.commit
    local = threading.local()
    count_lock = threading.Lock()
    matching = [0]

    def chosen(who: str) -> bool:
        if mode == "trace" or who != on:
            return False
        with count_lock:
            matching[0] += 1
            return matching[0] == skip + 1

    def detail(batch: Any, who: str) -> str:
        if who == "caller":
            return current_op.get()
        return "seqs=" + ",".join(str(seq) for seq in sorted(batch.consumed))

    def write(self: Postgres[Any], conn: Any, batch: Any) -> None:
        who = _who()
        pause = chosen(who)
        local.pause_before = (batch, who) if pause and mode == "before" else None
        local.writing = True
        try:
            real_write(self, conn, batch)
        finally:
            local.writing = False
        if pause and mode == "after":  # _write returns once the server acknowledged COMMIT
            say(f"paused after {who} {detail(batch, who)}")
            threading.Event().wait()

    def commit(self: Any) -> None:
        if getattr(local, "writing", False):
            if mode == "trace":
                say(f"commit {_who()}")
            elif local.pause_before is not None:
                batch, who = local.pause_before
                say(f"paused before {who} {detail(batch, who)}")
                threading.Event().wait()  # COMMIT is never sent: the transaction stays open
        real_commit(self)

    Postgres._write = write  # type: ignore[method-assign]
    psycopg.Connection.commit = commit  # type: ignore[method-assign]


class Load:
    """Deposits from threads and asyncio tasks, each a sender numbering its own messages."""

    def __init__(self, world: Postgres[Any], name: str, accounts: int, sinks: int) -> None:
        self.world = world
        self.prefix = f"{name}-{os.getpid()}"
        self.accounts = accounts
        self.sinks = sinks
        self.stop = threading.Event()

    def _next(self, sender: str, rng: random.Random, counters: dict[str, int]) -> tuple[str, Any]:
        account = f"a{rng.randrange(self.accounts)}"
        n = counters.get(account, 0)
        counters[account] = n + 1
        op = f"{sender}:{account}:{n}"
        return op, Account.post(account, Deposit(sender, n, account, f"s{rng.randrange(self.sinks)}"))

    @staticmethod
    def _report(op: str, exc: BaseException | None) -> None:
        if exc is None:
            say(f"ack {op}")
        elif isinstance(exc, DatabaseUnavailableError):
            say(f"fail {exc.applied} {op}")
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            say(f"error {op} {type(exc).__name__}: {first}")

    def thread(self, index: int) -> None:
        sender = f"{self.prefix}-t{index}"
        rng = random.Random()
        counters: dict[str, int] = {}
        calls = 0
        while not self.stop.is_set():
            op, envelope = self._next(sender, rng, counters)
            token = current_op.set(op)
            error: BaseException | None = None
            try:
                if calls % 2:
                    self.world.send_sync(envelope)
                else:
                    self.world.send(envelope)
            except Exception as exc:  # noqa: BLE001 - every outcome is reported to the parent
                error = exc
            finally:
                current_op.reset(token)
            self._report(op, error)
            calls += 1
            time.sleep(0.001)  # leave the two CPUs some room for the workers and the server

    async def task(self, index: int) -> None:
        sender = f"{self.prefix}-k{index}"
        rng = random.Random()
        counters: dict[str, int] = {}
        calls = 0
        while not self.stop.is_set():
            op, envelope = self._next(sender, rng, counters)
            current_op.set(op)  # this task's own context
            error: BaseException | None = None
            try:
                if calls % 2:
                    await self.world.asend_sync(envelope)
                else:
                    await self.world.asend(envelope)
            except Exception as exc:  # noqa: BLE001
                error = exc
            self._report(op, error)
            calls += 1
            await asyncio.sleep(0.001)

    def start(self, threads: int, tasks: int) -> list[threading.Thread]:
        started = [threading.Thread(target=self.thread, args=(i,), daemon=True) for i in range(threads)]
        if tasks:
            async def run_tasks() -> None:
                await asyncio.gather(*(self.task(i) for i in range(tasks)))

            started.append(threading.Thread(target=asyncio.run, args=(run_tasks(),), daemon=True))
        for thread in started:
            thread.start()
        return started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("namespace")
    parser.add_argument("name")
    parser.add_argument("--app", choices=sorted(APPS), default="nodes")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-entities", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=0)
    parser.add_argument("--accounts", type=int, default=16)
    parser.add_argument("--sinks", type=int, default=8)
    parser.add_argument("--commits", choices=("trace", "before", "after"))
    parser.add_argument("--on", choices=("worker", "caller"), default="worker")
    parser.add_argument("--skip", type=int, default=0)
    args = parser.parse_args()
    # psycopg warns on stderr about each pipeline cut by a terminated connection: expected here.
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    logging.getLogger("psycopg").propagate = False
    if args.batch_entities:
        Postgres.batch_entities = args.batch_entities
    if args.commits:
        instrument(args.commits, args.on, args.skip)
    world: Postgres[Any] = Postgres(APPS[args.app], args.dsn, namespace=args.namespace, workers=args.workers)
    say("ready")
    load = Load(world, args.name, args.accounts, args.sinks)
    threads = load.start(args.threads, args.tasks)
    for line in sys.stdin:
        if line.strip() == "stop":
            load.stop.set()
            for thread in threads:
                thread.join()
            say("load stopped")
    load.stop.set()
    for thread in threads:
        thread.join()
    world.close()
    say(f"processed {world.processed}")


if __name__ == "__main__":
    main()
