"""``python -m tests.helpers_postgres.fork DSN NAMESPACE N``: a node that forks while open.

It sends N increments, forks, and the child tries the inherited node: it prints what
each attempt raised, closes it and exits normally. The parent then sends N more on
the same node and prints "acked 2N".
"""

from __future__ import annotations

import os
import signal
import sys

from pachyderm_typed.ecosystems import Postgres
from tests.entities import App, Counter, Increment


def main(dsn: str, namespace: str, n: int) -> None:
    world = Postgres(App, dsn, namespace=namespace)
    for _ in range(n):
        world.send_sync(Counter.post("c", Increment()))
    child = os.fork()
    if child == 0:
        signal.alarm(20)  # a call that hangs in the child ends it: the parent reports the signal
        for name, attempt in (
            ("send_sync", lambda: world.send_sync(Counter.post("c", Increment()))),
            ("state", lambda: world.state(Counter.address("c"))),
        ):
            try:
                attempt()
                print(f"child {name}: no error", flush=True)
            except Exception as exc:
                print(f"child {name}: {type(exc).__name__}: {exc}", flush=True)
        world.close()
        sys.exit(0)
    _, status = os.waitpid(child, 0)
    print(f"child exit {os.waitstatus_to_exitcode(status)}", flush=True)
    for _ in range(n):
        total = world.send_sync(Counter.post("c", Increment()))
    print(f"acked {total}", flush=True)
    world.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
