"""Simulation: the ecosystem API, run, and exhaust's exact counts on systems counted by hand.

Counting conventions (see each test's comment): a *world* is (entity states,
multiset of messages in flight); the starting world counts. A *transition* is
one step between worlds (identical messages in flight give one transition).
*Orderings* are the distinct delivery sequences from the start to a quiescent
world.
"""

from __future__ import annotations

import asyncio
from typing import Union

import attrs
import pytest

from pachyderm_typed import ActivationError, Ecosystem, Entity, Outbox, ReplyTo
from pachyderm_typed.errors import SendInsideActivationError, UndeclaredEntityError
from pachyderm_typed.simulation import (
    ActivationFailed,
    Network,
    Simulation,
    StepLimitError,
    UnhashableError,
)
from tests.entities import Counter, Increment


@attrs.frozen
class Relay:
    """Forward ``by`` to a counter, through ``hops`` more relays."""

    to: ReplyTo[Increment]
    by: int
    hops: int = 0


class Forwarder(Entity[str, Relay, int]):
    """Counts what it forwarded."""

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Relay, state: int) -> tuple[Outbox, int]:
        if message.hops:
            return [Forwarder.post(self_next(message), attrs.evolve(message, hops=message.hops - 1))], state + 1
        return [message.to.post(Increment(message.by))], state + 1


def self_next(message: Relay) -> str:
    return f"hop{message.hops}"


@attrs.frozen
class Boom:
    """Raise when the count is ``when``."""

    when: int


class Fragile(Entity[str, Union[Increment, Boom], int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment | Boom, state: int) -> tuple[Outbox, int]:
        if isinstance(message, Boom):
            if state == message.when:
                raise ValueError(f"boom at {state}")
            return [], state
        return [], state + message.by


@attrs.frozen
class Ping:
    reply_to: ReplyTo[Ping]


class Echo(Entity[str, Ping, None]):
    """Answers every ping with a ping: never quiescent."""

    def activate(self, message: Ping, state: None) -> tuple[Outbox, None]:
        return [message.reply_to.post(Ping(Echo.address("me")))], None


class Listy(Entity[str, Increment, list[int]]):
    def init(self, entity_id: str) -> list[int]:
        return []

    def activate(self, message: Increment, state: list[int]) -> tuple[Outbox, list[int]]:
        return [], [*state, message.by]


class Sender(Entity[str, Increment, int]):
    """Calls send from inside activate: a bug the runtime must catch."""

    sim: Simulation[object] | None = None

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        assert Sender.sim is not None
        Sender.sim.send(Counter.post("x", Increment()))
        return [], state


class App(Ecosystem[Counter | Forwarder | Fragile | Echo]): ...


class ListApp(Ecosystem[Listy]): ...


A = Counter.address("a")
B = Counter.address("b")


@pytest.fixture
def sim() -> Simulation[Counter | Forwarder | Fragile | Echo]:
    return Simulation(App)


# -- exhaust: exact counts ----------------------------------------------------------


def test_two_counters_one_message_each(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # start {a+1, b+1}; a first -> (a=1 | b+1); b first -> (b=1 | a+1); then (a=1, b=1 | -).
    found = sim.exhaust([A.post(Increment()), B.post(Increment())])
    assert (found.worlds, found.transitions, found.orderings, found.depth) == (4, 4, 2, 2)
    assert found.complete and found.ok
    (outcome,) = found.outcomes
    assert (outcome.state(A), outcome.state(B)) == (1, 1)
    assert outcome.states == {A: 1, B: 1}
    assert len(outcome.trace) == 2


def test_identical_messages_are_one_choice(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # {+1, +1} is a multiset: delivering either copy is the same transition. 0 -> 1 -> 2.
    found = sim.exhaust([A.post(Increment()), A.post(Increment())])
    assert (found.worlds, found.transitions, found.orderings) == (3, 2, 1)
    assert [o.state(A) for o in found.outcomes] == [2]


def test_different_orders_same_state_are_deduplicated(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # {+1, +2}: 0 -> 1 -> 3 and 0 -> 2 -> 3 meet in one world.
    found = sim.exhaust([A.post(Increment(1)), A.post(Increment(2))])
    assert (found.worlds, found.transitions, found.orderings) == (4, 4, 2)
    assert [o.state(A) for o in found.outcomes] == [3]


def test_three_independent_messages(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # Three counters, one message each: a world is the subset delivered, 2^3 = 8 worlds;
    # transitions = sum over subsets of the undelivered = 3 * 2^2 = 12; orderings 3! = 6.
    c = Counter.address("c")
    found = sim.exhaust([A.post(Increment()), B.post(Increment()), c.post(Increment())])
    assert (found.worlds, found.transitions, found.orderings, found.depth) == (8, 12, 6, 3)


def test_cascade_through_relays(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # r+ -> hop1 -> a: a single chain, one ordering, every world on it: 4 worlds, 3 transitions.
    found = sim.exhaust([Forwarder.post("r", Relay(A, 5, hops=1))])
    assert (found.worlds, found.transitions, found.orderings) == (4, 3, 1)
    (outcome,) = found.outcomes
    assert outcome.state(A) == 5
    assert outcome.state(Forwarder.address("r")) == 1
    assert outcome.state(Forwarder.address("hop1")) == 1
    assert [address for address, _ in outcome.processed] == [
        Forwarder.address("r"), Forwarder.address("hop1"), A,
    ]


def test_lossy_counter(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # {+1, +2}, each may be delivered or dropped. Worlds: (0|+1+2), (1|+2), (2|+1), (0|+2), (0|+1),
    # (3|), (1|), (2|), (0|) = 9. Transitions: 4 from the start, 2 from each of the 4 middle = 12.
    # Orderings: 4 first steps x 2 second steps = 8. Outcomes 0, 1, 2, 3: a lossy counter loses counts.
    found = sim.exhaust([A.post(Increment(1)), A.post(Increment(2))], network=Network.lossy())
    assert (found.worlds, found.transitions, found.orderings) == (9, 12, 8)
    assert sorted(o.state(A) for o in found.outcomes) == [0, 1, 2, 3]
    dropped_both = next(o for o in found.outcomes if o.state(A) == 0)
    assert [step.kind for step in dropped_both.trace] == ["drop", "drop"]
    assert dropped_both.processed == ()


def test_duplicating_counter(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # One +1 that may be delivered once more: (0|m'), (1|), (1|m), (2|) = 4 worlds, 3 transitions.
    found = sim.exhaust([A.post(Increment())], network=Network.duplicating())
    assert (found.worlds, found.transitions, found.orderings) == (4, 3, 2)
    assert sorted(o.state(A) for o in found.outcomes) == [1, 2]
    twice = next(o for o in found.outcomes if o.state(A) == 2)
    assert [step.kind for step in twice.trace] == ["duplicate", "deliver"]
    assert twice.processed == ((A, Increment()), (A, Increment()))
    # Two extra copies: 6 worlds, outcomes 1, 2, 3.
    found = sim.exhaust([A.post(Increment())], network=Network.duplicating(2))
    assert (found.worlds, found.transitions, found.orderings) == (6, 5, 3)
    assert sorted(o.state(A) for o in found.outcomes) == [1, 2, 3]


def test_fifo_network_keeps_the_order_per_sender_and_receiver(
    sim: Simulation[Counter | Forwarder | Fragile | Echo],
) -> None:
    # From one sender to one counter, in order: a single path 0 -> 1 -> 3.
    found = sim.exhaust([A.post(Increment(1)), A.post(Increment(2))], network=Network.fifo())
    assert (found.worlds, found.transitions, found.orderings) == (3, 2, 1)
    (outcome,) = found.outcomes
    assert outcome.processed == ((A, Increment(1)), (A, Increment(2)))
    # Two relays feeding one counter are two channels: they interleave freely.
    # r1, r2 first (2 orders), then the two increments (2 orders), or interleaved: 6 orderings
    # = 4!/(2!2!) arrangements of (r1 before its +1) and (r2 before its +2).
    relays = [Forwarder.post("r1", Relay(A, 1)), Forwarder.post("r2", Relay(A, 2))]
    found = sim.exhaust(relays, network=Network.fifo())
    assert found.orderings == 6
    assert [o.state(A) for o in found.outcomes] == [3]


def test_a_system_that_never_quiesces(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    # Echo ping-pongs forever between two stateless entities: 2 worlds in a cycle, no outcome.
    found = sim.exhaust([Echo.post("you", Ping(Echo.address("me")))])
    assert (found.worlds, len(found.outcomes)) == (2, 0)
    assert found.complete
    assert found.orderings is None  # infinitely many


# -- limits ---------------------------------------------------------------------------


def test_max_depth_is_reported(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    found = sim.exhaust([A.post(Increment()), B.post(Increment())], max_depth=1)
    assert found.worlds == 3 and found.outcomes == ()
    assert found.stopped_by is not None and "max_depth=1" in found.stopped_by
    assert not found.complete and not found.ok
    assert found.orderings is None
    assert "INCOMPLETE" in found.summary()
    # A depth limit that only cuts quiescent worlds is no limit.
    found = sim.exhaust([A.post(Increment()), B.post(Increment())], max_depth=2)
    assert found.complete and len(found.outcomes) == 1


def test_max_worlds_is_reported(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    found = sim.exhaust([A.post(Increment()), B.post(Increment())], max_worlds=2)
    assert found.worlds == 2
    assert found.stopped_by == "max_worlds=2"
    with pytest.raises(AssertionError, match="INCOMPLETE: stopped by max_worlds=2"):
        found.check()


def test_limits_are_validated(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    with pytest.raises(ValueError, match="max_depth must be a positive int"):
        sim.exhaust([A.post(Increment())], max_depth=0)


# -- run ------------------------------------------------------------------------------


def test_run_delivers_in_fifo_order_to_quiescence(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    world = sim.run([Forwarder.post("r", Relay(A, 2, hops=1)), A.post(Increment(10))])
    assert world.state(A) == 12
    assert world.quiescent
    # FIFO: both outside envelopes first, then the cascade in the order it was sent.
    assert world.processed == (
        (Forwarder.address("r"), Relay(A, 2, hops=1)),
        (A, Increment(10)),
        (Forwarder.address("hop1"), Relay(A, 2, hops=0)),
        (A, Increment(2)),
    )
    assert world.state(B) == 0  # never ran: init(id)


def test_run_with_max_steps_reports_what_is_in_flight(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    world = sim.run([Forwarder.post("r", Relay(A, 2, hops=1))], max_steps=1)
    assert not world.quiescent
    assert [(e.address, e.message) for e in world.in_flight] == [(Forwarder.address("hop1"), Relay(A, 2, hops=0))]
    assert world.state(A) == 0


def test_run_and_exhaust_start_from_the_current_states_and_leave_them(
    sim: Simulation[Counter | Forwarder | Fragile | Echo],
) -> None:
    assert sim.send_sync(A.post(Increment(5))) == 5
    assert sim.run([A.post(Increment())]).state(A) == 6
    assert [o.state(A) for o in sim.exhaust([A.post(Increment())]).outcomes] == [6]
    assert sim.state(A) == 5


def test_run_raises_with_full_history_and_trace(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    f = Fragile.address("f")
    sim.send(f.post(Increment(1)))  # before the run: part of the entity's history too
    with pytest.raises(ActivationFailed) as caught:
        sim.run([f.post(Increment(1)), f.post(Boom(2)), f.post(Increment(1))])
    error = caught.value
    assert isinstance(error, ActivationError)
    assert error.address == f and error.message == Boom(2) and error.state == 2
    assert error.history == (Increment(1), Increment(1))
    assert [step.message for step in error.trace] == [Increment(1), Boom(2)]
    assert [(e.address, e.message) for e in error.trace.in_flight] == [(f, Increment(1))]
    text = str(error)
    assert "ValueError: boom at 2" in text and "Trace that led there" in text and "FAILED" in text


def test_run_can_record_failures_and_go_on(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    f = Fragile.address("f")
    world = sim.run([f.post(Boom(0)), f.post(Increment(1))], on_error="record")
    assert world.state(f) == 1
    assert world.trace[0].error is not None and world.trace[1].error is None


# -- failures during exhaust ----------------------------------------------------------


def test_exhaust_reports_a_failing_activation_with_its_shortest_trace_and_history(
    sim: Simulation[Counter | Forwarder | Fragile | Echo],
) -> None:
    f = Fragile.address("f")
    found = sim.exhaust([f.post(Increment(1)), f.post(Increment(1)), f.post(Boom(2))])
    (failure,) = found.failures
    assert failure.error.message == Boom(2) and failure.error.state == 2
    assert failure.error.history == (Increment(1), Increment(1))
    assert [step.message for step in failure.trace] == [Increment(1), Increment(1), Boom(2)]
    assert failure.trace[-1].error is failure.error
    assert not found.ok
    with pytest.raises(AssertionError, match="boom at 2"):
        found.check()
    # The entity keeps its state and the search goes on: the outcomes are still there.
    assert [o.state(f) for o in found.outcomes] == [2]


# -- hashability ------------------------------------------------------------------------


def test_unhashable_state_is_a_clear_error() -> None:
    sim = Simulation(ListApp)
    with pytest.raises(UnhashableError, match=r"Listy\('l'\) has initial state \[\] of type list"):
        sim.exhaust([Listy.post("l", Increment())])
    with pytest.raises(UnhashableError, match=r"a message to Counter\('a'\) is Increment\(by=\[1\]\)"):
        Simulation(App).exhaust([A.post(Increment([1]))])  # type: ignore[arg-type]
    # run needs no hashing
    assert sim.run([Listy.post("l", Increment())]).state(Listy.address("l")) == [1]


# -- the ecosystem API ------------------------------------------------------------------


def test_send_sync_runs_to_quiescence_and_returns_its_own_new_state(
    sim: Simulation[Counter | Forwarder | Fragile | Echo],
) -> None:
    assert sim.send_sync(Forwarder.post("r", Relay(A, 3, hops=1))) == 1
    assert sim.state(A) == 3  # the cascade ran before send_sync returned
    assert sim.state(Forwarder.address("hop1")) == 1
    sim.send(A.post(Increment()))
    assert sim.state(A) == 4


def test_follow_sees_every_state(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    with sim.follow(A) as updates:
        assert updates.state == 0
        sim.send(A.post(Increment()))
        sim.send(Forwarder.post("r", Relay(A, 2)))
        assert updates.next(timeout=0) == 1
        assert updates.next(timeout=0) == 3


def test_send_sync_raises_activation_error_with_full_history(
    sim: Simulation[Counter | Forwarder | Fragile | Echo],
) -> None:
    f = Fragile.address("f")
    for _ in range(30):  # more than InMemory keeps: the simulation keeps everything
        sim.send(f.post(Increment(0)))
    with pytest.raises(ActivationError) as caught:
        sim.send_sync(f.post(Boom(0)))
    assert len(caught.value.history) == 30
    assert sim.state(f) == 0


def test_async_twins_run_inline(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    async def main() -> int:
        await sim.asend(A.post(Increment()))
        return await sim.asend_sync(A.post(Increment()))

    assert asyncio.run(main()) == 2


def test_a_send_that_never_quiesces_hits_the_step_limit() -> None:
    sim = Simulation(App, max_steps=100)
    with pytest.raises(StepLimitError, match="without becoming quiescent"):
        sim.send(Echo.post("you", Ping(Echo.address("me"))))


def test_send_inside_activate_is_rejected() -> None:
    class SendApp(Ecosystem[Sender | Counter]): ...

    sim = Simulation(SendApp)
    Sender.sim = sim  # type: ignore[assignment]
    try:
        with pytest.raises(ActivationError) as caught:
            sim.send_sync(Sender.post("s", Increment()))
        assert isinstance(caught.value.__cause__, SendInsideActivationError)
    finally:
        Sender.sim = None


def test_envelopes_are_checked(sim: Simulation[Counter | Forwarder | Fragile | Echo]) -> None:
    class Other(Entity[str, Increment, None]):
        def activate(self, message: Increment, state: None) -> tuple[Outbox, None]:
            return [], None

    with pytest.raises(UndeclaredEntityError):
        sim.exhaust([Other.post("o", Increment())])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="pass a list of envelopes"):
        sim.run(A.post(Increment()))  # type: ignore[arg-type]


def test_context_manager_types_and_closes() -> None:
    with Simulation(App) as sim:
        assert sim.exhaust([A.post(Increment())]).worlds == 2
    assert sim.closed


def test_a_forked_child_gets_a_working_independent_copy() -> None:
    """Unlike the other ecosystems (closed in a forked child), a simulation has no threads,
    files or connections: the parallel checker forks with it, and so may users."""
    import os

    sim = Simulation(App)
    sim.send_sync(Counter.post("c", Increment()))
    answer, tell = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which reports through the pipe
        try:
            os.write(tell, repr(sim.send_sync(Counter.post("c", Increment(by=10)))).encode())
        finally:
            os._exit(0)
    os.close(tell)
    got = os.read(answer, 100)
    os.close(answer)
    os.waitpid(child, 0)
    assert got == b"11"
    assert sim.state(Counter.address("c")) == 1  # the child's copy is its own
