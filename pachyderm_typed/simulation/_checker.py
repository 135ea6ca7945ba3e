"""The checker: breadth-first exhaustive search and reproducible random exploration.

``exhaust`` visits every distinct world once (worlds are deduplicated by entity
states + multiset of messages in flight), level by level, so the first time it
meets a world is by a shortest path: counterexamples and witnesses are shortest
traces. Per world it stores the key (two small tuples of ints), its index in the
dict and its parent's index; traces are rebuilt on demand by replaying the path.

While searching it also counts *orderings*, the delivery sequences a search
without deduplication would walk: ``ways(child) += ways(parent)`` along each
transition. That is exact when every transition goes one level deeper, which is
checked as it goes; otherwise the count is reported as unknown.
"""

from __future__ import annotations

import functools
import random
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._kernel import activating
from pachyderm_typed.simulation._model import (
    DELIVER,
    DROP,
    DUPLICATE,
    OUTSIDE,
    Action,
    History,
    Model,
    States,
    WorldKey,
    _freeze,
    with_state,
)
from pachyderm_typed.simulation._network import Network
from pachyderm_typed.simulation._properties import Predicate, Properties
from pachyderm_typed.simulation._report import Trace, build_trace
from pachyderm_typed.simulation._results import Exploration, Failure, SimulatedWorld, Violation


@attrs.frozen(eq=False)
class Problem:
    """What a search explores: the entities at ``states`` with ``envelopes`` in flight on ``network``.

    Every search checks ``invariants`` and looks for ``goals``; ``base_history``
    is what each entity received before the search began (for failure reports).
    """

    model: Model
    states: Mapping[Address[Any, Any, Any], object]
    envelopes: Sequence[Envelope[Any, Any]]
    network: Network
    invariants: Mapping[str, Predicate]
    goals: Mapping[str, Predicate]
    base_history: History

    def start(self) -> WorldKey:
        """The starting world (interned in ``model``); call inside ``activating()``."""
        return self.model.start(self.states, self.envelopes, self.network)

    def properties(self) -> Properties:
        """A fresh record of which invariants and goals are still undecided."""
        return Properties(self.model, self.network.ordered, self.invariants, self.goals)


class _Stop(Exception):
    """max_worlds reached: leave the nested loops."""


class Search:
    """The raw result of a breadth-first search (ids index ``worlds``)."""

    __slots__ = ("worlds", "parent", "transitions", "depth", "orderings", "stopped_by", "failures")

    def __init__(self) -> None:
        self.worlds: list[WorldKey] = []
        self.parent = array("q")
        self.transitions = 0
        self.depth = 0
        self.orderings: int | None = 0
        self.stopped_by: str | None = None
        self.failures: dict[tuple[int, int], tuple[int, Action]] = {}  # (mid, sid) -> first (world id, action)


def search(
    model: Model, start: WorldKey, network: Network, props: Properties, max_depth: int | None, max_worlds: int | None
) -> Search:
    """Breadth-first search from ``start``; call inside ``activating()``."""
    found = Search()
    worlds = found.worlds
    parent = found.parent
    failures = found.failures
    index: dict[WorldKey, int] = {start: 0}
    worlds.append(start)
    parent.append(-1)
    ways: list[int] = [1]
    orderings = 0
    graded = True
    transitions = 0
    limit = max_worlds if max_worlds is not None else -1
    checking = props.active
    if checking:
        props.check(start, 0)
        checking = props.active
    fast = not (network.ordered or network.drops or network.duplicates)
    memo = model.memo
    message_slot = model.message_slot
    transition = model.transition
    successors = model.successors
    index_get = index.get
    worlds_append = worlds.append
    parent_append = parent.append
    level_start, level_end, depth = 0, 1, 0
    try:
        while level_start < level_end:
            found.depth = depth
            if max_depth is not None and depth >= max_depth:
                unfinished = sum(1 for wid in range(level_start, level_end) if worlds[wid][1])
                if unfinished:
                    found.stopped_by = (
                        f"max_depth={max_depth} ({unfinished:,} worlds at that depth still had messages in flight)"
                    )
                break
            next_ways: list[int] = []
            next_append = next_ways.append
            for wid in range(level_start, level_end):
                world = worlds[wid]
                states, flight = world
                w = ways[wid - level_start]
                if not flight:
                    orderings += w
                    continue
                if fast:
                    # The hot loop (reordering), inlined here and in _Worker.expand: a shared generator costs ~6%.
                    n = len(states)
                    previous = -1
                    for i, entry in enumerate(flight):
                        if entry == previous:
                            continue
                        previous = entry
                        mid = entry >> 3
                        slot = message_slot[mid]
                        sid = states[slot] if slot < n else 0
                        done = memo[mid].get(sid)
                        if done is None:
                            done = transition(mid, sid)
                        new_sid, sent, error = done
                        if error is not None and (mid, sid) not in failures:
                            failures[(mid, sid)] = (wid, (DELIVER, entry))
                        rest = flight[:i] + flight[i + 1:]
                        child = (
                            states if new_sid == sid else with_state(states, slot, new_sid),
                            tuple(sorted(rest + sent)) if sent else rest,
                        )
                        transitions += 1
                        j = index_get(child)
                        if j is None:
                            j = len(worlds)
                            index[child] = j
                            worlds_append(child)
                            parent_append(wid)
                            next_append(w)
                            if checking:
                                props.check(child, j)
                                checking = props.active
                            if j + 1 == limit:
                                raise _Stop
                        elif j >= level_end:
                            next_ways[j - level_end] += w
                        else:
                            graded = False
                    continue
                # Other networks: the same bookkeeping, not shared with the loop above for the same reason.
                for action, child in successors(world, network):
                    kind, entry = action
                    if kind != DROP:
                        mid = entry >> 3
                        slot = message_slot[mid]
                        sid = states[slot] if slot < len(states) else 0
                        if memo[mid][sid][2] is not None and (mid, sid) not in failures:
                            failures[(mid, sid)] = (wid, action)
                    transitions += 1
                    j = index_get(child)
                    if j is None:
                        j = len(worlds)
                        index[child] = j
                        worlds_append(child)
                        parent_append(wid)
                        next_append(w)
                        if checking:
                            props.check(child, j)
                            checking = props.active
                        if j + 1 == limit:
                            raise _Stop
                    elif j >= level_end:
                        next_ways[j - level_end] += w
                    else:
                        graded = False
            ways = next_ways
            level_start, level_end = level_end, len(worlds)
            if level_start < level_end:
                depth += 1
    except _Stop:
        found.stopped_by = f"max_worlds={max_worlds:,}"
        found.depth = depth + 1
    found.transitions = transitions
    found.orderings = orderings if graded and found.stopped_by is None else None
    return found


def path_to(found: Search, wid: int) -> list[WorldKey]:
    keys = []
    while wid >= 0:
        keys.append(found.worlds[wid])
        wid = found.parent[wid]
    keys.reverse()
    return keys


def _action_between(model: Model, network: Network, before: WorldKey, after: WorldKey) -> Action:
    for action, child in model.successors(before, network):
        if child == after:
            return action
    raise AssertionError(f"internal error: no transition links {before} to {after}")


def _trace(
    model: Model, network: Network, base_history: History, keys: Sequence[WorldKey], last: Action | None = None
) -> Trace:
    moves = [(_action_between(model, network, a, b), a[0], b[0]) for a, b in zip(keys, keys[1:])]
    end = keys[-1]
    if last is not None:  # one more step from the last world (a failing delivery)
        for action, child in model.successors(end, network):
            if action == last:
                moves.append((action, end[0], child[0]))
                end = child
                break
    return build_trace(model, moves, model.decode_flight(end[1], network.ordered), base_history)


def exhaust(problem: Problem, *, max_depth: int | None, max_worlds: int | None, workers: int = 1) -> Exploration[Any]:
    """Every world breadth-first (see ``search``); ``workers > 1`` splits the search across forked processes."""
    _check_limits(max_depth=max_depth, max_worlds=max_worlds)
    if workers > 1:
        from pachyderm_typed.simulation._parallel import parallel_exhaust  # here: _parallel imports this module

        return parallel_exhaust(problem, max_depth=max_depth, max_worlds=max_worlds, workers=workers)
    model, network = problem.model, problem.network
    began = time.perf_counter()
    with activating():
        start = problem.start()
        props = problem.properties()
        found = search(model, start, network, props, max_depth, max_worlds)
    elapsed = time.perf_counter() - began
    worlds = found.worlds
    return exhausted(
        problem,
        path=functools.partial(path_to, found),
        outcomes=[(wid, key[0]) for wid, key in enumerate(worlds) if not key[1]],
        violated=props.violated,
        reached=props.reached,
        failures=found.failures.values(),
        worlds=len(worlds),
        transitions=found.transitions,
        depth=found.depth,
        stopped_by=found.stopped_by,
        elapsed=elapsed,
        reachable=lambda: frozenset(key[0] for key in worlds),
        count_orderings=functools.partial(_orderings, model, network, found),
        orderings=found.orderings,
    )


def exhausted(
    problem: Problem,
    *,
    path: Callable[[int], Sequence[WorldKey]],
    outcomes: Iterable[tuple[int, States]],
    violated: Mapping[str, int],
    reached: Mapping[str, int],
    failures: Iterable[tuple[int, Action]],
    worlds: int,
    transitions: int,
    depth: int,
    stopped_by: str | None,
    elapsed: float,
    reachable: Callable[[], frozenset[States]] | None = None,
    count_orderings: Callable[[], int | None] | None = None,
    orderings: int | None = None,
) -> Exploration[Any]:
    """What an exhaustive search (serial or parallel) found, as an ``Exploration``.

    Worlds are named by the search's own ids: ``path(id)`` is the worlds from the
    start to that one, and ``failures`` pairs a world id with the failing step
    taken from it. Traces are rebuilt from the paths (an outcome's on first use).
    ``orderings``: counted during the search, else ``count_orderings`` counts them on demand.
    """
    model, network, base_history = problem.model, problem.network, problem.base_history

    def trace_to(wid: int, last: Action | None = None) -> Trace:
        return _trace(model, network, base_history, path(wid), last)

    initial = functools.partial(model.state_of, ())
    return Exploration(
        mode="exhaust",
        network=network,
        outcomes=tuple(
            SimulatedWorld[Any](model.decode_states(states), initial, (), functools.partial(trace_to, wid), states)
            for wid, states in outcomes
        ),
        worlds=worlds,
        transitions=transitions,
        depth=depth,
        stopped_by=stopped_by,
        violations=tuple(Violation(name, trace_to(wid)) for name, wid in violated.items()),
        goals={name: (trace_to(reached[name]) if name in reached else None) for name in problem.goals},
        failures=tuple(_failure(trace_to(wid, action)) for wid, action in failures),
        elapsed=elapsed,
        reachable=reachable,
        count_orderings=count_orderings,
        _cache={"orderings": orderings} if orderings is not None else {},
    )


def _orderings(model: Model, network: Network, found: Search) -> int | None:
    """Count the maximal paths from the start by a depth-first pass (``None``: incomplete, or a cycle)."""
    if found.stopped_by is not None:
        return None
    if found.orderings is not None:
        return found.orderings
    worlds = found.worlds
    index = {key: wid for wid, key in enumerate(worlds)}
    count = [0] * len(worlds)
    status = bytearray(len(worlds))  # 0 unseen, 1 on the current path, 2 counted
    children: dict[int, list[int]] = {}
    stack = [0]
    with activating():
        while stack:
            wid = stack[-1]
            if status[wid] == 0:
                status[wid] = 1
                kids = children[wid] = [index[child] for _, child in model.successors(worlds[wid], network)]
                for kid in kids:
                    if status[kid] == 1:
                        return None  # a cycle: infinitely many orderings
                    if status[kid] == 0:
                        stack.append(kid)
                continue
            stack.pop()
            if status[wid] == 2:
                continue
            kids = children.pop(wid)
            count[wid] = sum(count[kid] for kid in kids) if kids else 1
            status[wid] = 2
    return count[0]


def _failure(trace: Trace, seed: int | None = None) -> Failure:
    error = trace.steps[-1].error
    assert error is not None
    return Failure(error, trace, seed)


def _check_limits(**limits: int | None) -> None:
    for name, value in limits.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")


Moves = list[tuple[Action, States, States]]
FlightList = list[tuple[int, int]]  # (entry, channel) in the order sent


class Sample:
    """The raw result of random runs: what ``explore`` reports, before decoding."""

    __slots__ = ("seen", "outcomes", "failures", "violated", "reached", "transitions", "deepest", "unfinished")

    def __init__(self) -> None:
        self.seen: set[WorldKey] = set()
        self.outcomes: dict[States, tuple[int, Moves]] = {}  # first (run seed, moves) reaching it
        self.failures: dict[tuple[int, int], tuple[int, Moves, FlightList]] = {}  # (mid, sid) -> first run
        self.violated: dict[str, tuple[int, Moves, FlightList]] = {}
        self.reached: dict[str, tuple[int, Moves, FlightList]] = {}
        self.transitions = 0
        self.deepest = 0
        self.unfinished = 0


def sample(problem: Problem, *, seed: int, runs: range, max_steps: int) -> Sample:
    """Random runs; run ``r`` draws its choices from ``random.Random(seed + r)``.

    Choices are made among the messages in flight in the order they were sent,
    so a schedule depends on the seed only, never on interning order:
    ``explore(seed=seed + r, runs=1)`` replays run ``r``.
    """
    model, network = problem.model, problem.network
    ordered, drops, budget = network.ordered, network.drops, network.duplicates
    message_slot = model.message_slot
    found = Sample()
    seen, outcomes, failures = found.seen, found.outcomes, found.failures
    with activating():
        start = problem.start()
        start_flight = [
            (model.message_id(env.address, env.message) << 3 | budget, model.channel(OUTSIDE, model.slot(env.address)))
            for env in problem.envelopes
        ]
        props = problem.properties()
        seen.add(start)
        if props.active:
            props.check(start, (seed + runs.start, [], list(start_flight)))
        for r in runs:
            rng = random.Random(seed + r)
            world_states: States = start[0]
            flight = list(start_flight)
            moves: Moves = []
            while flight:
                if len(moves) >= max_steps:
                    found.unfinished += 1
                    break
                choices: list[tuple[int, int]] = []
                heads: set[int] = set()
                for i, (entry, channel) in enumerate(flight):
                    if not ordered or channel not in heads:
                        heads.add(channel)
                        choices.append((DELIVER, i))
                        if entry & 7:
                            choices.append((DUPLICATE, i))
                    if drops:
                        choices.append((DROP, i))
                kind, i = choices[rng.randrange(len(choices))]
                entry, channel = flight[i]
                new_states = world_states
                if kind == DROP:
                    del flight[i]
                else:
                    mid = entry >> 3
                    slot = message_slot[mid]
                    sid = world_states[slot] if slot < len(world_states) else 0
                    new_sid, sent, error = model.transition(mid, sid)
                    if new_sid != sid:
                        new_states = with_state(world_states, slot, new_sid)
                    if kind == DELIVER:
                        del flight[i]
                    else:
                        flight[i] = (entry - 1, channel)
                    for out in sent:
                        flight.append((out | budget, model.channel(slot, message_slot[out >> 3]) if ordered else 0))
                    if error is not None and (mid, sid) not in failures:
                        failures[(mid, sid)] = (seed + r, [*moves, ((kind, entry), world_states, new_states)], list(flight))
                moves.append(((kind, entry), world_states, new_states))
                world_states = new_states
                key = _key(world_states, flight, ordered)
                if key not in seen:
                    seen.add(key)
                    if props.active:
                        props.check(key, (seed + r, list(moves), list(flight)))
            found.transitions += len(moves)
            found.deepest = max(found.deepest, len(moves))
            if not flight and world_states not in outcomes:
                outcomes[world_states] = (seed + r, moves)
    found.violated = props.violated
    found.reached = props.reached
    return found


def explore(problem: Problem, *, seed: int, runs: int, max_steps: int, workers: int = 1) -> Exploration[Any]:
    """``runs`` random schedules from ``seed`` (see ``sample``), decoded into an ``Exploration``.

    ``workers > 1`` splits the runs across forked processes, with the same results.
    """
    _check_limits(runs=runs, max_steps=max_steps)
    began = time.perf_counter()
    if workers > 1:
        from pachyderm_typed.simulation._parallel import parallel_sample  # here: _parallel imports this module

        found, worlds = parallel_sample(problem, seed=seed, runs=runs, max_steps=max_steps, workers=workers)
    else:
        found = sample(problem, seed=seed, runs=range(runs), max_steps=max_steps)
        worlds = len(found.seen)
    elapsed = time.perf_counter() - began
    model, base_history = problem.model, problem.base_history

    def trace(moves: Moves, flight: FlightList) -> Trace:
        in_flight = tuple(model.envelope(entry) for entry, _ in flight)
        return build_trace(model, moves, in_flight, base_history)

    initial = functools.partial(model.state_of, ())
    return Exploration(
        mode="explore",
        network=problem.network,
        outcomes=tuple(
            SimulatedWorld[Any](model.decode_states(key), initial, (), trace(moves, []), key)
            for key, (_, moves) in found.outcomes.items()
        ),
        worlds=worlds,
        transitions=found.transitions,
        depth=found.deepest,
        stopped_by=(
            f"max_steps={max_steps} ({found.unfinished} of {runs} runs still had messages in flight)"
            if found.unfinished else None
        ),
        violations=tuple(
            Violation(name, trace(moves, flight), run_seed) for name, (run_seed, moves, flight) in found.violated.items()
        ),
        goals={
            name: (trace(found.reached[name][1], found.reached[name][2]) if name in found.reached else None)
            for name in problem.goals
        },
        failures=tuple(_failure(trace(moves, flight), run_seed) for run_seed, moves, flight in found.failures.values()),
        elapsed=elapsed,
        runs=runs,
        seed=seed,
    )


def _key(states: States, flight: list[tuple[int, int]], ordered: bool) -> WorldKey:
    if not ordered:
        return states, tuple(sorted(entry for entry, _ in flight))
    queues: dict[int, list[int]] = {}
    for entry, channel in flight:
        queues.setdefault(channel, []).append(entry)
    return states, _freeze(queues)
