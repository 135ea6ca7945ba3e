"""The README's counter on LocalDisk: run it twice and the count goes on.

    python examples/counter_disk.py [PATH]      (PATH defaults to pachyderm.db)
"""

from __future__ import annotations

import sys

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox
from pachyderm_typed.ecosystems import LocalDisk


@attrs.frozen
class Increment:
    by: int = 1


class Counter(Entity[str, Increment, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state + message.by


class App(Ecosystem[Counter]): ...


def main(path: str) -> None:
    with LocalDisk(App, path) as world:
        count = world.send_sync(Counter.post("my_counter", Increment()))
        print(f"my_counter is at {count} (stored in {path}; run me again and it goes on)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pachyderm.db")
