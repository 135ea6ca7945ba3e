"""Entities shared by the multi-process Postgres tests (importable by every node process)."""

from __future__ import annotations

import time

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox


@attrs.frozen
class Deposit:
    """One operation of the crash test: ``sender`` numbers its messages to each account."""

    sender: str
    n: int
    account: str
    sink: str


@attrs.frozen
class Ledger:
    ops: tuple[str, ...] = ()  # "sender:account:n", in the order applied
    last: dict[str, int] = attrs.field(factory=dict)  # highest n applied per sender
    duplicates: int = 0
    out_of_order: int = 0


class Account(Entity[str, Deposit, Ledger]):
    """Applies deposits and forwards each one to a sink (through the outbox)."""

    def init(self, entity_id: str) -> Ledger:
        return Ledger()

    def activate(self, message: Deposit, state: Ledger) -> tuple[Outbox, Ledger]:
        op = f"{message.sender}:{message.account}:{message.n}"
        last = state.last.get(message.sender, -1)
        new = Ledger(
            ops=(*state.ops, op),
            last={**state.last, message.sender: max(last, message.n)},
            duplicates=state.duplicates + (op in state.ops),
            out_of_order=state.out_of_order + (message.n <= last),
        )
        return [Sink.post(message.sink, Forwarded(op, message.account))], new


@attrs.frozen
class Forwarded:
    op: str
    account: str


class Sink(Entity[str, Forwarded, tuple[Forwarded, ...]]):
    def init(self, entity_id: str) -> tuple[Forwarded, ...]:
        return ()

    def activate(self, message: Forwarded, state: tuple[Forwarded, ...]) -> tuple[Outbox, tuple[Forwarded, ...]]:
        return [], (*state, message)


@attrs.frozen
class Spread:
    """Send one Job to each of ``workers`` entities, and ``records`` numbered records to one Log."""

    workers: int
    records: int
    slow_ms: int = 0


@attrs.frozen
class Job:
    slow_ms: int


@attrs.frozen
class Tick: ...


class Spawner(Entity[str, Spread, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Spread, state: int) -> tuple[Outbox, int]:
        jobs = [Worker.post(f"w{i}", Job(message.slow_ms)) for i in range(message.workers)]
        records = [Log.post("log", n) for n in range(message.records)]
        return [*jobs, *records], state + 1


class Worker(Entity[str, Job, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Job, state: int) -> tuple[Outbox, int]:
        if message.slow_ms:
            time.sleep(message.slow_ms / 1000)  # a test double for a costly computation
        return [Tally.post("tally", Tick())], state + 1


class Tally(Entity[str, Tick, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Tick, state: int) -> tuple[Outbox, int]:
        return [], state + 1


class Log(Entity[str, int, tuple[int, ...]]):
    def init(self, entity_id: str) -> tuple[int, ...]:
        return ()

    def activate(self, message: int, state: tuple[int, ...]) -> tuple[Outbox, tuple[int, ...]]:
        return [], (*state, message)


class NodesApp(Ecosystem[Account | Sink | Spawner | Worker | Tally | Log]): ...
