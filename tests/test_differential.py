"""Every ecosystem agrees with the Simulation on random workloads (Hypothesis).

A workload is a list of sends from one outside sender to entities that count,
forward, fan out, record and reply. The Simulation explores every delivery order
a FIFO-per-(sender, receiver) network allows; the real ecosystem's final states
must equal one of those outcomes (for the confluent parts, the only one).

One world per ecosystem serves every example; each example uses its own ids,
so examples cannot see each other.
"""

from __future__ import annotations

import itertools
from collections import Counter as Tally
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pachyderm_typed import Envelope, Subscription, World
from pachyderm_typed.simulation import Network, Simulation
from tests.conftest import MakeWorld
from tests.entities import (
    App,
    Burst,
    Counter,
    Fanout,
    Forward,
    Forwarder,
    Increment,
    Ping,
    PingPong,
    Record,
    Recorder,
)

WAIT = 30.0
NAMES = st.sampled_from(["a", "b", "c"])

# An operation is a plain tuple so Hypothesis shrinks it to something readable.
OPERATIONS = st.one_of(
    st.tuples(st.just("increment"), NAMES, st.integers(1, 5)),
    st.tuples(st.just("forward"), NAMES, NAMES, st.integers(1, 5)),
    st.tuples(st.just("burst"), NAMES, NAMES, st.integers(1, 3)),
    st.tuples(st.just("record"), NAMES, st.integers(0, 9)),
    st.tuples(st.just("ping"), NAMES, NAMES),
)
WORKLOADS = st.lists(OPERATIONS, min_size=1, max_size=6)

_examples = itertools.count()


def envelopes(workload: list[tuple[Any, ...]], prefix: str) -> list[Envelope[Any, Any]]:
    out: list[Envelope[Any, Any]] = []
    for op, *args in workload:
        if op == "increment":
            out.append(Counter.post(prefix + args[0], Increment(args[1])))
        elif op == "forward":
            out.append(Forwarder.post(prefix + args[0], Forward(prefix + args[1], args[2])))
        elif op == "burst":
            out.append(Fanout.post(prefix + args[0], Burst(prefix + args[1], args[2])))
        elif op == "record":
            out.append(Recorder.post(prefix + args[0], Record("outside", args[1])))
        else:
            out.append(PingPong.post(prefix + args[0], Ping(reply_to=PingPong.address(prefix + args[1]))))
    return out


def run_and_wait(world: World[Any], sends: list[Envelope[Any, Any]], activations: Tally[Any]) -> dict[Any, object]:
    """Send everything, then wait until each entity has committed as many states as it must."""
    followers: dict[Any, Subscription[Any]] = {address: world.follow(address) for address in activations}
    try:
        for envelope in sends:
            world.send(envelope)
        finals: dict[Any, object] = {}
        for address, subscription in followers.items():
            state = subscription.state
            for _ in range(activations[address]):
                state = subscription.next(timeout=WAIT)
            finals[address] = state
        return finals
    finally:
        for subscription in followers.values():
            subscription.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workload=WORKLOADS)
def test_every_ecosystem_reaches_an_outcome_the_simulation_allows(make_world: MakeWorld, workload: list[Any]) -> None:
    prefix = f"x{next(_examples)}-"
    sends = envelopes(workload, prefix)

    exploration = Simulation(App).exhaust(sends, network=Network.fifo(), max_worlds=200_000)
    assert exploration.complete, exploration.summary()
    assert exploration.outcomes, exploration.summary()
    # Every delivery order delivers the same messages, so each entity activates as often in all of them.
    activations = Tally(address for address, _ in exploration.outcomes[0].processed)
    touched = set(activations)

    world = getattr(make_world, "shared", None)
    if world is None:
        world = make_world(App)
        make_world.shared = world  # type: ignore[attr-defined]
    finals = run_and_wait(world, sends, activations)
    for address in touched:
        assert world.state(address) == finals[address], f"{address!r} changed after its last expected activation"

    matching = [o for o in exploration.outcomes if all(o.state(a) == finals[a] for a in touched)]
    assert matching, (
        f"final states {finals} are none of the {len(exploration.outcomes)} outcomes the Simulation allows:\n"
        + "\n".join(o.describe() for o in exploration.outcomes)
    )
