"""Readable traces: the deliveries that led to a world, with the states they produced."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, overload

import attrs

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._kernel import activating
from pachyderm_typed.errors import ActivationError
from pachyderm_typed.simulation._model import DROP, DUPLICATE, Action, History, Model, States

StepKind = Literal["deliver", "duplicate", "drop"]


@attrs.frozen
class Step:
    """One thing the network did: deliver a message (``duplicate``: and keep a copy in flight), or drop it."""

    kind: StepKind
    address: Address[Any, Any, Any]
    message: object
    before: object
    after: object
    sent: tuple[Envelope[Any, Any], ...] = ()
    error: ActivationError | None = None

    def format(self, number: int, indent: str = "") -> str:
        head = f"{indent}{number:>3}. "
        target = f"{self.address!r} <- {self.message!r}"
        pad = indent + " " * 7
        if self.kind == "drop":
            return f"{head}dropped: {target}"
        note = "   (a copy stays in flight)" if self.kind == "duplicate" else ""
        lines = [f"{head}{target}{note}"]
        if self.error is not None:
            lines.append(f"{pad}FAILED: {self.error.reason}; state stays {self.before!r}")
        elif self.after == self.before:
            lines.append(f"{pad}state {self.before!r} (unchanged)")
        else:
            lines.append(f"{pad}state {self.before!r} -> {self.after!r}")
        if self.sent:
            lines.append(f"{pad}sent " + "; ".join(f"{e.address!r} <- {e.message!r}" for e in self.sent))
        return "\n".join(lines)


@attrs.frozen
class Trace(Sequence[Step]):
    """The steps from the starting world to some world, and what was still in flight there."""

    steps: tuple[Step, ...]
    in_flight: tuple[Envelope[Any, Any], ...] = ()

    @property
    def processed(self) -> tuple[tuple[Address[Any, Any, Any], object], ...]:
        """``(address, message)`` of every delivery, in order (drops excluded)."""
        return tuple((s.address, s.message) for s in self.steps if s.kind != "drop")

    @overload
    def __getitem__(self, index: int) -> Step: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Step]: ...
    def __getitem__(self, index: int | slice) -> Step | Sequence[Step]:
        return self.steps[index]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def format(self, indent: str = "") -> str:
        if not self.steps:
            lines = [f"{indent}  (no step: the starting world)"]
        else:
            lines = [step.format(n, indent) for n, step in enumerate(self.steps, 1)]
        if self.in_flight:
            lines.append(f"{indent}  still in flight: " + "; ".join(f"{e.address!r} <- {e.message!r}" for e in self.in_flight))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def build_trace(
    model: Model,
    moves: Iterable[tuple[Action, States, States]],
    in_flight: tuple[Envelope[Any, Any], ...],
    base_history: History,
) -> Trace:
    """Decode ``(action, states before, states after)`` moves into readable steps.

    A failed activation is run again with the entity's full history in this
    trace (``base_history`` gives what it received before the search began).
    """
    received: dict[Address[Any, Any, Any], list[object]] = {}

    def history(address: Address[Any, Any, Any]) -> Sequence[object]:
        return [*base_history(address), *received.get(address, ())]

    steps: list[Step] = []
    with activating():
        for (kind, entry), before_states, after_states in moves:
            mid = entry >> 3
            address, message = model.messages[mid]
            slot = model.message_slot[mid]
            before = model.state_of(before_states, address)
            if kind == DROP:
                steps.append(Step("drop", address, message, before, before))
                continue
            sid = before_states[slot] if slot < len(before_states) else 0
            _, sent, error = model.transition(mid, sid)
            if error is not None:
                try:
                    model.kernel.activate(model.specs[slot], address, message, before, history)
                except ActivationError as again:
                    error = again
            step_kind: StepKind = "duplicate" if kind == DUPLICATE else "deliver"
            after = model.state_of(after_states, address)
            steps.append(Step(step_kind, address, message, before, after, tuple(model.envelope(e) for e in sent), error))
            received.setdefault(address, []).append(message)
    return Trace(tuple(steps), in_flight)
