"""Networks: what may happen to a message between ``send`` and ``activate``.

A network is three independent choices:

``ordered``
    False (default): any message in flight may be delivered next (reordering).
    True: FIFO per (sender, receiver), which is what InMemory, LocalDisk and
    Postgres guarantee. Envelopes given to ``run``/``exhaust``/``explore`` come
    from one outside sender, in the order given.
``drops``
    Any message in flight may also be dropped (a lossy network).
``duplicates``
    A delivered message may be delivered again, up to this many extra times.
"""

from __future__ import annotations

import attrs

# Budgets live in the low bits of a flight entry (see _model.py).
MAX_DUPLICATES = 7


def _check_duplicates(_: object, __: object, value: int) -> None:
    if not 0 <= value <= MAX_DUPLICATES:
        raise ValueError(f"duplicates must be between 0 and {MAX_DUPLICATES}, got {value}")


@attrs.frozen
class Network:
    """How the simulated network treats messages. Build one with the class methods."""

    ordered: bool = False
    drops: bool = False
    duplicates: int = attrs.field(default=0, validator=_check_duplicates)

    @classmethod
    def reordering(cls) -> Network:
        """Reliable, but any message in flight may be delivered next (the default)."""
        return cls()

    @classmethod
    def fifo(cls) -> Network:
        """Reliable and FIFO per (sender, receiver): what the real ecosystems guarantee."""
        return cls(ordered=True)

    @classmethod
    def lossy(cls, *, ordered: bool = False) -> Network:
        """Any message in flight may be delivered next, or dropped."""
        return cls(ordered=ordered, drops=True)

    @classmethod
    def duplicating(cls, copies: int = 1, *, ordered: bool = False) -> Network:
        """A delivered message may be delivered again, up to ``copies`` more times."""
        return cls(ordered=ordered, duplicates=copies)

    def describe(self) -> str:
        parts = ["FIFO per (sender, receiver)" if self.ordered else "reordering"]
        if self.drops:
            parts.append("lossy")
        if self.duplicates:
            parts.append(f"duplicating (up to {self.duplicates} extra deliveries per message)")
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.describe()


REORDERING = Network()
FIFO = Network(ordered=True)
