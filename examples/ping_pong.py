"""Alice pings Bob; Bob replies to whatever address the ping carries."""

from __future__ import annotations

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox, ReplyTo
from pachyderm_typed.ecosystems import InMemory


@attrs.frozen
class Ping:
    reply_to: ReplyTo[Pong]  # any address that accepts Pong


@attrs.frozen
class Pong: ...


class PingPong(Entity[str, Ping | Pong, str | None]):
    def activate(self, message: Ping | Pong, state: str | None) -> tuple[Outbox, str | None]:
        match message:
            case Ping(reply_to=reply_to):
                return [reply_to.post(Pong())], "pinged"
            case Pong():
                return [], "ponged"


class App(Ecosystem[PingPong]): ...


def main() -> None:
    alice, bob = PingPong.address("alice"), PingPong.address("bob")
    with InMemory(App) as world, world.follow(alice) as alice_updates:
        print("alice:", alice_updates.state)
        print("bob:", world.send_sync(bob.post(Ping(reply_to=alice))))
        print("alice:", alice_updates.next(timeout=5))


if __name__ == "__main__":
    main()
