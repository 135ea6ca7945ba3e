"""What users get: every result type pinned with assert_type."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from pachyderm_typed import Address, Ecosystem, Envelope, ReplyTo, Subscription
from pachyderm_typed.ecosystems import InMemory
from typecheck.app import App, Clock, Counter, Increment, Ping, PingPong, Pong, Tick


def user_view() -> None:
    world = InMemory(App)
    assert_type(world, InMemory[Counter | PingPong])
    assert_type(Counter.post("c", Increment()), Envelope[Counter, int])
    assert_type(Counter.address("c"), Address[Counter, Increment, int])
    assert_type(Counter.address("c").post(Increment(by=2)), Envelope[Counter, int])
    assert_type(world.send_sync(Counter.post("c", Increment())), int)
    assert_type(world.send_sync(PingPong.post("bob", Pong())), str | None)
    assert_type(world.send(Counter.post("c", Increment())), None)
    assert_type(world.state(Counter.address("c")), int)
    assert_type(world.state(PingPong.address("alice")), str | None)

    updates = world.follow(PingPong.address("alice"))
    assert_type(updates, Subscription[str | None])
    assert_type(updates.state, str | None)
    for state in updates:
        assert_type(state, str | None)
    with world.follow(Counter.address("c")) as counter_updates:
        assert_type(next(iter(counter_updates)), int)
        assert_type(counter_updates.next(timeout=1.0), int)

    # Any address that accepts Pong is a ReplyTo[Pong]; the reply is an envelope.
    reply: ReplyTo[Pong] = PingPong.address("alice")
    world.send(PingPong.post("bob", Ping(reply_to=reply)))
    assert_type(reply.post(Pong()), Envelope[Any, Any])

    # Addresses are values: hashable, comparable, usable as keys.
    seen: dict[Address[Counter, Increment, int], int] = {Counter.address("a"): 1}
    assert Counter.address("a") in seen
    assert sorted([Counter.address("b"), Counter.address("a")])[0] == Counter.address("a")

    # A one-entity ecosystem, written as the alias.
    clocks = InMemory(Ecosystem[Clock])
    assert_type(clocks, InMemory[Clock])
    assert_type(clocks.send_sync(Clock.post(7, Tick())), int)


async def async_view() -> None:
    world = InMemory(App)
    assert_type(await world.asend_sync(Counter.post("c", Increment())), int)
    assert_type(await world.asend(Counter.post("c", Increment())), None)
    async for state in world.follow(Counter.address("c")):
        assert_type(state, int)

