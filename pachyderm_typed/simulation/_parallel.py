"""The seed's "Cohort": searching across worker processes.

Workers are forked, so each starts with the simulation's entities, interning
tables and memo, and nothing user-defined has to be pickled to start them.
They answer with plain numbers, and the parent rebuilds every trace it reports
by replaying: a random run from its seed, an exhaustive path by matching
*fingerprints*. A fingerprint is a hash of a world's values (not of its
interned ids, which differ between processes); forked workers inherit the hash
secret, so they agree on it. Fingerprints only count and locate worlds; the
parent re-checks every world it reports with its own tables.

``explore``: runs are split into contiguous ranges, one per worker; the results
are the serial ones (same seeds, same traces) and scale with the cores.

``exhaust``: see :func:`parallel_exhaust`.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import pickle
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from pachyderm_typed._address import Address, make_address
from pachyderm_typed._entity import Entity
from pachyderm_typed._kernel import activating
from pachyderm_typed.simulation._checker import Problem, Sample, exhausted, sample
from pachyderm_typed.simulation._errors import SimulationError
from pachyderm_typed.simulation._model import DELIVER, DROP, Action, Model, States, WorldKey, with_state
from pachyderm_typed.simulation._network import Network
from pachyderm_typed.simulation._properties import Properties
from pachyderm_typed.simulation._results import Exploration

MASK = (1 << 64) - 1


def _mix(h: int) -> int:
    """splitmix64's finalizer: world fingerprints are *sums* of value hashes, and CPython's hashes of
    related tuples are too regular for that (swapped states collide); mixing makes sums safe."""
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & MASK
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & MASK
    return h ^ (h >> 31)


class Fingerprints:
    """Hashes of world contents that every forked worker computes alike (cached per interned id)."""

    __slots__ = ("model", "_states", "_entries", "_channels")

    def __init__(self, model: Model) -> None:
        self.model = model
        self._states: dict[tuple[int, int], int] = {}
        self._entries: dict[int, int] = {}
        self._channels: dict[int, int] = {}

    def state(self, slot: int, sid: int) -> int:
        key = (slot, sid)
        h = self._states.get(key)
        if h is None:
            model = self.model
            h = self._states[key] = _mix(hash((model.addresses[slot], model.state_values[slot][sid])) & MASK)
        return h

    def failure(self, mid: int, sid: int) -> int:
        """Of a (message, receiver's state) pair: which activation failed."""
        return hash((self.model.messages[mid], self.state(self.model.message_slot[mid], sid)))

    def entry(self, entry: int) -> int:
        h = self._entries.get(entry)
        if h is None:
            h = self._entries[entry] = _mix(hash((self.model.messages[entry >> 3], entry & 7)) & MASK)
        return h

    def states(self, states: States) -> int:
        return sum(self.state(slot, sid) for slot, sid in enumerate(states) if sid) & MASK

    def world(self, key: WorldKey, ordered: bool) -> int:
        states, flight = key
        if not ordered:
            in_flight = sum(self.entry(e) for e in flight) & MASK
        else:
            in_flight = sum(_mix(hash((self.channel(q[0]), tuple(map(self.entry, q[1:])))) & MASK) for q in flight) & MASK
        return hash((self.states(states), in_flight))

    def channel(self, cid: int) -> int:
        h = self._channels.get(cid)
        if h is None:
            addresses = self.model.addresses
            for (sender, receiver), known in self.model.channels.items():
                if known == cid:
                    h = hash((addresses[sender] if sender >= 0 else None, addresses[receiver]))
            assert h is not None
            self._channels[cid] = h
        return h


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _require_fork(workers: int) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not fork_available():
        raise SimulationError(
            "parallel search forks worker processes, which this platform cannot do: use workers=1"
        )


def _child(job: Callable[[], object], conn: Connection) -> None:
    try:
        conn.send_bytes(pickle.dumps(("ok", job())))
    except BaseException:
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    finally:
        conn.close()


def run_forked(jobs: Sequence[Callable[[], object]]) -> list[Any]:
    """Run each job in a forked process; return their (plain, picklable) results in order."""
    context = multiprocessing.get_context("fork")
    started = []
    for job in jobs:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(job, sender), daemon=True)
        process.start()
        sender.close()
        started.append((process, receiver))
    results = []
    failure = None
    for process, receiver in started:
        try:
            status, value = pickle.loads(receiver.recv_bytes())
        except EOFError:
            status, value = "error", f"worker {process.pid} died without an answer (exit code {process.exitcode})"
        receiver.close()
        process.join()
        if status == "error" and failure is None:
            failure = value
        results.append(value)
    if failure is not None:
        raise SimulationError(f"a search worker failed:\n{failure}")
    return results


# -- explore ------------------------------------------------------------------------------


def parallel_sample(problem: Problem, *, seed: int, runs: int, max_steps: int, workers: int) -> tuple[Sample, int]:
    """``sample`` with its runs split across ``workers`` forked processes; the serial results, and the worlds seen."""
    _require_fork(workers)
    model, network = problem.model, problem.network
    bounds = [runs * k // workers for k in range(workers + 1)]
    chunks = [range(bounds[k], bounds[k + 1]) for k in range(workers) if bounds[k] < bounds[k + 1]]

    def job(chunk: range) -> dict[str, Any]:
        found = sample(problem, seed=seed, runs=chunk, max_steps=max_steps)
        prints = Fingerprints(model)
        return {
            "seen": {prints.world(key, network.ordered) for key in found.seen},
            "outcomes": {prints.states(key): run for key, (run, _) in found.outcomes.items()},
            "failures": {prints.failure(mid, sid): run for (mid, sid), (run, _, _) in found.failures.items()},
            "violated": {name: where[0] for name, where in found.violated.items()},
            "reached": {name: where[0] for name, where in found.reached.items()},
            "counts": (found.transitions, found.deepest, found.unfinished),
        }

    answers = run_forked([functools.partial(job, chunk) for chunk in chunks])

    # Merge: the smallest run seed wins, as in a serial run; then replay those runs here.
    merged = Sample()
    seen: set[int] = set()
    firsts: dict[str, dict[Any, int]] = {"outcomes": {}, "failures": {}, "violated": {}, "reached": {}}
    for answer in answers:
        seen |= answer["seen"]
        transitions, deepest, unfinished = answer["counts"]
        merged.transitions += transitions
        merged.deepest = max(merged.deepest, deepest)
        merged.unfinished += unfinished
        for part, first in firsts.items():
            for key, run_seed in answer[part].items():
                if key not in first or run_seed < first[key]:
                    first[key] = run_seed
    for run_seed in sorted({run_seed for first in firsts.values() for run_seed in first.values()}):
        replay = sample(problem, seed=run_seed, runs=range(1), max_steps=max_steps)
        for key, found in replay.outcomes.items():
            merged.outcomes.setdefault(key, found)
        for failure_key, failed in replay.failures.items():
            merged.failures.setdefault(failure_key, failed)
        for name, where in replay.violated.items():
            if firsts["violated"].get(name) == run_seed:
                merged.violated[name] = where
        for name, where in replay.reached.items():
            if firsts["reached"].get(name) == run_seed:
                merged.reached[name] = where
    return merged, len(seen)


# -- exhaust -----------------------------------------------------------------------------------
#
# Hash-partitioned, level-synchronous breadth-first search. Worker k owns the
# worlds whose fingerprint is k modulo the number of workers: it stores them,
# checks properties on them and expands them. A successor owned by another
# worker is forwarded once, as interned ids plus the values (the "vocabulary")
# that peer has not been sent yet; the receiver re-interns them. The parent
# only routes bytes between levels and, at the end, asks for the fingerprint
# path of every world it reports and replays it with its own tables.

_KINDS: dict[str, type[Entity[Any, Any, Any]]] = {}  # kind -> entity class, for unpickling addresses in the workers


def _address(kind: str, entity_id: object) -> Address[Any, Any, Any]:
    return make_address(_KINDS[kind], entity_id)


class _Pickler(pickle.Pickler):
    """Addresses refuse pickling (they are stored through the codec); between our own forked
    processes they travel as (kind, id)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Address:
            return _address, (obj.entity.kind, obj.id)
        return NotImplemented


def _dumps(value: object) -> bytes:
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise SimulationError(
            f"parallel exhaust sends states and messages between processes, and one cannot be pickled ({exc}): "
            "define message and state classes at module level, or use workers=1"
        ) from exc
    return buffer.getvalue()


class _Worker:
    """One forked process's share of the search."""

    def __init__(
        self, me: int, count: int, model: Model, start: WorldKey, network: Network, props: Properties
    ) -> None:
        self.me, self.count, self.model, self.network, self.props = me, count, model, network, props
        self.prints = Fingerprints(model)
        self.index: dict[WorldKey, int] = {}
        self.worlds: list[WorldKey] = []
        self.parents: list[int] = []  # parent handle: worker + count * its local id; -1 for the start
        self.forwarded: set[WorldKey] = set()
        self.frontier: list[int] = []
        self.next: list[int] = []
        self.outbox: list[list[tuple[WorldKey, int]]] = [[] for _ in range(count)]
        self.exported: list[set[tuple[int, ...]]] = [set() for _ in range(count)]
        self.imports: list[tuple[dict[int, int], dict[tuple[int, int], int], dict[int, int]]] = [
            ({}, {}, {}) for _ in range(count)
        ]
        self.failures: dict[tuple[int, int], tuple[int, Action]] = {}
        self.news: dict[str, Any] = {}
        self.transitions = 0
        if self.prints.world(start, False) % count == me:
            self._own(start, -1)  # the first level_done() makes it the frontier

    def _own(self, key: WorldKey, parent: int) -> None:
        wid = len(self.worlds)
        self.index[key] = wid
        self.worlds.append(key)
        self.parents.append(parent)
        self.next.append(wid)
        props = self.props
        if props.active:
            before = (len(props.violated), len(props.reached))
            props.check(key, wid)
            if (len(props.violated), len(props.reached)) != before:
                self.news.setdefault("properties", []).append(wid)

    def _consider(self, child: WorldKey, parent: int) -> None:
        self.transitions += 1
        if child in self.index or child in self.forwarded:
            return
        owner = self.prints.world(child, False) % self.count
        if owner == self.me:
            self._own(child, parent)
        else:
            self.forwarded.add(child)
            self.outbox[owner].append((child, parent))

    def expand(self) -> dict[int, bytes]:
        """Expand this level's owned worlds; return the forwarded worlds, serialised per peer."""
        model, network, me, count, prints = self.model, self.network, self.me, self.count, self.prints
        memo, message_slot, failures = model.memo, model.message_slot, self.failures
        index, forwarded, outbox = self.index, self.forwarded, self.outbox
        transitions = 0
        fast = not (network.drops or network.duplicates)
        for wid in self.frontier:
            key = self.worlds[wid]
            states, flight = key
            handle = me + count * wid
            if fast:
                # search()'s hot loop (see there why it is written twice), plus fingerprints.
                n = len(states)
                previous = -1
                sums: tuple[int, int] | None = None  # of the parent's fingerprint, once a child is new
                for i, entry in enumerate(flight):
                    if entry == previous:
                        continue
                    previous = entry
                    mid = entry >> 3
                    slot = message_slot[mid]
                    sid = states[slot] if slot < n else 0
                    done = memo[mid].get(sid)
                    if done is None:
                        done = model.transition(mid, sid)
                    new_sid, sent, error = done
                    if error is not None and (mid, sid) not in failures:
                        failures[(mid, sid)] = (wid, (DELIVER, entry))
                    rest = flight[:i] + flight[i + 1:]
                    child = (
                        states if new_sid == sid else with_state(states, slot, new_sid),
                        tuple(sorted(rest + sent)) if sent else rest,
                    )
                    transitions += 1
                    if child in index or child in forwarded:
                        continue
                    # A fingerprint is a sum of per-value hashes: a child's is its parent's, adjusted.
                    if sums is None:
                        sums = (prints.states(states), sum(map(prints.entry, flight)))
                    child_states, child_flight = sums
                    if new_sid != sid:
                        child_states += (prints.state(slot, new_sid) if new_sid else 0) - (
                            prints.state(slot, sid) if sid else 0
                        )
                    child_flight += sum(map(prints.entry, sent)) - prints.entry(entry)
                    owner = hash((child_states & MASK, child_flight & MASK)) % count
                    if owner == me:
                        self._own(child, handle)
                    else:
                        forwarded.add(child)
                        outbox[owner].append((child, handle))
                continue
            for action, child in model.successors(key, network):
                kind, entry = action
                if kind != DROP:
                    mid = entry >> 3
                    slot = message_slot[mid]
                    sid = states[slot] if slot < len(states) else 0
                    if memo[mid][sid][2] is not None and (mid, sid) not in failures:
                        failures[(mid, sid)] = (wid, action)
                self._consider(child, handle)
        self.transitions += transitions
        blobs = {peer: _dumps((self._vocabulary(peer, items), items)) for peer, items in enumerate(self.outbox) if items}
        self.outbox = [[] for _ in range(count)]
        return blobs

    def _vocabulary(self, peer: int, items: list[tuple[WorldKey, int]]) -> tuple[list[Any], list[Any], list[Any]]:
        model, exported = self.model, self.exported[peer]
        slots: list[Any] = []
        states: list[Any] = []
        messages: list[Any] = []
        for (world_states, flight), _ in items:
            for slot, sid in enumerate(world_states):
                if sid and (slot, sid) not in exported:
                    if (slot,) not in exported:
                        exported.add((slot,))
                        slots.append((slot, model.addresses[slot]))
                    exported.add((slot, sid))
                    states.append((slot, sid, model.state_values[slot][sid]))
            for entry in flight:
                mid = entry >> 3
                if (-1, mid) not in exported:
                    exported.add((-1, mid))
                    messages.append((mid, *model.messages[mid]))
        return slots, states, messages

    def receive(self, blobs: list[tuple[int, bytes]]) -> None:
        model = self.model
        for source, blob in blobs:
            (slots, states, messages), items = pickle.loads(blob)
            slot_map, state_map, message_map = self.imports[source]
            for slot, address in slots:
                slot_map[slot] = model.slot(address)
            for slot, sid, value in states:
                state_map[(slot, sid)] = model.state_id(slot_map[slot], value)
            for mid, address, message in messages:
                message_map[mid] = model.message_id(address, message)
            for (world_states, flight), parent in items:
                placed = [0] * len(model.addresses)
                for slot, sid in enumerate(world_states):
                    if sid:
                        placed[slot_map[slot]] = state_map[(slot, sid)]
                while placed and not placed[-1]:
                    placed.pop()
                key = (tuple(placed), tuple(sorted(message_map[e >> 3] << 3 | (e & 7) for e in flight)))
                if key not in self.index:
                    self._own(key, parent)

    def level_done(self) -> dict[str, Any]:
        """Move to the next level; report what this level found."""
        self.frontier, self.next = self.next, []
        news, self.news = self.news, {}
        props = self.props
        report = {
            "frontier": len(self.frontier),
            "worlds": len(self.worlds),
            "transitions": self.transitions,
            "unfinished": sum(1 for wid in self.frontier if self.worlds[wid][1]),
            "violated": {name: wid for name, wid in props.violated.items() if wid in news.get("properties", ())},
            "reached": {name: wid for name, wid in props.reached.items() if wid in news.get("properties", ())},
        }
        return report

    def results(self) -> dict[str, Any]:
        prints = self.prints
        return {
            "outcomes": [wid for wid, key in enumerate(self.worlds) if not key[1]],
            "failures": {
                prints.failure(mid, sid): (wid, kind, prints.entry(entry))
                for (mid, sid), (wid, (kind, entry)) in self.failures.items()
            },
        }

    def parents_of(self, wids: list[int]) -> list[tuple[int, int]]:
        return [(self.parents[wid], self.prints.world(self.worlds[wid], False)) for wid in wids]


def _serve(worker_factory: Callable[[], _Worker], conn: Connection) -> None:
    try:
        with activating():
            worker = worker_factory()
            while True:
                command, payload = pickle.loads(conn.recv_bytes())
                if command == "stop":
                    break
                if command == "expand":
                    answer: object = worker.expand()
                elif command == "receive":
                    worker.receive(payload)
                    answer = worker.level_done()
                elif command == "results":
                    answer = worker.results()
                else:  # "parents"
                    answer = worker.parents_of(payload)
                conn.send_bytes(pickle.dumps(("ok", answer)))
    except BaseException:
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    finally:
        conn.close()


class _Cohort:
    """The parent's handles on the forked workers."""

    def __init__(self, factories: list[Callable[[], _Worker]]) -> None:
        context = multiprocessing.get_context("fork")
        self.links: list[tuple[Any, Connection]] = []
        for factory in factories:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_serve, args=(factory, child_end), daemon=True)
            process.start()
            child_end.close()
            self.links.append((process, parent_end))

    def ask(self, commands: Mapping[int, tuple[str, object]]) -> dict[int, Any]:
        for k, command in commands.items():
            self.links[k][1].send_bytes(pickle.dumps(command))
        answers = {}
        for k in commands:
            try:
                status, value = pickle.loads(self.links[k][1].recv_bytes())
            except EOFError:
                status, value = "error", f"worker {k} died without an answer"
            if status == "error":
                raise SimulationError(f"a search worker failed:\n{value}")
            answers[k] = value
        return answers

    def everyone(self, command: str, payload: object = None) -> list[Any]:
        answers = self.ask({k: (command, payload) for k in range(len(self.links))})
        return [answers[k] for k in range(len(self.links))]

    def close(self) -> None:
        for process, conn in self.links:
            try:
                conn.send_bytes(pickle.dumps(("stop", None)))
            except OSError:
                pass
            conn.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def parallel_exhaust(problem: Problem, *, max_depth: int | None, max_worlds: int | None, workers: int) -> Exploration[Any]:
    """``exhaust`` across ``workers`` forked processes (unordered networks).

    Same outcomes, counts, violations and failures as the serial search, with
    shortest traces. Differences: ``max_worlds`` is checked between levels (the
    count may pass it by up to one level), and orderings are not counted.
    """
    _require_fork(workers)
    model, network = problem.model, problem.network
    if network.ordered:
        raise SimulationError("parallel exhaust supports unordered networks only: use workers=1 with a FIFO network")
    began = time.perf_counter()
    _KINDS.update({spec.kind: spec.cls for spec in model.declaration.specs})
    with activating():
        start = problem.start()

    def factory(me: int) -> _Worker:
        return _Worker(me, workers, model, start, network, problem.properties())

    cohort = _Cohort([functools.partial(factory, k) for k in range(workers)])
    try:
        depth, stopped_by = 0, None
        violated: dict[str, int] = {}  # name -> handle, first (shallowest) report wins
        reached: dict[str, int] = {}
        reports = cohort.everyone("receive", [])
        while True:
            for k, report in enumerate(reports):
                for name, wid in report["violated"].items():
                    violated.setdefault(name, k + workers * wid)
                for name, wid in report["reached"].items():
                    reached.setdefault(name, k + workers * wid)
            worlds = sum(r["worlds"] for r in reports)
            if not sum(r["frontier"] for r in reports):
                break
            if max_depth is not None and depth >= max_depth:
                unfinished = sum(r["unfinished"] for r in reports)
                if unfinished:
                    stopped_by = f"max_depth={max_depth} ({unfinished:,} worlds at that depth still had messages in flight)"
                break
            if max_worlds is not None and worlds >= max_worlds:
                stopped_by = f"max_worlds={max_worlds:,} (checked between levels: {worlds:,} worlds visited)"
                break
            blobs = cohort.everyone("expand")
            routed = {k: ("receive", [(s, b[k]) for s, b in enumerate(blobs) if k in b]) for k in range(workers)}
            answers = cohort.ask(routed)
            reports = [answers[k] for k in range(workers)]
            if sum(r["frontier"] for r in reports):
                depth += 1
        transitions = sum(r["transitions"] for r in reports)
        results = cohort.everyone("results")
        outcome_handles = [k + workers * wid for k, result in enumerate(results) for wid in result["outcomes"]]
        failures: dict[int, tuple[int, int, int]] = {}
        for k, result in enumerate(results):
            for key, (wid, kind, entry_print) in result["failures"].items():
                failures.setdefault(key, (k + workers * wid, kind, entry_print))
        wanted = set(outcome_handles) | set(violated.values()) | set(reached.values()) | {f[0] for f in failures.values()}
        paths = _fingerprint_paths(cohort, workers, wanted)
    finally:
        cohort.close()

    replay = _Replay(model, network, start)
    keys = {handle: replay.follow(paths[handle]) for handle in wanted}
    elapsed = time.perf_counter() - began
    return exhausted(
        problem,
        path=keys.__getitem__,
        outcomes=[(handle, keys[handle][-1][0]) for handle in outcome_handles],
        violated=violated,
        reached=reached,
        failures=(
            (handle, replay.action(keys[handle][-1], kind, entry_print)) for handle, kind, entry_print in failures.values()
        ),
        worlds=worlds,
        transitions=transitions,
        depth=depth,
        stopped_by=stopped_by,
        elapsed=elapsed,
    )


def _fingerprint_paths(cohort: _Cohort, workers: int, wanted: set[int]) -> dict[int, list[int]]:
    """For each handle, the fingerprints of the worlds from the start to it (asked level by level)."""
    paths: dict[int, list[int]] = {handle: [] for handle in wanted}
    cursor = {handle: handle for handle in wanted}
    while cursor:
        by_worker: dict[int, list[int]] = {}
        for at in set(cursor.values()):
            by_worker.setdefault(at % workers, []).append(at // workers)
        answers = cohort.ask({k: ("parents", wids) for k, wids in by_worker.items()})
        step = {k + workers * wid: found for k, wids in by_worker.items() for wid, found in zip(wids, answers[k])}
        for handle in list(cursor):
            parent, fingerprint = step[cursor[handle]]
            paths[handle].append(fingerprint)
            if parent < 0:
                del cursor[handle]
            else:
                cursor[handle] = parent
    for path in paths.values():
        path.reverse()
    return paths


class _Replay:
    """Rebuilds worlds in the parent's own tables by following fingerprints from the start."""

    def __init__(self, model: Model, network: Network, start: WorldKey) -> None:
        self.model, self.network, self.start = model, network, start
        self.prints = Fingerprints(model)
        self.children: dict[WorldKey, dict[int, WorldKey]] = {}

    def follow(self, path: list[int]) -> list[WorldKey]:
        keys = [self.start]
        for fingerprint in path[1:]:
            here = keys[-1]
            children = self.children.get(here)
            if children is None:
                with activating():
                    found = self.model.successors(here, self.network)
                children = self.children[here] = {self.prints.world(child, False): child for _, child in found}
            keys.append(children[fingerprint])
        return keys

    def action(self, key: WorldKey, kind: int, entry_print: int) -> Action:
        with activating():
            for action, _ in self.model.successors(key, self.network):
                if action[0] == kind and self.prints.entry(action[1]) == entry_print:
                    return action
        raise AssertionError("internal error: the failing step cannot be found again")
