"""One node of a test ecosystem, as a real process.

    python -m tests.helpers_postgres.node DSN NAMESPACE NAME [--workers N] [--batch-entities N]
                                          [--load ACCOUNTS SINKS]

Prints ``ready`` once open. With ``--load``, a thread sends Deposits to random accounts
(alternating ``send`` and ``send_sync``) and prints ``ack SENDER:ACCOUNT:N`` after each call
returns. A ``stop`` line on stdin stops the load (``load stopped`` once the last call returned); end of stdin closes the node, which
then prints ``processed N`` (messages this node processed) and exits.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from typing import Any

from pachyderm_typed.ecosystems import Postgres
from pachyderm_typed.errors import StorageError
from tests.helpers_postgres.app import Account, Deposit, NodesApp

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def load(world: Postgres[Any], name: str, accounts: int, sinks: int, stop: threading.Event) -> None:
    sender = f"{name}-{os.getpid()}"
    rng = random.Random()
    counters: dict[str, int] = {}
    calls = 0
    while not stop.is_set():
        account = f"a{rng.randrange(accounts)}"
        n = counters.get(account, 0)
        counters[account] = n + 1
        envelope = Account.post(account, Deposit(sender, n, account, f"s{rng.randrange(sinks)}"))
        try:
            if calls % 2:
                world.send_sync(envelope)
            else:
                world.send(envelope)
        except StorageError as exc:
            say(f"error {exc}")
            continue
        calls += 1
        say(f"ack {sender}:{account}:{n}")
        time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("namespace")
    parser.add_argument("name")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-entities", type=int, default=0)
    parser.add_argument("--load", type=int, nargs=2, metavar=("ACCOUNTS", "SINKS"))
    args = parser.parse_args()
    if args.batch_entities:
        Postgres.batch_entities = args.batch_entities
    world = Postgres(NodesApp, args.dsn, namespace=args.namespace, workers=args.workers)
    say("ready")
    stop = threading.Event()
    loader = None
    if args.load:
        loader = threading.Thread(target=load, args=(world, args.name, *args.load, stop), daemon=True)
        loader.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.set()
            if loader is not None:
                loader.join()
            say("load stopped")
    stop.set()
    if loader is not None:
        loader.join()
    world.close()
    say(f"processed {world.processed}")


if __name__ == "__main__":
    main()
