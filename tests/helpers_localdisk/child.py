"""Child processes for the LocalDisk tests: ``python -m tests.helpers_localdisk.child MODE PATH ...``.

Modes:
  load PATH ROUND ACKS   send in a loop from three threads, writing an ack line after
                         each call returns, until killed
  count PATH N           send_sync N increments, print "done", then wait to be killed
  burst PATH N           one send_sync that fans out N messages, then exit at once
                         (no close: the pending messages are left as a crash leaves them)
  hold PATH              open the file, print "open", wait to be killed
"""

from __future__ import annotations

import os
import sys
import threading
import time

from pachyderm_typed.ecosystems import LocalDisk
from tests.helpers_localdisk.workload import Entry, Fan, Log, Relay, Spread, Work


def load(path: str, round_no: int, acks_path: str) -> None:
    world = LocalDisk(Work, path)
    acks = open(acks_path, "a", buffering=1)  # line buffered: one write per ack
    lock = threading.Lock()
    base = round_no * 1_000_000

    def ack(line: str) -> None:
        with lock:
            acks.write(line + "\n")
            acks.flush()

    def sync_sender() -> None:
        for i in range(1_000_000):
            world.send_sync(Log.post("sync", Entry(base + i)))
            ack(f"S {base + i}")

    def async_sender() -> None:
        for i in range(1_000_000):
            world.send(Log.post("async", Entry(base + i)))
            ack(f"A {base + i}")

    def relay_sender() -> None:
        for i in range(1_000_000):
            if i % 2:
                world.send(Relay.post("r", Entry(base + i)))
            else:
                world.send_sync(Relay.post("r", Entry(base + i)))
            ack(f"R {base + i}")

    threads = [threading.Thread(target=f, daemon=True) for f in (sync_sender, async_sender, relay_sender)]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    for thread in threads:
        thread.join()


def count(path: str, n: int) -> None:
    from tests.entities import App, Counter, Increment

    world = LocalDisk(App, path)
    for _ in range(n):
        world.send_sync(Counter.post("c", Increment()))
    print("done", flush=True)
    time.sleep(60)


def burst(path: str, n: int) -> None:
    world = LocalDisk(Work, path)
    world.send_sync(Fan.post("f", Spread("burst", n)))
    print("sent", flush=True)
    os._exit(0)


def hold(path: str) -> None:
    LocalDisk(Work, path)
    print("open", flush=True)
    time.sleep(60)


if __name__ == "__main__":
    mode, path, *rest = sys.argv[1:]
    if mode == "load":
        load(path, int(rest[0]), rest[1])
    elif mode == "count":
        count(path, int(rest[0]))
    elif mode == "burst":
        burst(path, int(rest[0]))
    elif mode == "hold":
        hold(path)
    else:
        raise SystemExit(f"unknown mode {mode}")
