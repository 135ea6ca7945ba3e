"""Signals for the child processes that test signal handlers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

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


def _inside(frame: FrameType | None, code: CodeType) -> bool:
    """Whether ``code`` runs in ``frame`` or in one of its callers."""
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


class EveryLine:
    """Runs a handler on every line of a package this thread runs, once per line.

    While ``tracing``, a trace function raises ``signum`` the first time the thread reaches
    each line of a file under ``directory`` (never while the handler runs), so the handler
    lands there, inside whatever the code holds at that point. Python runs it before the
    line, as it would a signal from outside that arrived then.
    """

    def __init__(
        self, directory: str, handler: Callable[[], None], signum: int = signal.SIGUSR1, by_timer: bool = False
    ) -> None:
        self._directory = directory
        self._handler = handler
        self._signum = signal.SIGALRM if by_timer else signum
        self._by_timer = by_timer
        self._handling = False
        self._armed = False
        self._tracing = False
        self.landed: set[tuple[str, int]] = set()  # (file, line) where a signal was raised
        signal.signal(self._signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._by_timer and _inside(frame, EveryLine._trace.__code__):
            # The timer went off before _trace returned: Python runs the handler as setitimer
            # returns, and what it raises would surface at the traced line's first step, where
            # no real signal's handler runs. Try again once _trace has returned (long enough
            # that the new timer does not go off in this handler in turn).
            signal.setitimer(signal.ITIMER_REAL, 2e-4)
            return
        self._armed = False
        if not self._tracing:
            return  # a timer's signal that came after tracing stopped
        self._handling = True
        try:
            self._handler()
        finally:
            self._handling = False

    def _trace(self, frame: FrameType, event: str, arg: object) -> Any:
        if not frame.f_code.co_filename.startswith(self._directory):
            return None
        line = (frame.f_code.co_filename, frame.f_lineno)
        if event == "line" and not self._handling and not self._armed and line not in self.landed:
            self.landed.add(line)
            if self._by_timer:
                # The kernel sends it a few microseconds on, and Python runs the handler where
                # it would run Ctrl-C's: at its next check for signals (a function's start, a
                # call's return, a loop's jump back), never between two plain steps such as a
                # finally's first store. (raise_signal runs it at once, on the line's first
                # step.) Tracing stops until then: Python checks for signals as this trace
                # function starts, which would be a line's first step again.
                self._armed = True
                sys.settrace(None)
                traced: FrameType | None = frame
                while traced is not None:
                    traced.f_trace = None
                    traced = traced.f_back
                signal.setitimer(signal.ITIMER_REAL, 1e-5)
                return None
            else:
                signal.raise_signal(self._signum)
        return self._trace

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        self._tracing = True
        sys.settrace(self._trace)
        try:
            yield
        finally:
            sys.settrace(None)
            self._tracing = False
            if self._by_timer:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._armed = False
