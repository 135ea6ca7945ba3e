"""Every marked line must be rejected by mypy --strict with the named error code."""

from __future__ import annotations

from pachyderm_typed import Address, Envelope, Outbox, ReplyTo
from pachyderm_typed.ecosystems import InMemory
from typecheck.app import App, Clock, Counter, Increment, Ping, PingPong, Pong, Tick


def misuse() -> None:
    world = InMemory(App)

    # wrong message type to post, on the entity type and on an address
    Counter.post("c", Pong())  # E: arg-type
    Counter.address("c").post(Tick())  # E: arg-type
    PingPong.post("bob", Increment())  # E: arg-type

    # wrong id type
    Counter.post(1, Increment())  # E: arg-type
    Clock.address("seven")  # E: arg-type

    # an entity type the ecosystem does not declare
    world.send(Clock.post(1, Tick()))  # E: arg-type
    world.send_sync(Clock.post(1, Tick()))  # E: arg-type
    world.follow(Clock.address(1))  # E: arg-type
    world.state(Clock.address(1))  # E: arg-type

    # a reply address that cannot take the reply
    Ping(reply_to=Counter.address("c"))  # E: arg-type
    reply: ReplyTo[Pong] = Clock.address(1)  # E: assignment

    # envelopes and addresses are built only by post / address
    Envelope(Counter.address("c"), Increment())  # E: call-arg
    Address(Counter, "c")  # E: call-arg

    # reading results as the wrong type
    count: str = world.send_sync(Counter.post("c", Increment()))  # E: assignment
    label: int = world.state(PingPong.address("alice"))  # E: assignment
    for state in world.follow(Counter.address("c")):
        text: str = state  # E: assignment


async def async_misuse() -> None:
    world = InMemory(App)
    await world.asend_sync(Clock.post(1, Tick()))  # E: arg-type
    await world.asend(Clock.post(1, Tick()))  # E: arg-type
    wrong: str = await world.asend_sync(Counter.post("c", Increment()))  # E: arg-type


class WrongState(Counter):
    def activate(self, message: Increment, state: int) -> tuple[Outbox, str]:  # E: override
        return [], "a string"


class WrongReturn(Counter):
    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], "a string"  # E: return-value


class WrongMessage(Counter):
    def activate(self, message: Pong, state: int) -> tuple[Outbox, int]:  # E: override
        return [], state


class WrongInit(Counter):
    def init(self, entity_id: str) -> str:  # E: override
        return entity_id


class ReplyWithTheWrongMessage(PingPong):
    def activate(self, message: Ping | Pong, state: str | None) -> tuple[Outbox, str | None]:
        if isinstance(message, Ping):
            return [message.reply_to.post(Increment())], state  # E: arg-type
        return [], state


def misuse_on_other_ecosystems() -> None:
    from pachyderm_typed.ecosystems import LocalDisk, Postgres, Simulation

    disk = LocalDisk(App, "app.db")
    disk.send(Clock.post(1, Tick()))  # E: arg-type
    pg = Postgres(App, "postgresql://localhost/app")
    pg.follow(Clock.address(1))  # E: arg-type
    sim = Simulation(App)
    sim.run([Clock.post(1, Tick())])  # E: list-item
    world = sim.run([Counter.post("c", Increment())])
    world.state(Clock.address(1))  # E: arg-type
    wrong: str = world.state(Counter.address("c"))  # E: assignment
