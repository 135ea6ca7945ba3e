"""Signals for the child processes that test signal handlers."""

from __future__ import annotations

import os
import random
import signal
import threading
import time


def signal_self_until(stop: float, signum: int = signal.SIGUSR1) -> threading.Thread:
    """Start a thread that sends this process ``signum`` every 1-3 ms until ``stop``
    (``time.monotonic()``); Python runs the handler in the main thread, wherever it is."""

    def signaller() -> None:
        while time.monotonic() < stop:
            os.kill(os.getpid(), signum)
            time.sleep(random.uniform(0.001, 0.003))

    thread = threading.Thread(target=signaller)
    thread.start()
    return thread
