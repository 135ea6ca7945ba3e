"""The Simulation ecosystem and its model checker.

``Simulation(App)`` is an ecosystem like the others (same typed API), run
deterministically in the calling thread. On top of it:

* ``sim.run(envelopes)``: deliver in FIFO order until quiescent; a
  :class:`SimulatedWorld` (typed ``state(address)``, ``processed`` log, ``trace``).
* ``sim.exhaust(envelopes, network=..., invariants=..., goals=...)``: every
  delivery order, breadth-first, deduplicating worlds; an :class:`Exploration`
  with the distinct outcomes, shortest counterexamples and honest limits.
* ``sim.explore(envelopes, seed=..., runs=...)``: reproducible random schedules
  for spaces too big to exhaust.
* :class:`Network`: ``reordering()`` (default), ``fifo()``, ``lossy()``,
  ``duplicating()``.
* CALM checks: :func:`check_deterministic`, :func:`check_loss_tolerant`,
  :func:`check_duplicate_tolerant`, :func:`check_calm`.

The package is split like a small model checker: ``_model`` (compact worlds and
the memoised transition), ``_network``, ``_properties``, ``_checker`` (search),
``_parallel`` (search across processes), ``_calm``, ``_report`` (traces),
``_results`` and ``_simulation`` (the ecosystem).
"""

from __future__ import annotations

from pachyderm_typed.simulation._calm import (
    CalmResult,
    check_calm,
    check_deterministic,
    check_duplicate_tolerant,
    check_loss_tolerant,
)
from pachyderm_typed.simulation._errors import (
    ActivationFailed,
    PropertyViolation,
    SimulationError,
    StepLimitError,
    UnhashableError,
)
from pachyderm_typed.simulation._network import Network
from pachyderm_typed.simulation._properties import Predicate, WorldView
from pachyderm_typed.simulation._report import Step, Trace
from pachyderm_typed.simulation._results import Exploration, Failure, SimulatedWorld, Violation
from pachyderm_typed.simulation._simulation import Simulation

__all__ = [
    "ActivationFailed",
    "CalmResult",
    "Exploration",
    "Failure",
    "Network",
    "Predicate",
    "PropertyViolation",
    "SimulatedWorld",
    "Simulation",
    "SimulationError",
    "Step",
    "StepLimitError",
    "Trace",
    "UnhashableError",
    "Violation",
    "WorldView",
    "check_calm",
    "check_deterministic",
    "check_duplicate_tolerant",
    "check_loss_tolerant",
]
