"""``InMemory``: entities in this process's memory; fast, isolated, forgotten on exit."""

from __future__ import annotations

from typing import TypeVar

from pachyderm_typed._world import World

E = TypeVar("E")


class InMemory(World[E]):
    """Runs a declaration in memory: ``InMemory(App)``.

    Exactly-once delivery and FIFO per (sender, receiver) while the process
    lives; nothing survives it. Each instance is isolated from every other, so
    tests can open one per test. Messages still queued at ``close()`` are
    dropped (their async senders get ``ClosedError``).
    """
