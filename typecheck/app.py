"""The application the gate's files use: the README's Counter and PingPong."""

from __future__ import annotations

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox, ReplyTo


@attrs.frozen
class Increment:
    by: int = 1


class Counter(Entity[str, Increment, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state + message.by


@attrs.frozen
class Ping:
    reply_to: ReplyTo[Pong]


@attrs.frozen
class Pong: ...


class PingPong(Entity[str, Ping | Pong, str | None]):
    def activate(self, message: Ping | Pong, state: str | None) -> tuple[Outbox, str | None]:
        match message:
            case Ping(reply_to=reply_to):
                return [reply_to.post(Pong())], "pinged"
            case Pong():
                return [], "ponged"


@attrs.frozen
class Tick: ...


class Clock(Entity[int, Tick, int]):
    """Not declared in App: the gate checks that App's worlds reject it."""

    def init(self, entity_id: int) -> int:
        return 0

    def activate(self, message: Tick, state: int) -> tuple[Outbox, int]:
        return [], state + 1


class App(Ecosystem[Counter | PingPong]): ...
