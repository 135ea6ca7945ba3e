"""``python -m tests.handler_on_every_line_child ECOSYSTEM WHERE [held]``: a signal handler
calling in on every line of this package the main thread runs, one line at a time.

ECOSYSTEM is ``inmemory`` (WHERE unused), ``localdisk`` (WHERE: the file) or ``postgres``
(WHERE: the namespace, in the test database). The main thread follows counters "c" and
"d" and, ten times, increments "c" and reads the next state of "c" from its subscription.
A trace function raises SIGUSR1 the first time the main thread reaches each line of the
package (not while the handler runs), so the handler lands there, inside whatever the
engine holds at that point. The handler increments "d" and then "c" with send_sync: their
commits are pushed to both subscriptions, the one being read among them. Prints a JSON
line: the states of "c" the handler's calls returned, how many of its calls were refused
(ReentrantCallError, SendInsideActivationError), every state of "c" the subscription handed
out, and on how many lines a signal landed.

With ``held`` (inmemory, localdisk), each time the handler runs another thread commits
meanwhile: it takes the engine's commit lock for 10 ms, then commits what was left to it.
So the handler's calls cannot commit themselves and wait to be answered by that thread.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import pachyderm_typed
from pachyderm_typed import ReentrantCallError, SendInsideActivationError, World
from pachyderm_typed.ecosystems import InMemory, LocalDisk, Postgres
from tests.entities import App, Counter, Increment
from tests.helpers_postgres.support import DSN
from tests.signals import EveryLine

PACKAGE = os.path.dirname(pachyderm_typed.__file__) + os.sep
ROUNDS = 10


def open_world(ecosystem: str, where: str) -> World[Any]:
    if ecosystem == "postgres":
        return Postgres(App, DSN, namespace=where, workers=0)
    return LocalDisk(App, where) if ecosystem == "localdisk" else InMemory(App)


def commit_meanwhile(world: World[Any]) -> threading.Thread:
    """Start a thread that holds the commit lock a moment; return once it does (or, if the
    interrupted code holds that lock, after a while: then the thread takes it later)."""
    holding = threading.Event()

    def hold() -> None:
        with world._committing():  # on leaving, it commits whatever was left to it
            holding.set()
            time.sleep(0.01)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(timeout=0.05)
    return thread


def main(ecosystem: str, where: str, held: bool) -> None:
    world = open_world(ecosystem, where)
    answered: list[int] = []
    refused = [0]
    committers: list[threading.Thread] = []  # joined at the end: they may need what main holds

    def handler() -> None:
        if held:
            committers.append(commit_meanwhile(world))
        try:
            world.send_sync(Counter.post("d", Increment()))
            answered.append(world.send_sync(Counter.post("c", Increment())))
        except (ReentrantCallError, SendInsideActivationError):
            refused[0] += 1

    every_line = EveryLine(PACKAGE, handler)
    seen: list[int] = []
    other = world.follow(Counter.address("d"))
    with world.follow(Counter.address("c")) as subscription:
        with every_line.tracing():
            for _ in range(ROUNDS):
                world.send_sync(Counter.post("c", Increment()))
                seen.append(subscription.next(timeout=10))
        while len(seen) < ROUNDS + len(answered):
            seen.append(subscription.next(timeout=10))
    for committer in committers:
        committer.join()
    other.close()
    world.close()
    report = {"answered": answered, "refused": refused[0], "seen": seen, "lines": len(every_line.landed)}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] == ["held"])
