"""Entities for the LocalDisk fault tests (imported by the child processes and the tests).

Their states stay small however long a test runs, so that commits cost the same in
round 12 as in round 1: instead of keeping every message, an entity keeps per sender
how many messages it applied and the highest sequence number seen, and counts every
arrival that is not above that sender's last one. Each sender numbers its messages
0, 1, 2, ... and FIFO per (sender, receiver) holds, so "n applied, last n - 1, no
anomaly" means each of 0..n-1 was applied exactly once.
"""

from __future__ import annotations

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox

HUBS = 4
SINKS = 3


@attrs.frozen
class Note:
    """Message ``seq`` from ``sender``; a hub forwards ``fanout`` notes carrying ``pad``."""

    sender: str
    seq: int
    fanout: int = 0
    pad: str = ""


@attrs.frozen
class Tally:
    name: str
    marks: dict[str, tuple[int, int]] = attrs.field(factory=dict)  # sender -> (applied, last seq)
    anomalies: int = 0  # arrivals not above their sender's last seq: a duplicate or a FIFO break
    forwarded: int = 0  # notes forwarded so far: the next forwarded note's seq

    def mark(self, sender: str) -> tuple[int, int]:
        return self.marks.get(sender, (0, -1))

    def add(self, note: Note, forwarded: int = 0) -> Tally:
        count, last = self.mark(note.sender)
        marks = dict(self.marks)
        marks[note.sender] = (count + 1, max(last, note.seq))
        return Tally(self.name, marks, self.anomalies + (note.seq <= last), self.forwarded + forwarded)


class Hub(Entity[str, Note, Tally]):
    """Applies notes from callers; forwards note number ``k`` of its own to sink ``k % SINKS``."""

    def init(self, entity_id: str) -> Tally:
        return Tally(entity_id)

    def activate(self, message: Note, state: Tally) -> tuple[Outbox, Tally]:
        first = state.forwarded
        outbox = [
            Sink.post(f"s{k % SINKS}", Note(state.name, k, pad=message.pad))
            for k in range(first, first + message.fanout)
        ]
        return outbox, state.add(message, forwarded=message.fanout)


class Sink(Entity[str, Note, Tally]):
    def init(self, entity_id: str) -> Tally:
        return Tally(entity_id)

    def activate(self, message: Note, state: Tally) -> tuple[Outbox, Tally]:
        return [], state.add(message)


@attrs.frozen
class Put:
    key: str  # the blob's own id, by convention: it names the report
    data: str


class Blob(Entity[str, Put, str]):
    """Holds one (large) string, and reports each write to sink ``s0`` as note 0 of ``key``."""

    def init(self, entity_id: str) -> str:
        return ""

    def activate(self, message: Put, state: str) -> tuple[Outbox, str]:
        return [Sink.post("s0", Note(message.key, 0))], message.data


class Faults(Ecosystem[Hub | Sink | Blob]): ...


# -- state versions: the same stored kind written by v1 code, then read by v2 code -------


@attrs.frozen
class Bump:
    by: int = 1


@attrs.frozen
class Seed:
    """Ask the seeder to give entity ``v{i}`` the value ``i``, for i < count."""

    count: int


class VersionedV1(Entity[str, Bump, int]):
    kind = "Versioned"

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Bump, state: int) -> tuple[Outbox, int]:
        return [], state + message.by


class Seeder(Entity[str, Seed, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Seed, state: int) -> tuple[Outbox, int]:
        return [VersionedV1.post(f"v{i}", Bump(i)) for i in range(message.count)], state + message.count


@attrs.frozen
class Count:
    count: int
    note: str


class VersionedV2(Entity[str, Bump, Count]):
    kind = "Versioned"
    state_version = 2
    upgrades = {1: lambda n: {"count": n, "note": "from v1"}}

    def init(self, entity_id: str) -> Count:
        return Count(0, "new in v2")

    def activate(self, message: Bump, state: Count) -> tuple[Outbox, Count]:
        return [], Count(state.count + message.by, state.note)


class V1(Ecosystem[VersionedV1 | Seeder]): ...


class V2(Ecosystem[VersionedV2]): ...
