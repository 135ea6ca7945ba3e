"""What a child process forked from ours must let go of without touching.

Objects that own the parent's threads, files or connections register here; in the
child, each one's ``_forsake()`` runs right after the fork (before any other code),
so that nothing the child does, not even exiting, can harm the parent's copy.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

_owners: weakref.WeakSet[Any] = weakref.WeakSet()


def forsake_in_forked_children(owner: Any) -> None:
    """Call ``owner._forsake()`` in every child forked while ``owner`` is registered."""
    _owners.add(owner)


def released(owner: Any) -> None:
    """``owner`` closed its resources: a child forked from now on has nothing to let go of."""
    _owners.discard(owner)


def _forsake_all() -> None:
    for owner in list(_owners):
        owner._forsake()


os.register_at_fork(after_in_child=_forsake_all)
