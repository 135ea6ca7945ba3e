"""Parallel search (forked workers) gives the serial results: same counts, outcomes, shortest traces, seeds."""

from __future__ import annotations

from typing import Any, Union

import attrs
import pytest

from pachyderm_typed import Ecosystem, Entity, Outbox
from pachyderm_typed.simulation import Network, Simulation, SimulationError
from pachyderm_typed.simulation._parallel import fork_available
from tests.test_simulation_checker import FULL, SERVER, hello, is_prefix, janken

pytestmark = pytest.mark.skipif(not fork_available(), reason="parallel search forks worker processes")


def summary(found: Any) -> tuple[Any, ...]:
    return (
        found.worlds,
        found.transitions,
        found.depth,
        found.stopped_by,
        {frozenset(o.states.items()) for o in found.outcomes},  # values: equal sets may print in another order
        {v.name: len(v.trace) for v in found.violations},
        {name: (None if t is None else len(t)) for name, t in found.goals.items()},
    )


@pytest.mark.parametrize(
    ("declaration", "envelopes", "network"),
    [
        (janken.Janken, janken.games(3), Network.reordering()),
        (hello.Naive, hello.say(SERVER, proxies=2), Network.lossy()),
        (hello.Naive, [SERVER.post(hello.Chunk(i, t)) for i, t in enumerate(("hello,", " world", "!"))],
         Network.duplicating()),
    ],
)
def test_parallel_exhaust_matches_serial(declaration: Any, envelopes: Any, network: Network) -> None:
    options: dict[str, Any] = {"network": network}
    if declaration is hello.Naive:
        options["invariants"] = {"prefix": is_prefix}
        options["goals"] = {"shouts": lambda w: w.state(SERVER) == "!"}
    serial = Simulation(declaration).exhaust(envelopes, **options)
    parallel = Simulation(declaration).exhaust(envelopes, workers=2, **options)
    assert summary(parallel) == summary(serial)
    for violation in parallel.violations:  # rebuilt by replay: a real trace to a violating world
        assert not is_prefix_text(violation.trace[-1].after)
    assert parallel.orderings is None  # not counted in parallel


def is_prefix_text(text: object) -> bool:
    return isinstance(text, str) and FULL.startswith(text)


def test_parallel_exhaust_outcome_traces_replay() -> None:
    parallel = Simulation(hello.Naive).exhaust(hello.say(SERVER), workers=2)
    for outcome in parallel.outcomes:
        assert outcome.trace[-1].after == outcome.state(SERVER)
        assert len(outcome.trace) == 7  # say, 3 forwards, 3 chunks


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Divide:
    by: int


class Calculator(Entity[str, Union[Add, Divide], int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Add | Divide, state: int) -> tuple[Outbox, int]:
        if isinstance(message, Divide):
            return [], 100 // (state - message.by)
        return [], state + message.n


class Calc(Ecosystem[Calculator]): ...


def test_parallel_exhaust_reports_failures_like_serial() -> None:
    c = Calculator.address("c")
    envelopes = [c.post(Add(1)), c.post(Add(1)), c.post(Divide(2))]
    serial = Simulation(Calc).exhaust(envelopes)
    parallel = Simulation(Calc).exhaust(envelopes, workers=2)
    (failure,) = parallel.failures
    assert failure.error.message == Divide(2) and failure.error.history == (Add(1), Add(1))
    assert [s.message for s in failure.trace] == [s.message for s in serial.failures[0].trace]


def test_parallel_exhaust_limits() -> None:
    found = Simulation(janken.Janken).exhaust(janken.games(3), workers=2, max_depth=3)
    assert found.stopped_by is not None and found.stopped_by.startswith("max_depth=3")
    assert found.worlds == Simulation(janken.Janken).exhaust(janken.games(3), max_depth=3).worlds
    found = Simulation(janken.Janken).exhaust(janken.games(3), workers=2, max_worlds=100)
    assert found.stopped_by is not None and "checked between levels" in found.stopped_by


def test_parallel_exhaust_needs_an_unordered_network() -> None:
    with pytest.raises(SimulationError, match="unordered networks only"):
        Simulation(janken.Janken).exhaust(janken.games(1), workers=2, network=Network.fifo())


def test_parallel_exhaust_says_when_values_cannot_travel() -> None:
    @attrs.frozen
    class Local:  # defined in a function: pickle cannot find it by name
        n: int

    class Holder(Entity[str, Add, object]):
        def activate(self, message: Add, state: object) -> tuple[Outbox, object]:
            return [], Local(message.n)

    class HolderApp(Ecosystem[Holder]): ...

    envelopes = [Holder.post(str(i), Add(i)) for i in range(4)]
    with pytest.raises(SimulationError, match="use workers=1"):
        Simulation(HolderApp).exhaust(envelopes, workers=2)


def test_parallel_explore_matches_serial() -> None:
    options: dict[str, Any] = {"seed": 5, "runs": 400, "invariants": {"prefix": is_prefix}}
    serial = Simulation(hello.Naive).explore(hello.say(SERVER, proxies=2), **options)
    parallel = Simulation(hello.Naive).explore(hello.say(SERVER, proxies=2), workers=2, **options)
    assert summary(parallel) == summary(serial)
    assert [o.processed for o in parallel.outcomes] == [o.processed for o in serial.outcomes]
    assert [(v.seed, v.trace) for v in parallel.violations] == [(v.seed, v.trace) for v in serial.violations]
