"""Bare locks as wake-up signals between threads: a sleeper blocks acquiring one, a waker
releases it.

Waking never waits, so a signal handler's call can wake anyone wherever it landed.
"""

from __future__ import annotations

import _thread


def ring(bell: _thread.LockType) -> None:
    """Wake whoever sleeps on ``bell`` (or the next to try): a released bell stays released,
    so rings merge and a sleeper is woken at most once per ring."""
    if bell.locked():
        try:
            bell.release()
        except RuntimeError:  # rung by another thread just now
            pass
