"""CALM checks: is a system's outcome independent of what the network does?

The CALM theorem (Consistency As Logical Monotonicity, Hellerstein and Alvaro)
says a program has a deterministic outcome on an unreliable network, without
coordination, exactly when it is *monotone*: learning more never retracts what
it already concluded (sets that grow, maxima that rise, flags that only turn
on). Each check below varies one thing about the network and compares:

``check_deterministic``
    Reordering: any message in flight may be delivered next. Confluent
    systems have exactly one outcome.
``check_loss_tolerant``
    Drops, on top of the ``baseline`` network: every outcome with lost
    messages must be a world the baseline system passes through on its way
    (losing messages may leave the work unfinished, never produce something the
    reliable system could not). On a reordering baseline a drop looks like a
    message delayed forever, so this only bites against an ordered (FIFO) one.
``check_duplicate_tolerant``
    Duplicates: the outcomes must be exactly those of the baseline. A counter
    that adds every message it gets fails; a set union passes.

The baseline defaults to FIFO per (sender, receiver), which is what the real
ecosystems guarantee. All of them run ``exhaust``, so the same limits apply.

CALM is about *outputs*: ``observe`` projects a world onto what its users see
(default: every entity's state), and the checks compare those projections. A
stream that buffers out-of-order chunks in a set but shows only the contiguous
prefix changes state on every chunk, yet its *output* is always a prefix of the
full text; ``observe=lambda w: w.state(server).text`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import attrs

from pachyderm_typed._address import Envelope
from pachyderm_typed.simulation._errors import PropertyViolation
from pachyderm_typed.simulation._model import Model, States
from pachyderm_typed.simulation._network import FIFO, REORDERING, Network
from pachyderm_typed.simulation._properties import WorldView
from pachyderm_typed.simulation._report import Trace
from pachyderm_typed.simulation._results import Exploration, SimulatedWorld
from pachyderm_typed.simulation._simulation import Simulation

E = TypeVar("E")

SHOWN = 3  # counterexamples printed per check

Observe = Callable[[WorldView[E]], Hashable]


class _Observer:
    """Applies ``observe`` (or the identity on entity states) to encoded worlds."""

    def __init__(self, simulation: Simulation[Any], observe: Observe[Any] | None) -> None:
        self.model: Model = simulation._model
        self.observe = observe
        self.view: WorldView[Any] = WorldView(self.model, False)

    def __call__(self, states: States) -> Hashable:
        if self.observe is None:
            return states
        self.view._states = states
        return self.observe(self.view)

    def of(self, world: SimulatedWorld[Any]) -> Hashable:
        assert world._key is not None
        return self(world._key)


@attrs.frozen
class CalmResult:
    """The verdict of one CALM check, with counterexample traces when it fails."""

    name: str
    holds: bool
    explanation: str
    counterexamples: tuple[Trace, ...] = ()

    def check(self) -> None:
        """Raise ``PropertyViolation`` with the report unless the property holds."""
        if not self.holds:
            raise PropertyViolation(str(self))

    def __str__(self) -> str:
        lines = [f"{'holds' if self.holds else 'FAILS'}: {self.name}: {self.explanation}"]
        for n, trace in enumerate(self.counterexamples, 1):
            lines.append(f"  counterexample {n} ({len(trace)} steps):")
            lines.append(trace.format("    "))
        return "\n".join(lines)


def check_deterministic(
    simulation: Simulation[E],
    envelopes: Iterable[Envelope[E, object]],
    *,
    network: Network = REORDERING,
    observe: Observe[E] | None = None,
    max_worlds: int | None = 1_000_000,
) -> CalmResult:
    """One outcome (one observation of the outcomes) under every order the network allows."""
    name = f"deterministic under a {network} network"
    found = simulation.exhaust(envelopes, network=network, max_worlds=max_worlds)
    if (inconclusive := _inconclusive(name, found)) is not None:
        return inconclusive
    observer = _Observer(simulation, observe)
    distinct: dict[Hashable, SimulatedWorld[E]] = {}
    for outcome in found.outcomes:
        distinct.setdefault(observer.of(outcome), outcome)
    count = len(distinct)
    if count == 1:
        return CalmResult(name, True, f"every one of {_orderings(found)} reaches the same outcome: {found.outcomes[0].describe()}")
    shown = list(distinct.values())[:SHOWN]
    listing = "; ".join(f"[{o.describe()}]" for o in shown)
    return _fails(
        name,
        f"{count} distinct outcomes across {_orderings(found)}, so the result depends on delivery order. "
        f"Shortest orderings to the first {len(shown)}: {listing}",
        shown,
    )


def check_loss_tolerant(
    simulation: Simulation[E],
    envelopes: Iterable[Envelope[E, object]],
    *,
    baseline: Network = FIFO,
    observe: Observe[E] | None = None,
    max_worlds: int | None = 1_000_000,
) -> CalmResult:
    """Every outcome with lost messages is (looks like) a world the baseline reliable system passes through."""
    envelopes = list(envelopes)
    lossy = attrs.evolve(baseline, drops=True)
    name = f"loss-tolerant (a {lossy} network against a {baseline} one)"
    reliable = simulation.exhaust(envelopes, network=baseline, max_worlds=max_worlds)
    dropping = simulation.exhaust(envelopes, network=lossy, max_worlds=max_worlds)
    if (inconclusive := _inconclusive(name, reliable, dropping)) is not None:
        return inconclusive
    assert reliable.reachable is not None
    observer = _Observer(simulation, observe)
    reachable = {observer(states) for states in reliable.reachable()}
    foreign = [o for o in dropping.outcomes if observer.of(o) not in reachable]
    if not foreign:
        return CalmResult(
            name,
            True,
            f"all {len(dropping.outcomes)} outcomes with lost messages are worlds the reliable system passes through "
            f"(it reaches {len(reliable.outcomes)} outcome(s) via {len(reachable):,} distinct observations)",
        )
    shown = foreign[:SHOWN]
    return _fails(
        name,
        f"{len(foreign)} of {len(dropping.outcomes)} outcomes with lost messages are worlds the reliable system "
        f"never passes through, e.g. [{shown[0].describe()}]: losing a message produced something new, "
        "so the system is not monotone",
        shown,
    )


def check_duplicate_tolerant(
    simulation: Simulation[E],
    envelopes: Iterable[Envelope[E, object]],
    *,
    copies: int = 1,
    baseline: Network = FIFO,
    observe: Observe[E] | None = None,
    max_worlds: int | None = 1_000_000,
) -> CalmResult:
    """The outcomes (their observations) when messages may be delivered again are exactly the baseline's."""
    envelopes = list(envelopes)
    duplicating = attrs.evolve(baseline, duplicates=copies)
    name = f"duplicate-tolerant (a {duplicating} network against a {baseline} one)"
    reliable = simulation.exhaust(envelopes, network=baseline, max_worlds=max_worlds)
    doubled = simulation.exhaust(envelopes, network=duplicating, max_worlds=max_worlds)
    if (inconclusive := _inconclusive(name, reliable, doubled)) is not None:
        return inconclusive
    observer = _Observer(simulation, observe)
    expected = {observer.of(o) for o in reliable.outcomes}
    extra = [o for o in doubled.outcomes if observer.of(o) not in expected]
    if not extra:
        return CalmResult(name, True, f"the same {len(expected)} outcome(s) with and without duplicates")
    shown = extra[:SHOWN]
    return _fails(
        name,
        f"duplicates add {len(extra)} outcome(s) the reliable system never reaches, e.g. [{shown[0].describe()}] "
        f"(reliable: {_describe_all(reliable.outcomes)}): some activation is not idempotent",
        shown,
    )


def check_calm(
    simulation: Simulation[E],
    envelopes: Iterable[Envelope[E, object]],
    *,
    baseline: Network = FIFO,
    observe: Observe[E] | None = None,
    max_worlds: int | None = 1_000_000,
) -> list[CalmResult]:
    """All three checks; ``all(r.holds for r in results)`` means the system is confluent."""
    envelopes = list(envelopes)
    return [
        check_deterministic(simulation, envelopes, observe=observe, max_worlds=max_worlds),
        check_loss_tolerant(simulation, envelopes, baseline=baseline, observe=observe, max_worlds=max_worlds),
        check_duplicate_tolerant(simulation, envelopes, baseline=baseline, observe=observe, max_worlds=max_worlds),
    ]


def _orderings(found: Exploration[Any]) -> str:
    if found.orderings is None:
        return f"{found.worlds:,} distinct worlds"
    return f"{found.orderings:,} delivery orderings ({found.worlds:,} distinct worlds)"


def _describe_all(outcomes: Sequence[SimulatedWorld[Any]]) -> str:
    return "; ".join(f"[{o.describe()}]" for o in outcomes[:SHOWN]) + (" ..." if len(outcomes) > SHOWN else "")


def _fails(name: str, explanation: str, shown: Sequence[SimulatedWorld[Any]]) -> CalmResult:
    """The property does not hold: ``shown`` are the counterexamples (their traces)."""
    return CalmResult(name, False, explanation, tuple(o.trace for o in shown))


def _inconclusive(name: str, *searches: Exploration[Any]) -> CalmResult | None:
    """The verdict when a limit cut one of ``searches`` short (``None`` when all are complete)."""
    for found in searches:
        if not found.complete:
            return CalmResult(
                name, False, f"inconclusive: the search was stopped by {found.stopped_by}; raise max_worlds to decide"
            )
    return None
