"""The README's counter, shared by the benchmarks (run them as `python bench/NAME.py`)."""

from __future__ import annotations

import attrs

from pachyderm_typed import Entity, Outbox


@attrs.frozen
class Increment:
    by: int = 1


class Counter(Entity[str, Increment, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state + message.by
