"""Child processes for the LocalDisk tests: ``python -m tests.helpers_localdisk.child MODE PATH ...``.

Modes:
  load PATH ROUND ACKS   send in a loop from three threads, writing an ack line after
                         each call returns, until killed
  count PATH N           send_sync N increments, print "done", then wait to be killed
  burst PATH N           one send_sync that fans out N messages, then exit at once
                         (no close: the pending messages are left as a crash leaves them)
  hold PATH              open the file, print "open", wait to be killed
  fork PATH N            send_sync N increments, then fork twice: once while a thread keeps
                         sending (the child tries the inherited worlds and prints what each
                         attempt raised), once while idle (the child drops the world, which
                         frees it); each child exits normally. Then send N more, print
                         "acked 2N" and wait to be killed
  fork-reopen PATH       send 3 increments and fork; the parent closes the file, then the
                         child tries to open it and prints what that raised
  sigterm PATH           read a 300-record state from the file in a loop, with a SIGTERM
                         handler that closes the world and exits; print "ready"
  handler PATH S         for S seconds read a 300-record state from the file in a loop (1 ms
                         apart) while another process sends this one SIGUSR1 every 1-3 ms, whose
                         handler calls send_sync; print a JSON line: the states the handler
                         got, how many calls were refused as reentrant, and the final state
  interrupted PATH S OUT for S seconds 4 threads and the main thread send_sync numbered
                         entries (the main thread reads a state after each) while another
                         process sends this one SIGINT every 1-3 ms (raised as
                         KeyboardInterrupt only inside the main thread's calls);
                         the main thread catches each one and goes on. Then
                         close and write each call's outcome to OUT (JSON)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

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


def fork(path: str, n: int) -> None:
    import asyncio
    import gc

    from pachyderm_typed.ecosystems import InMemory
    from tests.entities import App, Counter, Increment

    world = LocalDisk(App, path)
    memory = InMemory(App)
    memory.send_sync(Counter.post("m", Increment()))
    for _ in range(n):
        world.send_sync(Counter.post("c", Increment()))

    def in_child(run: Callable[[], None]) -> None:
        child = os.fork()
        if child == 0:
            signal.alarm(20)  # a call that hangs in the child ends it: the parent reports the signal
            run()
            sys.exit(0)  # a normal exit: the child's interpreter finalizes what it inherited
        _, status = os.waitpid(child, 0)
        print(f"child exit {os.waitstatus_to_exitcode(status)}", flush=True)

    def try_everything() -> None:
        attempts = {
            "send_sync": lambda: world.send_sync(Counter.post("c", Increment())),
            "state": lambda: world.state(Counter.address("c")),
            "dead_letters": world.dead_letters,
            "asend_sync": lambda: asyncio.run(world.asend_sync(Counter.post("c", Increment()))),
            "memory": lambda: memory.send_sync(Counter.post("m", Increment())),
            "reopen": lambda: LocalDisk(App, path),
        }
        for name, attempt in attempts.items():
            try:
                attempt()
                print(f"child {name}: no error", flush=True)
            except Exception as exc:
                print(f"child {name}: {type(exc).__name__}: {exc}", flush=True)
        with InMemory(App) as fresh:
            print(f"child fresh InMemory: {fresh.send_sync(Counter.post('m', Increment()))}", flush=True)

    # First fork while another thread keeps the engine busy: its locks may be held then.
    busy = threading.Event()
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            world.send_sync(Counter.post("other", Increment()))
            busy.set()

    sender = threading.Thread(target=keep_sending)
    sender.start()
    busy.wait()
    in_child(try_everything)
    stop.set()
    sender.join()

    # Then fork while no thread is inside the world (the child can then free it: a thread
    # caught inside it at the fork would keep it alive in the child), and drop it there.
    def drop_it() -> None:
        nonlocal world
        world.close()
        del world
        gc.collect()
        print("child dropped the world", flush=True)

    in_child(drop_it)
    for _ in range(n):
        total = world.send_sync(Counter.post("c", Increment()))
    print(f"acked {total}", flush=True)
    time.sleep(60)


def fork_reopen(path: str) -> None:
    from tests.entities import App, Counter, Increment

    world = LocalDisk(App, path)
    for _ in range(3):
        world.send_sync(Counter.post("c", Increment()))
    closed_read, closed_write = os.pipe()
    child = os.fork()
    if child == 0:
        signal.alarm(20)
        os.read(closed_read, 1)  # the parent has closed the file
        try:
            LocalDisk(App, path).close()
            print("child: opened", flush=True)
        except Exception as exc:
            print(f"child: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(0)
    world.close()
    os.write(closed_write, b"!")
    _, status = os.waitpid(child, 0)
    print(f"child exit {os.waitstatus_to_exitcode(status)}", flush=True)
    with LocalDisk(App, path) as again:
        print(f"counter {again.state(Counter.address('c'))}", flush=True)


def interrupted(path: str, seconds: float, out: str) -> None:
    import json

    from pachyderm_typed.errors import StorageError
    from tests.signals import signal_self_until

    world = LocalDisk(Work, path)
    outcomes: dict[str, dict[int, str]] = {f"log{slot}": {} for slot in range(5)}
    stop = time.monotonic() + seconds

    def send(slot: int, n: int) -> None:
        try:
            world.send_sync(Log.post(f"log{slot}", Entry(n)))
            outcomes[f"log{slot}"][n] = "acknowledged"
        except StorageError:  # "nothing was changed": it must not be applied
            outcomes[f"log{slot}"][n] = "refused"

    def sender(slot: int) -> None:
        n = 0
        while time.monotonic() < stop:
            send(slot, n)
            n += 1

    # KeyboardInterrupt anywhere inside the calls, but not in this loop's own bookkeeping
    # (a signal landing there would end the child, not test the engine): the handler
    # raises only while armed, and disarms itself as it does.
    armed = [False]

    def on_sigint(signum: int, frame: object) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    threads = [threading.Thread(target=sender, args=(slot,)) for slot in range(1, 5)]
    for thread in threads:
        thread.start()
    poker = signal_self_until(stop, signal.SIGINT)
    interrupts = n = 0
    while time.monotonic() < stop:
        outcomes["log0"][n] = "interrupted"  # until the call returns: maybe applied, at most once
        try:
            armed[0] = True
            send(0, n)
            world.state(Log.address(f"log{n % 5}"))  # commits what the others sent first
            armed[0] = False
        except KeyboardInterrupt:
            interrupts += 1
        n += 1
    poker.join()
    for thread in threads:
        thread.join()
    world.close()
    with open(out, "w") as file:
        json.dump({"interrupts": interrupts, "outcomes": outcomes}, file)


def sigterm(path: str) -> None:
    from tests.entities import App, Counter, Increment, Record, Recorder

    world = LocalDisk(App, path, cache_size=1)
    for n in range(300):
        world.send_sync(Recorder.post("big", Record("s", n)))
    world.send_sync(Counter.post("c", Increment()))  # the cache holds one: "big" now loads from the file

    def on_term(signum: int, frame: object) -> None:
        world.close()  # a graceful shutdown, from the handler: it may land inside a read
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        world.state(Recorder.address("big"))  # decoded from the file while the engine is held


def handler(path: str, seconds: float) -> None:
    import json

    from pachyderm_typed import ReentrantCallError
    from tests.entities import App, Counter, Increment, Record, Recorder
    from tests.signals import signal_self_until

    world = LocalDisk(App, path, cache_size=1)
    for n in range(300):
        world.send_sync(Recorder.post("big", Record("s", n)))
    world.send_sync(Counter.post("c", Increment()))  # the cache holds one: "big" now loads from the file
    answered: list[int] = []
    refused = 0

    def on_usr1(signum: int, frame: object) -> None:
        nonlocal refused
        try:
            answered.append(world.send_sync(Counter.post("c", Increment())))
        except ReentrantCallError:
            refused += 1

    signal.signal(signal.SIGUSR1, on_usr1)
    stop = time.monotonic() + seconds
    thread = signal_self_until(stop)
    while time.monotonic() < stop:
        world.state(Recorder.address("big"))  # decoded from the file while the engine is held
        time.sleep(0.001)  # where a handler's call is answered
    thread.join()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    final = world.state(Counter.address("c"))
    world.close()
    print(json.dumps({"answered": answered, "refused": refused, "final": final}), flush=True)


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
    elif mode == "fork":
        fork(path, int(rest[0]))
    elif mode == "fork-reopen":
        fork_reopen(path)
    elif mode == "sigterm":
        sigterm(path)
    elif mode == "handler":
        handler(path, float(rest[0]))
    elif mode == "interrupted":
        interrupted(path, float(rest[0]), rest[1])
    else:
        raise SystemExit(f"unknown mode {mode}")
