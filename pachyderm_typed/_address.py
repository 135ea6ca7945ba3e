"""Addresses and envelopes: the only way to name an entity and to talk to one.

``Address[E, M, S]`` names the entity of type ``E`` that accepts messages ``M``
(contravariant: an address that accepts more is usable where one that accepts
less is wanted) and whose state is ``S``. ``Envelope[E, S]`` is a message
addressed to an entity of type ``E`` whose state is ``S``; only ``post`` builds
one, so every envelope in a program was type-checked against its target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

from typing_extensions import TypeAlias

if TYPE_CHECKING:
    from pachyderm_typed._entity import Entity

E_co = TypeVar("E_co", covariant=True)
M_contra = TypeVar("M_contra", contravariant=True)
S_co = TypeVar("S_co", covariant=True)


@final
class _Key:
    """Proof that the caller is this package: ``Envelope``/``Address`` have no public constructor."""

    __slots__ = ()


_KEY = _Key()


@final
class Address(Generic[E_co, M_contra, S_co]):
    """``(entity type, id)``: hashable, ordered, and serialisable by the codec.

    Build one with ``EntityType.address(id)``.
    """

    # Addresses are dictionary keys on the hot path: slots and a cached hash
    # make a lookup one tuple-free hash read.
    __slots__ = ("entity", "id", "_hash")

    entity: type[Entity[Any, Any, Any]]
    id: Any
    _hash: int

    def __init__(self, entity: type[Entity[Any, Any, Any]], entity_id: object, *, _key: _Key) -> None:
        if _key is not _KEY:
            raise TypeError("Address has no public constructor: use EntityType.address(id)")
        object.__setattr__(self, "entity", entity)
        object.__setattr__(self, "id", entity_id)
        object.__setattr__(self, "_hash", hash((entity.kind, entity_id)))

    @property
    def kind(self) -> str:
        """The stable stored name of the entity type."""
        return self.entity.kind

    def post(self, message: M_contra) -> Envelope[E_co, S_co]:
        """An envelope carrying ``message`` to this address."""
        return Envelope(self, message, _key=_KEY)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Address is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Address):
            return NotImplemented
        return self._hash == other._hash and self.entity.kind == other.entity.kind and self.id == other.id

    def _sort_key(self) -> tuple[str, str, str]:
        return (self.entity.kind, type(self.id).__name__, repr(self.id))

    def __lt__(self, other: Address[Any, Any, Any]) -> bool:
        return self._sort_key() < other._sort_key()

    def __le__(self, other: Address[Any, Any, Any]) -> bool:
        return self._sort_key() <= other._sort_key()

    def __gt__(self, other: Address[Any, Any, Any]) -> bool:
        return self._sort_key() > other._sort_key()

    def __ge__(self, other: Address[Any, Any, Any]) -> bool:
        return self._sort_key() >= other._sort_key()

    def __repr__(self) -> str:
        return f"{self.entity.kind}({self.id!r})"

    def __reduce__(self) -> Any:
        raise TypeError("addresses are stored through the codec, never pickled")


@final
class Envelope(Generic[E_co, S_co]):
    """A message addressed to one entity. Build one with ``post``."""

    # Envelopes are created once per message: slots keep them small and fast.
    __slots__ = ("address", "message")

    address: Address[Any, Any, Any]
    message: Any

    def __init__(self, address: Address[Any, Any, Any], message: object, *, _key: _Key) -> None:
        if _key is not _KEY:
            raise TypeError("Envelope has no public constructor: use EntityType.post(id, message) or address.post(message)")
        self.address = address
        self.message = message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return self.address == other.address and self.message == other.message

    def __hash__(self) -> int:
        return hash((self.address, self.message))

    def __repr__(self) -> str:
        return f"{self.address!r}.post({self.message!r})"


ReplyTo: TypeAlias = Address[Any, M_contra, Any]
"""An address of any entity type that accepts at least messages of type ``M``."""

Outbox: TypeAlias = Sequence[Envelope[Any, Any]]
"""What ``activate`` sends: envelopes for other entities (or itself)."""


def make_address(entity: type[Entity[Any, Any, Any]], entity_id: object) -> Address[Any, Any, Any]:
    """Internal constructor, used by ``Entity.address`` and the codec."""
    return Address(entity, entity_id, _key=_KEY)


def make_envelope(address: Address[Any, Any, Any], message: object) -> Envelope[Any, Any]:
    """Internal constructor, used by the stores when they reload pending messages."""
    return Envelope(address, message, _key=_KEY)
