"""The activation kernel: the one step every ecosystem runs.

"Take a message for an entity, run ``activate`` on its state, validate what it
returned" is written here once. Ecosystems differ only in where states and
pending messages live and in how work is scheduled around this step.
"""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._ecosystem import Declaration, EntitySpec
from pachyderm_typed.errors import ActivationError, SendInsideActivationError


class _Marks(threading.local):
    # Class defaults: a thread that never activated reads 0 without a failed lookup
    # (``forbid_inside_activation`` is on every send's path).
    depth = 0
    #: the group of callers (see ``Regroup``) that this thread's last call was answered in
    group = -1
    #: this thread's request for a world's commit lock (see ``World._committing``), made once
    request: _thread.LockType | None = None


_local = _Marks()
#: the per-thread activation depth ``activating`` sets, for hot loops that mark it themselves
thread_marks = _local


@contextmanager
def activating() -> Iterator[None]:
    """Mark this thread as running activations (entered once per batch, not per message).

    The engine's own sites that the main thread runs mark inline instead (``depth = ...;
    try: ... finally: ...``): Python runs a signal handler (Ctrl-C) as any Python function
    starts, this generator's ``__exit__`` too, and a KeyboardInterrupt there leaves the
    generator suspended and the thread marked until the generator is collected; every call
    of that thread in between would be refused as made inside an activation."""
    depth = _local.depth
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


_SENDS = frozenset({"send", "send_sync", "asend", "asend_sync", "retry"})


def forbid_inside_activation(operation: str) -> None:
    """Refuse a call on the ecosystem from entity code: it would be a hidden side effect or
    input, and it may run where the engine's locks are held, so that the call would wait
    for itself."""
    if _local.depth:
        advice = (
            "an entity's only side effects are the envelopes activate returns: return them in the outbox"
            if operation in _SENDS
            else "an entity sees only its message and its state and does not drive the ecosystem: "
            "keep what it needs in its state"
        )
        raise SendInsideActivationError(
            f"{operation}() was called from inside activate() or init() (or from a signal handler "
            f"that interrupted one): {advice}"
        )


class Kernel:
    """Runs activations for one declaration."""

    __slots__ = ("declaration", "_by_class")

    def __init__(self, declaration: Declaration) -> None:
        self.declaration = declaration
        self._by_class = declaration.by_class

    def initial_state(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> object:
        # init is the entity's code as much as activate: it must not call the ecosystem either.
        # It may run where the caller holds the engine's locks (a state() read), and a call
        # from there would wait for them forever.
        depth = _local.depth
        _local.depth = depth + 1  # activating(), inline: see there
        try:
            return spec.impl.init(address.id)
        finally:
            _local.depth = depth

    def activate(
        self,
        spec: EntitySpec,
        address: Address[Any, Any, Any],
        message: object,
        state: object,
        history: Callable[[Address[Any, Any, Any]], Sequence[object]],
    ) -> tuple[Sequence[Envelope[Any, Any]], object]:
        """Run one activation; return ``(outbox, new_state)`` or raise ``ActivationError``."""
        try:
            result = spec.impl.activate(message, state)
        except KeyboardInterrupt:
            raise  # Ctrl-C in the main thread: it stops the caller, as anywhere else
        except BaseException as exc:
            # SystemExit too: in any other thread it would end just that thread, an engine's
            # or a caller's. In the main thread it ends the program, as anywhere there (a
            # signal handler's sys.exit() may land in an activation the main thread runs).
            if isinstance(exc, SystemExit) and threading.current_thread() is threading.main_thread():
                raise
            raise ActivationError(address, message, state, history(address), f"{type(exc).__name__}: {exc}") from exc
        if type(result) is not tuple or len(result) != 2:
            raise ActivationError(
                address, message, state, history(address),
                f"activate must return (outbox, new_state), it returned {result!r}",
            )
        outbox, new_state = result
        by_class = self._by_class
        try:
            for envelope in outbox:
                target = by_class.get(envelope.address.entity) if type(envelope) is Envelope else None
                if (
                    target is None
                    or (target.message_check is not None and not isinstance(envelope.message, target.message_check))
                    or (target.id_check is not None and not isinstance(envelope.address.id, target.id_check))
                ):
                    self.declaration.check_envelope(envelope)  # raises the precise error
        except Exception as exc:
            raise ActivationError(
                address, message, state, history(address), f"its outbox is invalid: {exc}"
            ) from exc
        return outbox, new_state
