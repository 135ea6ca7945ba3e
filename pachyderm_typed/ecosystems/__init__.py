"""The environments that run entities. All share one API (see ``World``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pachyderm_typed.ecosystems._inmemory import InMemory
from pachyderm_typed.ecosystems._localdisk import LocalDisk
from pachyderm_typed.simulation import Simulation

if TYPE_CHECKING:
    from pachyderm_typed.ecosystems._postgres import Postgres as Postgres

__all__ = ["InMemory", "LocalDisk", "Simulation"]


def __getattr__(name: str) -> Any:
    # Postgres needs psycopg (the [postgres] extra), so it is imported on first use only.
    if name == "Postgres":
        try:
            from pachyderm_typed.ecosystems import _postgres
        except ImportError as exc:
            raise ImportError(
                f"pachyderm_typed.ecosystems.{name} needs psycopg 3: pip install 'pachyderm-typed[postgres]' ({exc})"
            ) from exc
        return getattr(_postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
