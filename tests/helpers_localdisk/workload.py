"""Entities for the LocalDisk process tests (imported by the child processes and the tests)."""

from __future__ import annotations

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox


@attrs.frozen
class Entry:
    n: int


class Log(Entity[str, Entry, tuple[int, ...]]):
    """Keeps every entry it received, in order: duplicates and gaps are visible."""

    def init(self, entity_id: str) -> tuple[int, ...]:
        return ()

    def activate(self, message: Entry, state: tuple[int, ...]) -> tuple[Outbox, tuple[int, ...]]:
        return [], (*state, message.n)


class Relay(Entity[str, Entry, int]):
    """Forwards each entry to two logs, and counts what it forwarded."""

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Entry, state: int) -> tuple[Outbox, int]:
        return [Log.post("relayed-a", message), Log.post("relayed-b", message)], state + 1


@attrs.frozen
class Spread:
    """Ask a Fan to send ``count`` numbered entries to the log ``target``."""

    target: str
    count: int


class Fan(Entity[str, Spread, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Spread, state: int) -> tuple[Outbox, int]:
        return [Log.post(message.target, Entry(n)) for n in range(message.count)], state + 1


class Work(Ecosystem[Log | Relay | Fan]): ...
