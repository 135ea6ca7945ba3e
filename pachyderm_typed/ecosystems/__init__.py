"""The environments that run entities. All share one API (see ``World``)."""

from __future__ import annotations

from pachyderm_typed.ecosystems._inmemory import InMemory
from pachyderm_typed.ecosystems._localdisk import LocalDisk
from pachyderm_typed.simulation import Simulation

__all__ = ["InMemory", "LocalDisk", "Simulation"]
