"""Entity types shared by the behaviour tests (module level, so every store can resolve them)."""

from __future__ import annotations

from collections.abc import Callable

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
class Record:
    sender: str
    n: int


class Recorder(Entity[str, Record, tuple[Record, ...]]):
    """Keeps every message it received, in order."""

    def init(self, entity_id: str) -> tuple[Record, ...]:
        return ()

    def activate(self, message: Record, state: tuple[Record, ...]) -> tuple[Outbox, tuple[Record, ...]]:
        return [], (*state, message)


@attrs.frozen
class Burst:
    """Ask a Fanout to send ``count`` numbered records to ``target`` in one outbox."""

    target: str
    count: int


class Fanout(Entity[str, Burst, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Burst, state: int) -> tuple[Outbox, int]:
        return [Recorder.post(message.target, Record("fanout", n)) for n in range(message.count)], state + 1


@attrs.frozen
class Forward:
    """Add ``by`` to the counter ``to`` (forwarded through the outbox)."""

    to: str
    by: int = 1


class Forwarder(Entity[str, Forward, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Forward, state: int) -> tuple[Outbox, int]:
        return [Counter.post(message.to, Increment(message.by))], state + 1


@attrs.frozen
class Work:
    value: int


@attrs.frozen
class Unlock: ...


@attrs.frozen
class Gate:
    open: bool = False
    total: int = 0


class Picky(Entity[str, Work | Unlock, Gate]):
    """Fails on Work until it has been unlocked; then sums the work."""

    def init(self, entity_id: str) -> Gate:
        return Gate()

    def activate(self, message: Work | Unlock, state: Gate) -> tuple[Outbox, Gate]:
        match message:
            case Unlock():
                return [], attrs.evolve(state, open=True)
            case Work(value=value):
                if not state.open:
                    raise ValueError(f"gate closed, cannot take {value}")
                return [], attrs.evolve(state, total=state.total + value)


# Set by a test to something an activation calls: lets a test make activate misbehave.
HOOK: list[Callable[[], object]] = []


@attrs.frozen
class Poke: ...


class Hooked(Entity[str, Poke, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Poke, state: int) -> tuple[Outbox, int]:
        for hook in HOOK:
            hook()
        return [], state + 1


class App(Ecosystem[Counter | PingPong | Recorder | Fanout | Forwarder | Picky | Hooked]): ...


# Set by a test to something decoding a stored Boxed state calls (its validator).
READ_HOOK: list[Callable[[], object]] = []


def _run_read_hook(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    for hook in READ_HOOK:
        hook()


@attrs.frozen
class Boxed:
    n: int = attrs.field(validator=_run_read_hook)  # runs when a stored state is decoded


class Box(Entity[str, Increment, Boxed]):
    def init(self, entity_id: str) -> Boxed:
        return Boxed(0)

    def activate(self, message: Increment, state: Boxed) -> tuple[Outbox, Boxed]:
        return [], Boxed(state.n + message.by)


@attrs.frozen
class Feed:
    """Add ``by`` to the box ``to`` (through the outbox, so that a worker applies it)."""

    to: str
    by: int = 1


class Feeder(Entity[str, Feed, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Feed, state: int) -> tuple[Outbox, int]:
        return [Box.post(message.to, Increment(message.by))], state + 1


class BoxApp(Ecosystem[Box | Counter | Feeder | Forwarder]): ...


@attrs.frozen
class Nest:
    inner: Nest | None = None


def nest_depth(nest: Nest | None) -> int:
    depth = 0
    while nest is not None:
        depth, nest = depth + 1, nest.inner
    return depth


class Nester(Entity[str, Nest, int]):
    """Remembers how deeply nested the last message was."""

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Nest, state: int) -> tuple[Outbox, int]:
        return [], nest_depth(message)


class OddIds(Entity[str, Increment, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state + message.by


class OddApp(Ecosystem[OddIds | Nester]): ...
