"""Signals for the child processes that test signal handlers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

_SIGNALLER = """
import os, random, sys, time
pid, signum, stop = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
while time.monotonic() < stop:
    os.kill(pid, signum)
    time.sleep(random.uniform(0.001, 0.003))
"""


class Signaller:
    """A process that sends this one a signal every 1-3 ms until a deadline.

    A process, not a thread: a thread of this process needs the GIL to send, so it could
    send only while the main thread lets go of it (a sleep, a blocking call), and the
    handler would never land in the middle of the main thread's Python code. Python runs
    the handler in the main thread at its next bytecode, wherever that is.
    """

    def __init__(self, stop: float, signum: int) -> None:
        # time.monotonic() is the system-wide CLOCK_MONOTONIC: the deadline means the same there.
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SIGNALLER, str(os.getpid()), str(int(signum)), repr(stop)]
        )

    def join(self) -> None:
        """Wait until it has sent its last signal."""
        if self._process.wait() != 0:
            raise RuntimeError(f"the signaller failed with exit status {self._process.returncode}")


def signal_self_until(stop: float, signum: int = signal.SIGUSR1) -> Signaller:
    """Have this process sent ``signum`` every 1-3 ms until ``stop`` (``time.monotonic()``)."""
    return Signaller(stop, signum)
