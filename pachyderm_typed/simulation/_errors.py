"""Errors raised by the simulation (all derive from ``PachydermError``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pachyderm_typed.errors import ActivationError, PachydermError

if TYPE_CHECKING:
    from pachyderm_typed.simulation._report import Trace


class SimulationError(PachydermError):
    """Base class of the errors specific to the simulation."""


class UnhashableError(SimulationError, TypeError):
    """A state or message cannot be hashed, so the checker cannot recognise worlds it has seen."""


class StepLimitError(SimulationError, RuntimeError):
    """``send``/``send_sync`` on a Simulation did not reach quiescence within its step limit."""


class PropertyViolation(SimulationError, AssertionError):
    """Raised by ``check()``: an invariant, goal, activation or limit failed; the message is the report."""


class ActivationFailed(ActivationError):
    """An activation raised during ``Simulation.run``: the entity's history plus the trace that led there.

    It is an ``ActivationError`` (same ``address``, ``message``, ``state``,
    ``history``, ``reason``), with ``trace``, the deliveries before the failure.
    """

    def __init__(self, error: ActivationError, trace: Trace) -> None:
        super().__init__(error.address, error.message, error.state, error.history, error.reason)
        self.trace = trace

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrace that led there:\n{self.trace.format(indent='  ')}"
