"""What ``run``, ``exhaust`` and ``explore`` return."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, TypeVar

import attrs

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed.errors import ActivationError
from pachyderm_typed.simulation._errors import PropertyViolation
from pachyderm_typed.simulation._model import States
from pachyderm_typed.simulation._network import Network
from pachyderm_typed.simulation._report import Trace

E = TypeVar("E")
S = TypeVar("S")


class SimulatedWorld(Generic[E]):
    """A world the simulation produced: typed state by address, and how it got there.

    ``state(address)`` reads any entity (``init(id)`` if it never ran);
    ``states`` lists the entities not in their initial state; ``trace`` and
    ``processed`` say which deliveries produced it (for an outcome of
    ``exhaust``, a shortest such sequence); ``in_flight`` is what was still
    undelivered (non-empty only when a limit stopped ``run``).
    """

    __slots__ = ("_states", "_initial", "_trace", "in_flight", "_key")

    def __init__(
        self,
        states: Mapping[Address[Any, Any, Any], object],
        initial: Callable[[Address[Any, Any, Any]], object],
        in_flight: tuple[Envelope[E, object], ...],
        trace: Trace | Callable[[], Trace],
        key: States | None = None,
    ) -> None:
        self._states = dict(states)
        self._initial = initial
        self.in_flight = in_flight
        self._trace = trace
        self._key = key  # the encoded states, for comparisons inside one simulation

    def state(self, address: Address[E, Any, S]) -> S:
        """The state of the entity at ``address`` in this world."""
        if address in self._states:
            return self._states[address]  # type: ignore[return-value]
        return self._initial(address)  # type: ignore[return-value]

    @property
    def states(self) -> Mapping[Address[Any, Any, Any], object]:
        """Every entity whose state differs from its initial state."""
        return self._states

    @property
    def trace(self) -> Trace:
        """The steps that led here (built on first use for outcomes of a search)."""
        if not isinstance(self._trace, Trace):
            self._trace = self._trace()
        return self._trace

    @property
    def processed(self) -> tuple[tuple[Address[Any, Any, Any], object], ...]:
        """``(address, message)`` of every delivery that led here, in order."""
        return self.trace.processed

    @property
    def quiescent(self) -> bool:
        return not self.in_flight

    def describe(self) -> str:
        if not self._states:
            return "every entity in its initial state"
        return ", ".join(f"{a!r} = {s!r}" for a, s in sorted(self._states.items(), key=lambda item: item[0]))

    def __repr__(self) -> str:
        extra = f"; {len(self.in_flight)} in flight" if self.in_flight else ""
        return f"<SimulatedWorld {self.describe()}{extra}>"


@attrs.frozen
class Failure:
    """An activation that raised, with the entity's full history (in ``error``) and the trace."""

    error: ActivationError
    trace: Trace
    seed: int | None = None  # explore(): the seed that replays this run

    def __str__(self) -> str:
        text = f"{self.error}\nTrace ({len(self.trace)} steps):\n{self.trace.format('  ')}"
        return text + _replay(self.seed)


@attrs.frozen
class Violation:
    """An invariant broken in some world, with a trace to it (a shortest one from ``exhaust``)."""

    name: str
    trace: Trace
    seed: int | None = None

    def __str__(self) -> str:
        return (
            f"invariant {self.name!r} does not hold after these {len(self.trace)} steps:\n{self.trace.format('  ')}"
            + _replay(self.seed)
        )


def _replay(seed: int | None) -> str:
    if seed is None:
        return ""
    return f"\n  replay this run with: simulation.explore(envelopes, seed={seed}, runs=1, ...same options)"


@attrs.frozen(eq=False)
class Exploration(Generic[E]):
    """What a search found, and how much it covered.

    ``outcomes``: the distinct quiescent worlds (nothing in flight), each with a
    witness trace. ``worlds``: distinct worlds visited (entity states + multiset
    of messages in flight). ``transitions``: steps explored between them.
    ``orderings``: the number of distinct delivery orderings from the start to
    an outcome, which a search without deduplication would have walked.
    ``stopped_by``: why the search is incomplete, or ``None`` if it is complete.
    """

    mode: Literal["exhaust", "explore"]
    network: Network
    outcomes: tuple[SimulatedWorld[E], ...]
    worlds: int
    transitions: int
    depth: int
    stopped_by: str | None
    violations: tuple[Violation, ...]
    goals: Mapping[str, Trace | None]
    failures: tuple[Failure, ...]
    elapsed: float
    runs: int | None = None
    seed: int | None = None
    # Internal: the entity states of every world visited (CALM checks), and the orderings counter.
    reachable: Callable[[], frozenset[States]] | None = attrs.field(default=None, repr=False)
    count_orderings: Callable[[], int | None] | None = attrs.field(default=None, repr=False)
    _cache: dict[str, int | None] = attrs.field(factory=dict, repr=False, alias="_cache")

    @property
    def orderings(self) -> int | None:
        """Delivery orderings from the start to an outcome: what a search without deduplication walks.

        Counted during the search when every step goes one level deeper,
        otherwise on first use by a depth-first pass over the worlds found
        (about as long as the search). ``None`` when not countable: the search
        was incomplete, it is a random exploration, or the system can loop forever.
        """
        if "orderings" not in self._cache:
            self._cache["orderings"] = self.count_orderings() if self.count_orderings is not None else None
        return self._cache["orderings"]

    @property
    def complete(self) -> bool:
        """True when no limit cut the search short."""
        return self.stopped_by is None

    @property
    def ok(self) -> bool:
        """Complete, every invariant held, every goal was reached, and no activation raised."""
        return self.complete and not self.violations and not self.failures and all(
            t is not None for t in self.goals.values()
        )

    def check(self) -> None:
        """Raise ``PropertyViolation`` with a readable report unless ``ok``."""
        if not self.ok:
            raise PropertyViolation(self.report())

    def report(self) -> str:
        """The summary, then every violation, unmet goal and failure with its trace."""
        parts = [self.summary()]
        parts.extend(str(v) for v in self.violations)
        parts.extend(f"goal {name!r} was never reached" for name, t in self.goals.items() if t is None)
        parts.extend(str(f) for f in self.failures)
        return "\n\n".join(parts)

    def summary(self) -> str:
        what = "exhaustive search" if self.mode == "exhaust" else f"random exploration ({self.runs} runs from seed {self.seed})"
        per_second = self.worlds if self.mode == "exhaust" else self.transitions
        unit = "worlds/s" if self.mode == "exhaust" else "steps/s"
        rate = f", {per_second / self.elapsed:,.0f} {unit}" if self.elapsed > 0 else ""
        lines = [
            f"{what} over a {self.network} network: {len(self.outcomes)} outcome(s), "
            f"{self.worlds:,} distinct worlds, {self.transitions:,} transitions, depth {self.depth}"
            + (f", {self._cache['orderings']:,} orderings" if self._cache.get("orderings") is not None else "")
            + f" ({self.elapsed:.3f} s{rate})",
            "complete" if self.stopped_by is None else f"INCOMPLETE: stopped by {self.stopped_by}",
        ]
        if self.violations:
            lines.append("violated invariants: " + ", ".join(repr(v.name) for v in self.violations))
        unmet = [name for name, t in self.goals.items() if t is None]
        if unmet:
            lines.append("goals never reached: " + ", ".join(map(repr, unmet)))
        if self.failures:
            lines.append(f"{len(self.failures)} activation(s) raised")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
