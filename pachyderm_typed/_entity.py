"""The ``Entity`` base class: what users subclass to define behaviour."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from typing_extensions import Self

from pachyderm_typed._address import Address, Envelope, Outbox, make_address, make_envelope

IdT = TypeVar("IdT")
MsgT = TypeVar("MsgT")
StateT = TypeVar("StateT")


class Entity(Generic[IdT, MsgT, StateT]):
    """Base class of every entity type: ``class Counter(Entity[str, Increment, int])``.

    Subclasses implement ``activate`` and may implement ``init``. The runtime
    creates one instance per ecosystem and calls its methods; keep them pure
    (no I/O, no clocks, no randomness): everything an entity does goes through
    the outbox it returns.

    Class attributes:

    ``kind``
        The stable name stored with every record. Defaults to the class's
        qualified name (not its module, so a script run as ``__main__`` and the
        same module imported elsewhere agree). Set it explicitly before renaming
        the class, and the stored data follows.
    ``state_version``
        Bump it when the state type changes, and add an entry to ``upgrades``.
    ``upgrades``
        ``{v: fn}``: ``fn`` turns the unstructured (JSON-like) data of version
        ``v`` into that of version ``v + 1``. Every version from 1 up to
        ``state_version - 1`` needs one.
    """

    kind: ClassVar[str]
    state_version: ClassVar[int] = 1
    upgrades: ClassVar[Mapping[int, Callable[[Any], Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            cls.kind = cls.__qualname__

    def init(self, entity_id: IdT) -> StateT:
        """The state of an entity that has never received a message (default ``None``)."""
        return None  # type: ignore[return-value]

    def activate(self, message: MsgT, state: StateT) -> tuple[Outbox, StateT]:
        """Handle one message: return the envelopes to send and the new state."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement activate(message, state)")

    @classmethod
    def address(cls, entity_id: IdT) -> Address[Self, MsgT, StateT]:
        """The address of the entity of this type with ``entity_id``."""
        return make_address(cls, entity_id)

    @classmethod
    def post(cls, entity_id: IdT, message: MsgT) -> Envelope[Self, StateT]:
        """An envelope carrying ``message`` to the entity ``entity_id`` of this type."""
        return make_envelope(make_address(cls, entity_id), message)
