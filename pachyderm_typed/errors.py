"""Every exception the library raises derives from :class:`PachydermError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pachyderm_typed._address import Address


class PachydermError(Exception):
    """Base class of every error raised by pachyderm-typed."""


class DeclarationError(PachydermError, TypeError):
    """An ecosystem declaration (or an entity class in it) is invalid."""


class UndeclaredEntityError(PachydermError, LookupError):
    """An envelope or address names an entity type the ecosystem does not run."""


class MessageTypeError(PachydermError, TypeError):
    """A message is not an instance of the target entity's declared message type."""


class SendInsideActivationError(PachydermError, RuntimeError):
    """The ecosystem (``send``, ``send_sync``, ``state``, ...) was called from inside
    ``activate`` or ``init``.

    Side effects must go through the outbox that ``activate`` returns, and what an entity
    knows must come from its state and its messages.
    """


class ReentrantCallError(PachydermError, RuntimeError):
    """A signal handler called the ecosystem while the thread it interrupted held its locks.

    The call would wait forever for the interrupted code, which cannot go on until the
    handler returns. Set a flag in the handler and make the call after it returns.
    """


class ClosedError(PachydermError, RuntimeError):
    """The ecosystem was closed; open a new one to keep working."""


class StorageError(PachydermError):
    """A stored record or file cannot be used; nothing was overwritten."""


class AlreadyOpenError(StorageError):
    """Another ecosystem (in this process or another) holds the store."""


class DatabaseUnavailableError(StorageError):
    """PostgreSQL cannot be reached, or the connection broke during the call.

    ``applied`` is False when nothing was applied (retrying is safe), and None
    when the connection broke while committing, so the outcome is unknown.
    """

    def __init__(self, message: str, applied: bool | None = False) -> None:
        super().__init__(message)
        self.applied = applied


class UpgradeError(StorageError):
    """A stored state cannot be brought to the entity's current ``state_version``."""


class CodecError(StorageError, TypeError):
    """A value cannot be encoded or decoded by the ecosystem's codec."""


class ActivationError(PachydermError):
    """``activate`` raised, or returned something that is not ``(outbox, state)``.

    The entity keeps the state it had before; the original exception is ``__cause__``.
    """

    def __init__(
        self,
        address: Address[Any, Any, Any],
        message: object,
        state: object,
        history: Sequence[object],
        reason: str,
    ) -> None:
        self.address = address
        self.message = message
        self.state = state
        self.history = tuple(history)
        self.reason = reason
        super().__init__(address, message, state, self.history, reason)

    def __str__(self) -> str:
        lines = [
            f"{self.address!r} failed to activate: {self.reason}",
            f"  message: {self.message!r}",
            f"  state before: {self.state!r}",
        ]
        if self.history:
            lines.append(f"  messages it received before (oldest first, last {len(self.history)}):")
            lines.extend(f"    {m!r}" for m in self.history)
        else:
            lines.append("  messages it received before: none recorded")
        lines.append("The entity keeps its previous state.")
        return "\n".join(lines)
