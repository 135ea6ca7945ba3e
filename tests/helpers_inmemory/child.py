"""Child processes for the InMemory signal tests: ``python -m tests.helpers_inmemory.child MODE S``.

For S seconds the main thread calls send_sync on counter "c" and on a Hooked in a loop
(1 ms apart), and a daemon thread calls send_sync on counter "t", so that the main thread
also processes other threads' messages.

Modes:
  handler S   another process sends this one SIGUSR1 every 1-3 ms, whose handler calls
              send_sync on "c"; print a JSON line: the main thread's and the thread's
              counts, the handler's answered and refused calls (by error), and both final
              states
  sigterm S   after S/2 seconds the main thread's activation of the Hooked raises SIGTERM
              itself, so that the handler, which closes the world and exits with status 0
              (a graceful shutdown), runs inside the engine; it prints "closing" first
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from pachyderm_typed import ReentrantCallError, SendInsideActivationError
from pachyderm_typed.ecosystems import InMemory
from tests.entities import HOOK, App, Counter, Hooked, Increment, Poke
from tests.signals import signal_self_until


def main(mode: str, seconds: float) -> None:
    world = InMemory(App)
    stop = time.monotonic() + seconds
    counts = {"main": 0, "thread": 0}
    answered: list[int] = []
    refused: dict[str, int] = {}

    def other() -> None:
        while time.monotonic() < stop:
            world.send_sync(Counter.post("t", Increment()))
            counts["thread"] += 1

    def on_usr1(signum: int, frame: object) -> None:
        try:
            answered.append(world.send_sync(Counter.post("c", Increment())))
        except (ReentrantCallError, SendInsideActivationError) as exc:
            refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1

    def on_term(signum: int, frame: object) -> None:
        print("closing", flush=True)
        world.close()
        sys.exit(0)

    if mode == "handler":
        signal.signal(signal.SIGUSR1, on_usr1)
        signaller = signal_self_until(stop)
    else:
        signal.signal(signal.SIGTERM, on_term)
        signaller = threading.Timer(seconds / 2, lambda: HOOK.append(lambda: signal.raise_signal(signal.SIGTERM)))
        signaller.start()
    thread = threading.Thread(target=other, daemon=True)  # a daemon: a stranded call cannot block the exit
    thread.start()
    while time.monotonic() < stop:
        world.send_sync(Counter.post("c", Increment()))
        world.send_sync(Hooked.post("h", Poke()))  # runs HOOK
        counts["main"] += 1
        time.sleep(0.001)
    signaller.join()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    thread.join()
    final = {name: world.state(Counter.address(name)) for name in "ct"}
    world.close()
    print(json.dumps({**counts, "answered": answered, "refused": refused, "final": final}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
