"""Three node processes run one ecosystem in PostgreSQL and share its work.

    python examples/postgres_nodes.py [DSN]      # default postgresql://postgres@127.0.0.1:5432/test

The script starts three nodes (this same file with ``--node``), each a process that opens
``Postgres(App, dsn, namespace="example_nodes")`` and processes pending messages. The main
process is a node too (with no workers): it sends one ``Dispatch`` to a Dispatcher, whose
outbox fans out 3000 ``Add`` messages over 600 counters; each counter forwards its amount
to one ``Total``. The main process follows the Total (its states are committed by the other
nodes) and finally prints how many messages each node processed.

State is durable: run it again and the Total goes on from where it was. Look at it with
``python -m pachyderm_typed inspect DSN --namespace example_nodes``; delete it with
``Postgres.drop_namespace(DSN, "example_nodes")``.
"""

from __future__ import annotations

import subprocess
import sys

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox

DSN = "postgresql://postgres@127.0.0.1:5432/test"
NAMESPACE = "example_nodes"
COUNTERS = 600
PER_COUNTER = 5


@attrs.frozen
class Dispatch:
    counters: int
    per_counter: int


@attrs.frozen
class Add:
    amount: int


class Dispatcher(Entity[str, Dispatch, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Dispatch, state: int) -> tuple[Outbox, int]:
        outbox = [
            Counter.post(f"counter-{c}", Add(1))
            for _ in range(message.per_counter)
            for c in range(message.counters)
        ]
        return outbox, state + 1


class Counter(Entity[str, Add, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Add, state: int) -> tuple[Outbox, int]:
        return [Total.post("total", message)], state + message.amount


class Total(Entity[str, Add, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Add, state: int) -> tuple[Outbox, int]:
        return [], state + message.amount


class App(Ecosystem[Dispatcher | Counter | Total]): ...


def node(dsn: str, name: str) -> None:
    """One node: process pending messages until stdin closes."""
    from pachyderm_typed.ecosystems import Postgres

    with Postgres(App, dsn, namespace=NAMESPACE) as world:
        print(f"{name} ready", flush=True)
        sys.stdin.read()
        print(f"{name} processed {world.processed} messages", flush=True)


def main(dsn: str) -> None:
    from pachyderm_typed.ecosystems import Postgres

    with Postgres(App, dsn, namespace=NAMESPACE, workers=0) as here:
        nodes = [
            subprocess.Popen([sys.executable, __file__, "--node", dsn, f"node-{n}"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for n in range(1, 4)
        ]
        try:
            for proc in nodes:
                assert proc.stdout is not None
                print(proc.stdout.readline().strip())
            with here.follow(Total.address("total")) as total:
                goal = total.state + COUNTERS * PER_COUNTER
                print(f"total is {total.state}; dispatching {COUNTERS * PER_COUNTER} messages")
                here.send(Dispatcher.post("dispatcher", Dispatch(COUNTERS, PER_COUNTER)))
                for state in total:  # every state the other nodes commit, in order
                    if state % 1000 == 0 or state == goal:
                        print(f"total is {state}")
                    if state >= goal:
                        break
        finally:
            for proc in nodes:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.close()
                print(proc.stdout.read().strip())
                proc.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--node"]:
        node(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else DSN)
