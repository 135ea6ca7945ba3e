"""Properties checked while searching: invariants ("always") and goals ("sometimes").

Both are plain predicates over a :class:`WorldView`, given by name::

    simulation.exhaust(
        envelopes,
        invariants={"never overdrawn": lambda w: w.state(Account.address("a")) >= 0},
        goals={"alice can win": lambda w: w.state(Game.address(1)) == Won("alice")},
    )

An invariant must hold in every world reached (the starting world included);
the first world that breaks it is reported with a shortest trace (exhaust
searches breadth-first). A goal must hold in at least one world; the first
world that meets it is its witness.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed.simulation._model import Flight, Model, States, WorldKey

E = TypeVar("E")
S = TypeVar("S")


class WorldView(Generic[E]):
    """The world a predicate looks at. Read it inside the predicate only: the checker reuses it."""

    # One instance per search, re-pointed at every world: no allocation per world.
    __slots__ = ("_model", "_states", "_flight", "_ordered")

    def __init__(self, model: Model, ordered: bool) -> None:
        self._model = model
        self._ordered = ordered
        self._states: States = ()
        self._flight: Flight = ()

    def state(self, address: Address[E, Any, S]) -> S:
        """The state of the entity at ``address`` in this world (``init(id)`` if it never ran)."""
        return self._model.state_of(self._states, address)  # type: ignore[no-any-return]

    @property
    def in_flight(self) -> tuple[Envelope[E, object], ...]:
        """The messages sent but not yet delivered (nor dropped)."""
        return self._model.decode_flight(self._flight, self._ordered)

    @property
    def quiescent(self) -> bool:
        """True when nothing is in flight: the world is an outcome."""
        return not self._flight

    def __repr__(self) -> str:
        states = ", ".join(f"{a!r}={s!r}" for a, s in self._model.decode_states(self._states).items())
        return f"<WorldView {states or 'all initial'}; {len(self._model.entries(self._flight, self._ordered))} in flight>"


Predicate = Callable[[WorldView[Any]], bool]


class Properties:
    """The invariants and goals of one search, and which of them are still undecided."""

    __slots__ = ("view", "invariants", "goals", "violated", "reached")

    def __init__(self, model: Model, ordered: bool, invariants: Mapping[str, Predicate], goals: Mapping[str, Predicate]) -> None:
        self.view: WorldView[Any] = WorldView(model, ordered)
        self.invariants = dict(invariants)
        self.goals = dict(goals)
        for kind, given in (("invariants", self.invariants), ("goals", self.goals)):
            for name, predicate in given.items():
                if not callable(predicate):
                    raise TypeError(f"{kind}[{name!r}] must be a function of the world, got {predicate!r}")
        self.violated: dict[str, Any] = {}  # name -> where (a world id, or a run)
        self.reached: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        """True while some invariant has not failed yet or some goal is unmet."""
        return bool(self.invariants) or bool(self.goals)

    def check(self, world: WorldKey, where: object) -> None:
        """Evaluate the undecided properties on ``world``; remember ``where`` for each decided one."""
        view = self.view
        view._states, view._flight = world
        for name, predicate in list(self.invariants.items()):
            if not _holds(predicate, view, "invariant", name):
                self.violated[name] = where
                del self.invariants[name]
        for name, predicate in list(self.goals.items()):
            if _holds(predicate, view, "goal", name):
                self.reached[name] = where
                del self.goals[name]


def _holds(predicate: Predicate, view: WorldView[Any], kind: str, name: str) -> bool:
    try:
        return bool(predicate(view))
    except Exception as exc:
        exc.add_note(f"(raised by the {kind} {name!r} on {view!r})")
        raise
