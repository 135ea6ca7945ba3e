"""The counter from the README: run it twice and it remembers (LocalDisk), or once in memory."""

from __future__ import annotations

import sys

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox
from pachyderm_typed.ecosystems import InMemory


@attrs.frozen
class Increment:
    by: int = 1


class Counter(Entity[str, Increment, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state + message.by


class App(Ecosystem[Counter]): ...


def main() -> None:
    with InMemory(App) as world:
        print(world.send_sync(Counter.post("my_counter", Increment())))
        with world.follow(Counter.address("my_counter")) as updates:
            print("following, state now", updates.state)
            world.send(Counter.post("my_counter", Increment(by=2)))
            print("next state", next(iter(updates)))


if __name__ == "__main__":
    main()
    sys.exit(0)
