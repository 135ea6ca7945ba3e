"""``python -m tests.handler_fuzz [--ecosystem E ...] [--held] [--loop] [--only MAIN:HANDLER]``:
every pair of a main-thread operation and a signal handler's operation, each pair in a
child process, under load from other callers.

Not a test (it runs for minutes): a tool for changes to the engine's locking. Each child
runs one operation in its main thread (on counter "c"), ``ROUNDS`` times or more, under
``EveryLine``: the first time the main thread reaches each line of the package, a signal
lands there and its handler runs the other operation, on counter "d" and then on "c". Meanwhile three threads call ``send_sync`` in a loop
(with ``--loop``, four asyncio tasks on a loop of their own thread, and one thread); with
``--held``, each time the handler runs, another thread first holds the commit lock for
10 ms (InMemory and LocalDisk). At the end the child checks that every acknowledged
increment is in the stored count, once; that each dead letter was applied by its retry or
discarded, never both, and is otherwise still listed; and that the only errors were the
engine's refusals of a handler's call. The parent fails a pair whose child fails these,
raises anything else, or hangs (``TIMEOUT`` seconds).

The operations: send, send_sync, asend_sync, state, follow (and close), next (a
subscription's next state), dead_letters, retry, discard; and for the handler "raise", a
KeyboardInterrupt as Ctrl-C raises it (on LocalDisk and Postgres; in memory it may strand
other threads' calls, as the README says), delivered by a timer so that it lands where
Python runs a real signal's handler, once per call: the interrupted call is applied once or
not at all, and no other caller notices. It found the hangs and the
starved reads docs/reliability.md describes (Postgres's discard of a letter being
retried, the in-memory handler calling in after the main thread queued, reads starved by
looping callers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import pachyderm_typed
from pachyderm_typed import DeadLetter, ReentrantCallError, SendInsideActivationError, World
from tests.entities import Counter, Increment, Picky, Unlock, Work
from tests.handler_on_every_line_child import commit_meanwhile, open_world
from tests.signals import EveryLine

PACKAGE = os.path.dirname(pachyderm_typed.__file__) + os.sep
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATIONS = ("send", "send_sync", "asend_sync", "state", "follow", "next", "dead_letters", "retry", "discard")
#: the handler's: the same, and "raise", a KeyboardInterrupt as Ctrl-C raises it (durable worlds)
HANDLER_OPERATIONS = (*OPERATIONS, "raise")
ROUNDS = 4
MAX_ROUNDS = 300
LETTERS = 20  # dead letters for the handler's retries and discards
TIMEOUT = float(os.environ.get("FUZZ_TIMEOUT", "60"))
REFUSALS = (ReentrantCallError, SendInsideActivationError)


class Child:
    """One pair, in this process: the main thread runs ``main_op``, the handler ``handler_op``."""

    def __init__(self, world: World[Any]) -> None:
        self.world = world
        self.loop = asyncio.new_event_loop()  # for asend_sync, run from the main thread
        self.acked = {"c": 0, "d": 0}
        self.aborted = 0  # the main thread's calls on "c" a KeyboardInterrupt stopped: applied once or not
        self.raised = False  # in this round
        self.refused = 0
        self.letters: list[DeadLetter] = []  # not yet taken by either side
        self.current: DeadLetter | None = None  # the letter the main thread is retrying or discarding
        self.next_letter: DeadLetter | None = None  # the main thread's next (made outside the trace)
        self.gates: dict[str, int] = {}  # Picky entity -> the id of its dead letter
        self.uncertain: set[int] = set()  # letters whose retry or discard was interrupted
        self.applied: list[int] = []  # ids of letters a retry applied
        self.discarded: list[int] = []
        self.rounds_run: list[int] = []  # new lines landed on, per round
        self.subscription = world.follow(Counter.address("c"))

    def run(self, operation: str, counter: str, in_handler: bool) -> None:
        world = self.world
        envelope = Counter.post(counter, Increment())
        if operation == "send":
            world.send(envelope)
            self.acked[counter] += 1
        elif operation == "send_sync":
            world.send_sync(envelope)
            self.acked[counter] += 1
        elif operation == "asend_sync":
            if asyncio._get_running_loop() is not None:
                return  # a handler interrupting the main thread's loop cannot run one of its own
            self.loop.run_until_complete(world.asend_sync(envelope))
            self.acked[counter] += 1
        elif operation == "state":
            world.state(Counter.address(counter))
        elif operation == "follow":
            world.follow(Counter.address(counter)).close()
        elif operation == "next":
            try:  # the background callers keep "c" moving; a handler does not wait
                self.subscription.next(timeout=0 if in_handler else 5)
            except TimeoutError:
                if not in_handler:
                    raise
        elif operation == "dead_letters":
            world.dead_letters()
        else:
            self.take_letter(operation, in_handler)

    def new_letter(self) -> DeadLetter:
        """A dead letter (work for a closed gate), its gate then opened: a retry applies it."""
        gate = f"m{len(self.gates)}"
        self.world.send(Picky.post(gate, Work(1)))
        (letter,) = [d for d in self.world.dead_letters() if d.envelope.address.id == gate]
        self.world.send_sync(Picky.post(gate, Unlock()))
        self.gates[gate] = letter.id
        return letter

    def interrupted(self, operation: str) -> None:
        """The main thread's ``operation`` was stopped by the handler's KeyboardInterrupt."""
        if operation in ("send", "send_sync", "asend_sync"):
            self.aborted += 1
        elif operation in ("retry", "discard"):
            assert self.next_letter is not None
            self.uncertain.add(self.next_letter.id)

    def take_letter(self, operation: str, in_handler: bool) -> None:
        if in_handler:  # the letter the main thread is taking, if any: the hard case
            letter = self.current if self.current is not None else self.letters.pop() if self.letters else None
            if letter is None:
                return
        else:
            letter = self.next_letter
            assert letter is not None, "made before the round"
            self.current = letter
        try:
            if operation == "retry":
                self.world.retry(letter)
                self.applied.append(letter.id)
            else:
                self.world.discard(letter)
                self.discarded.append(letter.id)
        except LookupError:
            pass  # the other side took it first
        finally:
            if not in_handler:
                self.current = None


def child(ecosystem: str, where: str, main_op: str, handler_op: str, held: bool, use_loop: bool) -> None:
    world = open_world(ecosystem, where)
    pair = Child(world)
    pair.letters = [pair.new_letter() for _ in range(LETTERS)]  # the handler's
    committers: list[threading.Thread] = []

    def handler() -> None:
        if handler_op == "raise":
            if pair.raised:
                return  # one Ctrl-C per call: the unwinding of the first is not interrupted again
            pair.raised = True
            raise KeyboardInterrupt
        if held:
            committers.append(commit_meanwhile(world))
        for counter in ("d", "c"):  # another entity, then the one the main thread may be calling for
            try:
                pair.run(handler_op, counter, in_handler=True)
            except REFUSALS:
                pair.refused += 1

    stop = threading.Event()
    background = [0]
    lock = threading.Lock()

    def calling() -> None:
        while not stop.is_set():
            world.send_sync(Counter.post("c", Increment()))
            with lock:
                background[0] += 1

    def tasks() -> None:
        async def task() -> None:
            while not stop.is_set():
                await world.asend_sync(Counter.post("c", Increment()))
                with lock:
                    background[0] += 1

        async def all_tasks() -> None:
            await asyncio.gather(*(task() for _ in range(4)))

        asyncio.run(all_tasks())

    threads = [threading.Thread(target=tasks if use_loop and n == 0 else calling) for n in range(2 if use_loop else 3)]
    for thread in threads:
        thread.start()
    # A KeyboardInterrupt lands where Ctrl-C's would, not on a line's first step (see EveryLine).
    every_line = EveryLine(PACKAGE, handler, by_timer=handler_op == "raise")
    # At least ROUNDS rounds, and on while each round still lands on new lines: a handler
    # taking the letter the main thread is retrying stops that retry at the first line it
    # lands on, so each round gets only a little further.
    for _ in range(MAX_ROUNDS):
        if main_op in ("retry", "discard"):
            pair.next_letter = pair.new_letter()
        before = len(every_line.landed)
        pair.raised = False
        try:
            with every_line.tracing():
                pair.run(main_op, "c", in_handler=False)
        except KeyboardInterrupt:
            pair.interrupted(main_op)
        if len(every_line.landed) == before and len(pair.rounds_run) >= ROUNDS:
            break
        pair.rounds_run.append(len(every_line.landed) - before)
    stop.set()
    for thread in [*threads, *committers]:
        thread.join()
    pair.subscription.close()

    problems = []
    counts = {name: world.state(Counter.address(name)) for name in ("c", "d")}
    # Acknowledged (the main thread's, the handler's, the background's) <= count <= that and
    # the main thread's interrupted calls.
    low = {"c": pair.acked["c"] + background[0], "d": pair.acked["d"]}

    def fits() -> bool:
        return low["d"] == counts["d"] and low["c"] <= counts["c"] <= low["c"] + pair.aborted

    if main_op == "send" or handler_op == "send":  # a send is durable once it returns, applied soon after
        deadline = time.monotonic() + 10
        while not fits() and time.monotonic() < deadline:
            time.sleep(0.01)
            counts = {name: world.state(Counter.address(name)) for name in ("c", "d")}
    if not fits():
        problems.append(f"counts {counts}, acknowledged {low}, {pair.aborted} more interrupted")
    # Each letter ends up listed, applied (its gate took the work) or discarded: one of them.
    left = {letter.id for letter in world.dead_letters()}
    worked = {letter for gate, letter in pair.gates.items() if world.state(Picky.address(gate)).total}
    discarded = set(pair.discarded)
    for what, ids in (("applied and discarded", worked & discarded), ("listed and applied", left & worked),
                      ("listed and discarded", left & discarded), ("answered, not applied", set(pair.applied) - worked)):
        if ids:
            problems.append(f"letters {what}: {sorted(ids)}")
    lost = set(pair.gates.values()) - left - worked - discarded - pair.uncertain
    if lost:
        problems.append(f"letters neither listed, applied nor discarded: {sorted(lost)}")
    world.close()
    pair.loop.close()
    report = {
        "problems": problems, "lines": len(every_line.landed), "rounds": len(pair.rounds_run),
        "refused": pair.refused, "interrupted": pair.aborted + len(pair.uncertain),
    }
    print(json.dumps(report), flush=True)


def run_pair(
    ecosystem: str, main_op: str, handler_op: str, held: bool = False, use_loop: bool = False
) -> tuple[bool, str, dict[str, Any]]:
    """Run one pair in a child; return whether it passed, what happened, and its report."""
    where = ""
    if ecosystem == "localdisk":
        where = os.path.join(tempfile.gettempdir(), f"handler-fuzz-{uuid.uuid4().hex[:8]}.db")
    elif ecosystem == "postgres":
        where = f"fuzz_{uuid.uuid4().hex[:12]}"
    args = [sys.executable, "-m", "tests.handler_fuzz", "--child", ecosystem, where, main_op, handler_op]
    args += ["held"] if held else ["plain"]
    args += ["loop"] if use_loop else ["threads"]
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return False, f"hung (no exit in {TIMEOUT:g} s)", {}
    finally:
        cleanup(ecosystem, where)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return False, f"exit {done.returncode}: {done.stderr.strip()[-1500:]}", {}
    report: dict[str, Any] = json.loads(lines[-1])
    if report["problems"]:
        return False, "; ".join(report["problems"]), report
    detail = f"{report['lines']} lines in {report['rounds']} rounds, {report['refused']} refused"
    if handler_op == "raise":
        detail += f", {report['interrupted']} calls interrupted"
    return True, detail, report


def cleanup(ecosystem: str, where: str) -> None:
    if ecosystem == "localdisk":
        for suffix in ("", "-wal", "-shm", ".lock"):
            try:
                os.unlink(where + suffix)
            except FileNotFoundError:
                pass
    elif ecosystem == "postgres":
        from pachyderm_typed.ecosystems import Postgres
        from tests.helpers_postgres.support import DSN

        Postgres.drop_namespace(DSN, where)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        ecosystem, where, main_op, handler_op, held, use_loop = argv[1:7]
        child(ecosystem, where, main_op, handler_op, held == "held", use_loop == "loop")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ecosystem", action="append", choices=("inmemory", "localdisk", "postgres"))
    parser.add_argument("--held", action="store_true", help="another thread holds the commit lock as each handler runs")
    parser.add_argument("--loop", action="store_true", help="background callers: asyncio tasks and a thread")
    parser.add_argument("--only", action="append", metavar="MAIN:HANDLER", help="just these pairs")
    options = parser.parse_args(argv)
    ecosystems = options.ecosystem or ["inmemory", "localdisk", "postgres"]
    pairs = [tuple(pair.split(":")) for pair in options.only] if options.only else [
        (main_op, handler_op) for main_op in OPERATIONS for handler_op in HANDLER_OPERATIONS
    ]
    failed = 0
    for ecosystem in ecosystems:
        if options.held and ecosystem == "postgres":
            print("postgres: --held does not apply (no commit lock)", flush=True)
            continue
        started = time.monotonic()
        ran = 0
        for main_op, handler_op in pairs:
            if handler_op == "raise" and ecosystem == "inmemory":
                continue  # in memory, Ctrl-C may strand other threads' calls (see the README)
            ran += 1
            ok, detail, _ = run_pair(ecosystem, main_op, handler_op, options.held, options.loop)
            failed += not ok
            print(f"{ecosystem:9} {main_op:>12} / {handler_op:<12} {'ok  ' if ok else 'FAIL'} {detail}", flush=True)
        print(f"{ecosystem}: {ran} pairs in {time.monotonic() - started:.0f} s", flush=True)
    print(f"{failed} failed" if failed else "all pairs clean", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

