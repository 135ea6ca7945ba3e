"""``python -m tests.helpers_postgres.handler DSN NAMESPACE SECONDS``: signal handlers calling in.

For SECONDS the main thread calls send_sync on counter "c" in a loop (1 ms apart) while
another process sends this one SIGUSR1 every 1-3 ms. The handler calls send_sync on "c" (the
entity the interrupted call may hold the lock of) and on "d" in turn (a signal landing in
the handler itself does nothing). Prints a JSON line:
the main thread's count, the states the handler got per counter, how many of its calls
were refused as reentrant (``refused``) or as made inside entity code (``inside``: it landed
while the interrupted call ran its batch), and both final states.
"""

from __future__ import annotations

import json
import signal
import sys
import time

from pachyderm_typed import ReentrantCallError, SendInsideActivationError
from pachyderm_typed.ecosystems import Postgres
from tests.entities import App, Counter, Increment
from tests.signals import signal_self_until


def main(dsn: str, namespace: str, seconds: float) -> None:
    world = Postgres(App, dsn, namespace=namespace, workers=0)
    answered: dict[str, list[int]] = {"c": [], "d": []}
    refused = {"c": 0, "d": 0}
    inside = {"c": 0, "d": 0}
    turn = [0]
    busy = [False]

    def on_usr1(signum: int, frame: object) -> None:
        if busy[0]:
            return  # a signal landing in this handler: only the main loop's calls are interrupted
        busy[0] = True
        turn[0] += 1
        name = "cd"[turn[0] % 2]
        try:
            answered[name].append(world.send_sync(Counter.post(name, Increment())))
        except ReentrantCallError:
            refused[name] += 1
        except SendInsideActivationError:
            inside[name] += 1
        finally:
            busy[0] = False

    signal.signal(signal.SIGUSR1, on_usr1)
    stop = time.monotonic() + seconds
    thread = signal_self_until(stop)
    calls = 0
    while time.monotonic() < stop:
        world.send_sync(Counter.post("c", Increment()))
        calls += 1
        time.sleep(0.001)  # where a handler's call for "c" is served
    thread.join()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    final = {name: world.state(Counter.address(name)) for name in "cd"}
    world.close()
    print(json.dumps({"calls": calls, "answered": answered, "refused": refused, "inside": inside, "final": final}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
