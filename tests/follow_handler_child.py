"""``python -m tests.follow_handler_child ECOSYSTEM PATH``: a signal handler's call landing
while the main thread reads a subscription to the entity the call updates.

ECOSYSTEM is ``inmemory`` (PATH unused) or ``localdisk``. The main thread follows counter
"c" and, ten times, increments it and reads the subscription. A trace function raises
SIGUSR1 at each line of the subscription's code the main thread runs (once per line), so
the handler lands there, wherever a lock may be held; the handler increments "c" with
send_sync, whose commit is pushed to that very subscription. Prints a JSON line: the states
the handler's calls returned, how many were refused as reentrant, every state the
subscription handed out, and on how many lines a signal landed.
"""

from __future__ import annotations

import inspect
import json
import signal
import sys
from types import FrameType
from typing import Any

from pachyderm_typed import ReentrantCallError, Subscription, World
from pachyderm_typed.ecosystems import InMemory, LocalDisk
from tests.entities import App, Counter, Increment

SOURCE = inspect.getsourcefile(Subscription)


def main(ecosystem: str, path: str) -> None:
    world: World[Any] = LocalDisk(App, path) if ecosystem == "localdisk" else InMemory(App)
    answered: list[int] = []
    refused = [0]
    in_handler = [False]

    def on_usr1(signum: int, frame: object) -> None:
        in_handler[0] = True
        try:
            answered.append(world.send_sync(Counter.post("c", Increment())))
        except ReentrantCallError:  # landed in the main thread's own call (in memory it commits inline)
            refused[0] += 1
        finally:
            in_handler[0] = False

    landed: set[int] = set()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename != SOURCE:
            return None
        if event == "line" and not in_handler[0] and frame.f_lineno not in landed:
            landed.add(frame.f_lineno)
            signal.raise_signal(signal.SIGUSR1)
        return tracer

    signal.signal(signal.SIGUSR1, on_usr1)
    seen: list[int] = []
    rounds = 10
    with world.follow(Counter.address("c")) as subscription:
        sys.settrace(tracer)
        try:
            for _ in range(rounds):
                world.send_sync(Counter.post("c", Increment()))
                seen.append(subscription.next(timeout=10))
        finally:
            sys.settrace(None)
        while len(seen) < rounds + len(answered):
            seen.append(subscription.next(timeout=10))
    world.close()
    report = {"answered": answered, "refused": refused[0], "seen": seen, "lines": len(landed)}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
