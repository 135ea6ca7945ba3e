"""``python -m tests.dead_letter_handler_child ECOSYSTEM WHERE``: a signal handler discarding
a dead letter on every line of the package that the main thread's retry of it runs.

ECOSYSTEM and WHERE as in ``handler_on_every_line_child``. Each round makes a dead letter
(Work for a closed Picky gate), opens the gate, and retries the letter with a trace function
that raises SIGUSR1 the first time a retry reaches each line of the package. The handler
discards that same letter. In the first round it does so at once, and the retry finds the
letter gone; so later rounds land past the point where the retry takes the letter's row. Prints a JSON line: per round, whether the retry went through and
how the handler's discards ended; the final Picky states; the dead letters left.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pachyderm_typed
from pachyderm_typed import DeadLetter, ReentrantCallError, SendInsideActivationError
from tests.entities import Picky, Unlock, Work
from tests.handler_on_every_line_child import open_world
from tests.signals import EveryLine

PACKAGE = os.path.dirname(pachyderm_typed.__file__) + os.sep
ROUNDS = 3


def main(ecosystem: str, where: str) -> None:
    world = open_world(ecosystem, where)
    rounds: list[dict[str, Any]] = []
    letter: list[DeadLetter] = []

    def handler() -> None:
        outcome = rounds[-1]
        try:
            world.discard(letter[-1])
            outcome["discarded"] += 1
        except ReentrantCallError:  # the interrupted call holds what discarding takes
            outcome["reentrant"] += 1
        except SendInsideActivationError:  # it landed where the main thread runs activations
            outcome["inside"] += 1
        except LookupError:
            outcome["gone"] += 1

    every_line = EveryLine(PACKAGE, handler)
    for number in range(ROUNDS):
        entity = f"q{number}"
        world.send(Picky.post(entity, Work(1)))  # the gate is closed: a dead letter
        (found,) = [d for d in world.dead_letters() if d.envelope.address.id == entity]
        letter.append(found)
        world.send_sync(Picky.post(entity, Unlock()))
        outcome = {"retried": False, "discarded": 0, "reentrant": 0, "inside": 0, "gone": 0, "lines": 0}
        rounds.append(outcome)
        before = len(every_line.landed)
        with every_line.tracing():
            try:
                world.retry(found)
                outcome["retried"] = True
            except LookupError:  # the handler discarded it first
                pass
        outcome["lines"] = len(every_line.landed) - before
    totals = [world.state(Picky.address(f"q{number}")).total for number in range(ROUNDS)]
    left = [d.id for d in world.dead_letters()]
    world.close()
    print(json.dumps({"rounds": rounds, "totals": totals, "left": left}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
