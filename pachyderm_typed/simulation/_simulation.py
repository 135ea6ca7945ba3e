"""``Simulation``: the deterministic, in-process ecosystem, and the entry points of the checker.

As an ecosystem it has the same API as the others (``send``, ``send_sync``,
``follow``, ``state``, async twins), but runs everything in the calling thread:
every send runs the world to quiescence before it returns (there is no
background thread). ``send_sync`` returns the state its own activation produced.

``run``, ``exhaust`` and ``explore`` start from the entities' current states
(those the sends above produced; initially every entity is at ``init(id)``)
and never change them: the simulation is a pure data structure you can
explore from, again and again.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._ecosystem import AnyEntity, Ecosystem
from pachyderm_typed._kernel import activating, forbid_inside_activation
from pachyderm_typed._world import ThreadCall, World
from pachyderm_typed.errors import ActivationError, ClosedError
from pachyderm_typed.simulation import _checker
from pachyderm_typed.simulation._errors import ActivationFailed, StepLimitError
from pachyderm_typed.simulation._model import History, Model
from pachyderm_typed.simulation._network import REORDERING, Network
from pachyderm_typed.simulation._properties import WorldView
from pachyderm_typed.simulation._report import Step, Trace
from pachyderm_typed.simulation._results import Exploration, SimulatedWorld

E = TypeVar("E")
S = TypeVar("S")

Predicates = Mapping[str, Callable[[WorldView[E]], bool]]


class Simulation(World[E]):
    """A deterministic ecosystem that can also run, exhaust and sample every delivery order.

    ``Simulation(App)``; ``max_steps`` bounds the deliveries one ``send`` may
    cause (a system that never quiesces raises ``StepLimitError`` instead of
    hanging).
    """

    # No threads, files or connections: a forked child gets a working, independent copy.
    closed_in_forked_children = False

    def __init__(
        self,
        declaration: type[Ecosystem[E]],
        *,
        implementations: Mapping[type[AnyEntity], AnyEntity] | None = None,
        max_steps: int = 1_000_000,
    ) -> None:
        super().__init__(declaration, implementations=implementations, history=0)
        self._history = deque()  # unbounded: a failure shows the entity's full history
        self._max_steps = max_steps
        self._model = Model(self._declaration, self._kernel)
        self._model_lock = threading.RLock()

    def __enter__(self) -> Simulation[E]:
        return self

    # -- the checker ----------------------------------------------------------------

    def run(
        self,
        envelopes: Iterable[Envelope[E, object]],
        *,
        max_steps: int | None = None,
        on_error: Literal["raise", "record"] = "raise",
    ) -> SimulatedWorld[E]:
        """Deliver ``envelopes`` and everything they cause in FIFO order until nothing is in flight.

        ``max_steps`` stops it early (the result's ``in_flight`` then lists what
        was left). An activation that raises stops the run with
        ``ActivationFailed`` (the entity's full history and the trace); with
        ``on_error="record"`` the entity keeps its state, as in the real
        ecosystems, and the run goes on (the failed step's ``error`` is set in the trace).
        """
        forbid_inside_activation("run")
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        queue: deque[Envelope[Any, Any]] = deque(self._accept(envelopes))
        states, base_history = self._snapshot()
        kernel = self._kernel
        by_class = self._declaration.by_class
        received: dict[Address[Any, Any, Any], list[object]] = {}
        steps: list[Step] = []

        def history(address: Address[Any, Any, Any]) -> Sequence[object]:
            return [*base_history(address), *received.get(address, ())]

        initial = self._initial_state
        with activating():
            while queue and (max_steps is None or len(steps) < max_steps):
                envelope = queue.popleft()
                address, message = envelope.address, envelope.message
                spec = by_class[address.entity]
                state = states[address] if address in states else initial(address)
                try:
                    outbox, new_state = kernel.activate(spec, address, message, state, history)
                except ActivationError as error:
                    steps.append(Step("deliver", address, message, state, state, (), error))
                    received.setdefault(address, []).append(message)
                    if on_error == "raise":
                        raise ActivationFailed(error, Trace(tuple(steps), tuple(queue))) from error
                    continue
                received.setdefault(address, []).append(message)
                states[address] = new_state
                queue.extend(outbox)
                steps.append(Step("deliver", address, message, state, new_state, tuple(outbox)))
        changed = {a: s for a, s in states.items() if s != initial(a)}
        return SimulatedWorld(changed, initial, tuple(queue), Trace(tuple(steps), tuple(queue)))

    def exhaust(
        self,
        envelopes: Iterable[Envelope[E, object]],
        *,
        network: Network = REORDERING,
        invariants: Predicates[E] | None = None,
        goals: Predicates[E] | None = None,
        max_depth: int | None = None,
        max_worlds: int | None = 1_000_000,
        workers: int = 1,
    ) -> Exploration[E]:
        """Explore every delivery order the ``network`` allows, breadth-first.

        Worlds are deduplicated by (entity states, multiset of messages in
        flight), so the cost follows distinct worlds, not orderings; states and
        messages must be hashable. Invariants are checked in every world, goals
        looked for; each violation or witness comes with a shortest trace. A
        limit (``max_depth`` steps, ``max_worlds`` worlds) that cuts the search
        short is reported in ``stopped_by``, never silently. ``workers > 1``
        splits the search across processes (see ``pachyderm_typed.simulation``).
        """
        problem = self._problem("exhaust", envelopes, network, invariants, goals)
        with self._model_lock:
            return _checker.exhaust(problem, max_depth=max_depth, max_worlds=max_worlds, workers=workers)

    def explore(
        self,
        envelopes: Iterable[Envelope[E, object]],
        *,
        seed: int = 0,
        runs: int = 100,
        network: Network = REORDERING,
        invariants: Predicates[E] | None = None,
        goals: Predicates[E] | None = None,
        max_steps: int = 10_000,
        workers: int = 1,
    ) -> Exploration[E]:
        """Sample ``runs`` random delivery orders, reproducibly.

        Run ``r`` uses seed ``seed + r``; every failure and violation reports
        its run's seed, and ``explore(envelopes, seed=that_seed, runs=1)``
        replays it step for step.
        """
        problem = self._problem("explore", envelopes, network, invariants, goals)
        with self._model_lock:
            return _checker.explore(problem, seed=seed, runs=runs, max_steps=max_steps, workers=workers)

    # -- helpers ----------------------------------------------------------------------

    def _problem(
        self,
        name: str,
        envelopes: Iterable[Envelope[E, object]],
        network: Network,
        invariants: Predicates[E] | None,
        goals: Predicates[E] | None,
    ) -> _checker.Problem:
        """What ``exhaust`` and ``explore`` search: from the current states, with ``envelopes`` in flight."""
        forbid_inside_activation(name)
        accepted = self._accept(envelopes)
        states, base_history = self._snapshot()
        return _checker.Problem(self._model, states, accepted, network, invariants or {}, goals or {}, base_history)

    def _accept(self, envelopes: Iterable[Envelope[Any, Any]]) -> list[Envelope[Any, Any]]:
        if isinstance(envelopes, Envelope):
            raise TypeError("pass a list of envelopes, e.g. [Counter.post('c', Increment())]")
        accepted = list(envelopes)
        for envelope in accepted:
            self._declaration.check_envelope(envelope)
        return accepted

    def _snapshot(self) -> tuple[dict[Address[Any, Any, Any], object], History]:
        """The current states, and what each entity has received so far (for failure reports)."""
        with self._run_lock:
            self._check_open()
            states = dict(self._states)
            log = tuple(self._history)

        @functools.lru_cache(maxsize=None)
        def base_history(address: Address[Any, Any, Any]) -> Sequence[object]:
            return tuple(message for a, message in log if a == address)

        return states, base_history

    def _initial_state(self, address: Address[Any, Any, Any]) -> object:
        return self._kernel.initial_state(self._declaration.spec_for(address.entity), address)

    # -- the ecosystem: everything runs inline, to quiescence -------------------------

    def _run_until(self, call: ThreadCall, enqueue: bool = True) -> None:
        if enqueue:
            self._enqueue(call)
        self._run_to_quiescence()
        if not call.done:
            call.fail(ClosedError(f"{self!r} was closed before {call.envelope!r} was processed"))
        self._raise_for_send(call)

    def _kick(self) -> None:
        # The async twins call this after queueing: run inline instead of waking a worker.
        self._run_to_quiescence()

    def _run_to_quiescence(self) -> None:
        with self._commit_lock:
            start = len(self._history)
            while self._queue and not self._closed:
                if len(self._history) - start >= self._max_steps:
                    raise StepLimitError(
                        f"{self!r} delivered {self._max_steps:,} messages without becoming quiescent "
                        f"({len(self._queue):,} still queued; the next send continues them). If the system is "
                        "meant to run that long, raise Simulation(..., max_steps=...); otherwise look for a "
                        "message loop with simulation.run(envelopes, max_steps=...)"
                    )
                with self._run_lock:
                    self._process_queue(None)
                self._commit_sealed(until=None)

    def _recent_messages(self, address: Address[Any, Any, Any]) -> Sequence[object]:
        return [message for a, message in self._history if a == address][:-1]

