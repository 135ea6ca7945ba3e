"""Simulation benchmark: distinct worlds per second, memory per world, orderings vs worlds, parallel speedup.

    .venv/bin/python bench/bench_simulation.py            # default run, under a minute
    .venv/bin/python bench/bench_simulation.py --quick    # smaller sizes, a few seconds

The protocol is two-phase commit: a coordinator asks n participants to prepare,
commits if all vote yes, aborts otherwise. Participant 0 is vetoed by the
outside world, so whether it votes yes depends on whether the veto or the
prepare request arrives first: the delivery order matters, and exhaust must
cover both. Anchors measured in the same run:

* the seed's exhaust (walk every ordering, no deduplication) on the same system;
* explore/exhaust with one worker against two.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Literal, Union

import attrs

from pachyderm_typed import Ecosystem, Entity, Envelope, Outbox
from pachyderm_typed.simulation import Network, Simulation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import janken  # noqa: E402

Phase = Literal["init", "waiting", "committed", "aborted"]


@attrs.frozen
class Begin:
    participants: int


@attrs.frozen
class Vote:
    participant: int
    yes: bool


@attrs.frozen
class Prepare: ...


@attrs.frozen
class Veto: ...


@attrs.frozen
class Decision:
    commit: bool


class Participant(Entity[int, Union[Prepare, Veto, Decision], tuple[int, str]]):
    """State: (own id, status); the id is in the state because activate sees only (message, state)."""

    def init(self, entity_id: int) -> tuple[int, str]:
        return (entity_id, "working")

    def activate(self, message: Prepare | Veto | Decision, state: tuple[int, str]) -> tuple[Outbox, tuple[int, str]]:
        me, status = state
        if isinstance(message, Decision):
            return [], (me, "committed" if message.commit else "aborted")
        if isinstance(message, Veto):
            return [], ((me, "vetoed") if status == "working" else state)
        if status == "working":
            return [Coordinator.post("tm", Vote(me, True))], (me, "prepared")
        if status == "vetoed":
            return [Coordinator.post("tm", Vote(me, False))], (me, "aborted")
        return [], state


class Coordinator(Entity[str, Union[Begin, Vote], tuple[Phase, int, int]]):
    """State: (phase, participants, yes votes so far)."""

    def init(self, entity_id: str) -> tuple[Phase, int, int]:
        return ("init", 0, 0)

    def activate(self, message: Begin | Vote, state: tuple[Phase, int, int]) -> tuple[Outbox, tuple[Phase, int, int]]:
        phase, n, yes = state
        if isinstance(message, Begin):
            return [Participant.post(i, Prepare()) for i in range(message.participants)], ("waiting", message.participants, 0)
        if phase != "waiting":
            return [], state
        if not message.yes:
            return [Participant.post(i, Decision(False)) for i in range(n)], ("aborted", n, yes)
        if yes + 1 == n:
            return [Participant.post(i, Decision(True)) for i in range(n)], ("committed", n, n)
        return [], ("waiting", n, yes + 1)


class TPC(Ecosystem[Coordinator | Participant]): ...


def two_phase_commit(n: int) -> list[Envelope[Any, Any]]:
    return [Coordinator.post("tm", Begin(n)), Participant.post(0, Veto())]


# -- the seed's exhaust: every ordering, no deduplication ------------------------------------


def walk_every_ordering(declaration: Any, envelopes: list[Envelope[Any, Any]]) -> tuple[int, int]:
    """(orderings, outcomes) the way the seed's exhaust did it: recursion over every delivery order."""
    impls = {cls: cls() for cls in declaration.__orig_bases__[0].__args__[0].__args__}
    outcomes = set()

    def walk(states: dict[Any, object], flight: list[tuple[Any, object]]) -> int:
        if not flight:
            outcomes.add(frozenset(states.items()))
            return 1
        total = 0
        for i, (address, message) in enumerate(flight):
            if (address, message) in flight[:i]:
                continue
            state = states[address] if address in states else impls[address.entity].init(address.id)
            outbox, new_state = impls[address.entity].activate(message, state)
            total += walk({**states, address: new_state}, flight[:i] + flight[i + 1:] + [(e.address, e.message) for e in outbox])
        return total

    return walk({}, [(e.address, e.message) for e in envelopes]), len(outcomes)


# -- measurements ------------------------------------------------------------------------------------


def timed_exhaust(n: int, network: Network = Network(), workers: int = 1) -> tuple[Any, float]:
    sim = Simulation(TPC)
    gc.collect()
    began = time.perf_counter()
    found = sim.exhaust(two_phase_commit(n), network=network, workers=workers)
    return found, time.perf_counter() - began


def bytes_per_world(n: int) -> tuple[int, float]:
    """Memory held by one exhaust's search (worlds, index, parents, interning), per world."""
    sim = Simulation(TPC)
    sim.exhaust(two_phase_commit(2))  # warm imports and caches outside the measurement
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    found = sim.exhaust(two_phase_commit(n))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return found.worlds, held / found.worlds


def row(*cells: object) -> str:
    return "  ".join(f"{c:>14}" if not isinstance(c, str) or not c.startswith("<") else f"{c[1:]:<30}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few seconds)")
    args = parser.parse_args()
    sizes = (4, 5, 6) if args.quick else (5, 6, 7)
    print(f"Simulation benchmark, Python {sys.version.split()[0]}, {os.cpu_count()} cores\n")

    print("1. exhaust, two-phase commit with n participants (reordering network, one core)")
    print(row("<system", "worlds", "transitions", "seconds", "worlds/s", "transitions/s"))
    for n in sizes:
        found, seconds = timed_exhaust(n)
        assert len(found.outcomes) > 1 and found.complete
        print(row(f"<2PC n={n}", f"{found.worlds:,}", f"{found.transitions:,}", f"{seconds:.2f}",
                  f"{found.worlds / seconds:,.0f}", f"{found.transitions / seconds:,.0f}"))
    for n, label, network in ((4, "lossy", Network.lossy()), (2, "duplicating", Network.duplicating()),
                              (5, "FIFO", Network.fifo())):
        found, seconds = timed_exhaust(n, network)
        assert found.complete, found.stopped_by
        print(row(f"<2PC n={n}, {label}", f"{found.worlds:,}", f"{found.transitions:,}", f"{seconds:.2f}",
                  f"{found.worlds / seconds:,.0f}", f"{found.transitions / seconds:,.0f}"))

    print("\n2. memory held per stored world (tracemalloc; goal <= 500 bytes)")
    print(row("<system", "worlds", "bytes/world"))
    for n in sizes:
        worlds, per_world = bytes_per_world(n)
        print(row(f"<2PC n={n}", f"{worlds:,}", f"{per_world:,.0f}"))

    print("\n3. delivery orderings against distinct worlds, same system")
    print(row("<system", "orderings", "worlds", "orderings/world", "outcomes"))
    for n in sizes[:-1]:
        found, _ = timed_exhaust(n)
        orderings = found.orderings
        assert orderings is not None
        print(row(f"<2PC n={n}", f"{orderings:,}", f"{found.worlds:,}", f"{orderings / found.worlds:,.0f}", len(found.outcomes)))
    for games in (1, 2, 3):
        found = Simulation(janken.Janken).exhaust(janken.games(games))
        orderings = found.orderings
        assert orderings is not None
        print(row(f"<janken, {games} game(s)", f"{orderings:,}", f"{found.worlds:,}",
                  f"{orderings / found.worlds:,.0f}", len(found.outcomes)))

    print("\n4. anchor: the seed's exhaust (every ordering walked) against deduplicated exhaust")
    print(row("<system", "orderings", "seed-style s", "exhaust s", "speedup"))
    anchors: list[tuple[str, Any, list[Envelope[Any, Any]]]] = [
        ("janken, 2 games", janken.Janken, janken.games(2)),
        ("2PC n=3", TPC, two_phase_commit(3)),
    ]
    for label, declaration, envelopes in anchors:
        began = time.perf_counter()
        orderings, outcomes = walk_every_ordering(declaration, envelopes)
        naive = time.perf_counter() - began
        began = time.perf_counter()
        found = Simulation(declaration).exhaust(envelopes)
        fast = time.perf_counter() - began
        assert (found.orderings, len(found.outcomes)) == (orderings, outcomes)
        print(row(f"<{label}", f"{orderings:,}", f"{naive:.3f}", f"{fast:.4f}", f"{naive / fast:,.0f}x"))

    print("\n5. serial against parallel (forked workers; same results, checked)")
    print(row("<search", "workers", "seconds", "speedup"))
    runs = 4_000 if args.quick else 40_000
    base: float | None = None
    check: tuple[int, int, int] | None = None
    for workers in (1, 2):
        began = time.perf_counter()
        sampled = Simulation(TPC).explore(two_phase_commit(6), seed=1, runs=runs, workers=workers)
        seconds = time.perf_counter() - began
        base = base or seconds
        print(row(f"<explore 2PC n=6, {runs:,} runs", workers, f"{seconds:.2f}", f"{base / seconds:.2f}x"))
        check = check or (sampled.worlds, sampled.transitions, len(sampled.outcomes))
        assert check == (sampled.worlds, sampled.transitions, len(sampled.outcomes)), (check, sampled.summary())
    base = None
    check = None
    n = sizes[-1]
    for workers in (1, 2):
        found, seconds = timed_exhaust(n, workers=workers)
        base = base or seconds
        print(row(f"<exhaust 2PC n={n}", workers, f"{seconds:.2f}", f"{base / seconds:.2f}x"))
        check = check or (found.worlds, found.transitions, len(found.outcomes))
        assert check == (found.worlds, found.transitions, len(found.outcomes))


if __name__ == "__main__":
    main()
