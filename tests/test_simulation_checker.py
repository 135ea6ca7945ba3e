"""Simulation checker: properties, random exploration, CALM checks, and the examples.

A brute-force oracle (every delivery order, by recursion, no deduplication, no
interning, calling the entities directly) pins the checker's counts of worlds,
orderings and outcomes on the examples.
"""

from __future__ import annotations

import collections
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pachyderm_typed import Address, Envelope
from pachyderm_typed.simulation import (
    Network,
    PropertyViolation,
    Simulation,
    check_calm,
    check_deterministic,
    check_duplicate_tolerant,
    check_loss_tolerant,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    module_name = f"_simulation_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


# The examples and the property below are shared with test_simulation_parallel.
janken = load_example("janken")
hello = load_example("calm_hello_world")

SERVER = hello.AppendingServer.address("server")
STREAM = hello.StreamServer.address("server")
FULL = "hello, world!"


def is_prefix(view: Any) -> bool:
    return bool(FULL.startswith(view.state(SERVER)))


# -- a brute-force oracle ---------------------------------------------------------------


def brute_force(declaration: Any, envelopes: Sequence[Envelope[Any, Any]]) -> tuple[int, int, set[frozenset[Any]]]:
    """(distinct worlds, orderings, outcomes) by walking every delivery order of a reordering network."""
    impls = {cls: cls() for cls in declaration.__orig_bases__[0].__args__[0].__args__}

    def initial(address: Address[Any, Any, Any]) -> object:
        return impls[address.entity].init(address.id)

    worlds: set[tuple[frozenset[Any], frozenset[Any]]] = set()
    outcomes: set[frozenset[Any]] = set()

    def walk(states: dict[Any, object], flight: list[tuple[Any, object]]) -> int:
        changed = frozenset((a, s) for a, s in states.items() if s != initial(a))
        worlds.add((changed, frozenset(collections.Counter(flight).items())))
        if not flight:
            outcomes.add(changed)
            return 1
        total = 0
        for i, (address, message) in enumerate(flight):
            if (address, message) in flight[:i]:
                continue  # identical messages are one choice
            state = states.get(address, initial(address))
            outbox, new_state = impls[address.entity].activate(message, state)
            rest = flight[:i] + flight[i + 1:] + [(e.address, e.message) for e in outbox]
            total += walk({**states, address: new_state}, rest)
        return total

    orderings = walk({}, [(e.address, e.message) for e in envelopes])
    return len(worlds), orderings, outcomes


@pytest.mark.parametrize(
    ("system", "declaration", "envelopes", "expected"),
    [
        ("janken, one game", janken.Janken, janken.games(1), (16, 14, 1)),
        ("janken, two games", janken.Janken, janken.games(2), (256, 181_104, 1)),
        # 3 chunks, each F (at the proxy) then C (at the server): 6!/2!^3 = 90 orderings;
        # worlds: sum over k done chunks of C(3,k) 2^(3-k) k! = 38, plus the start = 39.
        ("hello, appending", hello.Naive, hello.say(SERVER), (39, 90, 6)),
        ("hello, stream", hello.Confluent, hello.say(STREAM), (28, 90, 1)),
    ],
)
def test_counts_match_a_brute_force_walk(system: str, declaration: Any, envelopes: Any, expected: Any) -> None:
    found = Simulation(declaration).exhaust(envelopes)
    worlds, orderings, outcomes = brute_force(declaration, envelopes)
    assert (found.worlds, found.orderings, len(found.outcomes)) == expected == (worlds, orderings, len(outcomes))
    assert {frozenset(o.states.items()) for o in found.outcomes} == outcomes


def test_janken_one_game_has_one_outcome_under_every_order() -> None:
    sim = Simulation(janken.Janken)
    found = sim.exhaust(janken.games(1))
    assert (found.worlds, found.transitions, found.depth, found.orderings) == (16, 23, 6, 14)
    (outcome,) = found.outcomes
    alice, bob = janken.Player.address("alice"), janken.Player.address("bob")
    assert outcome.state(janken.Game.address("alice v bob")) == janken.Won(alice, bob)
    assert len(outcome.trace) == 6  # a shortest ordering: 1 start + 2 invites + 2 moves + 1 waiting


def test_janken_numbering_lobby_is_not_confluent() -> None:
    # The seed's lobby numbers games by arrival: with two games started at once, which pair
    # plays "game 1" depends on which request arrives first.
    sim = Simulation(janken.Janken, implementations={janken.Lobby: janken.NumberingLobby()})
    result = check_deterministic(sim, janken.games(2))
    assert not result.holds
    assert result.explanation.startswith("2 distinct outcomes")
    assert len(result.counterexamples) == 2
    assert check_deterministic(Simulation(janken.Janken), janken.games(2)).holds


# -- properties -----------------------------------------------------------------------------


def test_invariant_violation_comes_with_a_shortest_trace() -> None:
    found = Simulation(hello.Naive).exhaust(hello.say(SERVER), invariants={"text is a prefix": is_prefix})
    (violation,) = found.violations
    assert violation.name == "text is a prefix"
    # Shortest: the client sends, the proxy forwards a chunk other than the first, the server shows it.
    assert len(violation.trace) == 3
    last = violation.trace[-1]
    assert last.address == SERVER and last.after in (" world", "!")
    assert "does not hold after these 3 steps" in str(violation)
    with pytest.raises(PropertyViolation, match="text is a prefix"):
        found.check()
    # The search goes on after a violation: the outcomes are all there.
    assert len(found.outcomes) == 6


def test_invariant_broken_in_the_starting_world() -> None:
    sim = Simulation(hello.Naive)
    sim.send(SERVER.post(hello.Chunk(2, "!")))
    found = sim.exhaust(hello.say(SERVER), invariants={"text is a prefix": is_prefix})
    assert len(found.violations[0].trace) == 0


def test_invariants_hold_on_the_fifo_network() -> None:
    found = Simulation(hello.Naive).exhaust(
        hello.say(SERVER),
        network=Network.fifo(),
        invariants={"text is a prefix": is_prefix, "at most 3 in flight": lambda w: len(w.in_flight) <= 3},
    )
    assert found.ok and found.violations == ()
    found.check()


def test_goals_are_reached_with_a_witness_or_reported_unmet() -> None:
    found = Simulation(hello.Naive).exhaust(
        hello.say(SERVER),
        goals={"shouts first": lambda w: w.state(SERVER).startswith("!"), "never": lambda w: w.state(SERVER) == "?"},
    )
    witness = found.goals["shouts first"]
    assert witness is not None and len(witness) == 3 and witness[-1].after == "!"
    assert found.goals["never"] is None
    assert not found.ok
    with pytest.raises(PropertyViolation, match="goal 'never' was never reached"):
        found.check()


def test_a_predicate_that_raises_says_which_property() -> None:
    with pytest.raises(ZeroDivisionError) as caught:
        Simulation(hello.Naive).exhaust(hello.say(SERVER), invariants={"broken": lambda w: 1 / 0 > 0})
    assert "(raised by the invariant 'broken'" in caught.value.__notes__[0]


# -- random exploration -----------------------------------------------------------------------


def test_explore_is_reproducible() -> None:
    def sample() -> list[Any]:
        found = Simulation(hello.Naive).explore(hello.say(SERVER), seed=7, runs=25)
        return [(o.state(SERVER), o.processed) for o in found.outcomes] + [found.worlds, found.transitions]

    assert sample() == sample()


def test_explore_failure_prints_the_seed_that_replays_it() -> None:
    sim = Simulation(hello.Naive)
    found = sim.explore(hello.say(SERVER), seed=100, runs=50, invariants={"prefix": is_prefix})
    (violation,) = found.violations
    assert violation.seed is not None and violation.seed >= 100
    assert f"seed={violation.seed}, runs=1" in str(violation)
    again = sim.explore(hello.say(SERVER), seed=violation.seed, runs=1, invariants={"prefix": is_prefix})
    assert again.violations[0].trace == violation.trace


def test_explore_samples_outcomes_and_reports_limits() -> None:
    found = Simulation(hello.Naive).explore(hello.say(SERVER), seed=0, runs=300)
    assert len(found.outcomes) == 6  # every order of the three chunks was sampled
    assert found.complete and found.mode == "explore" and found.runs == 300
    assert found.orderings is None
    lossy = Simulation(hello.Naive).explore(hello.say(SERVER), seed=0, runs=200, network=Network.lossy())
    assert "" in {o.state(SERVER) for o in lossy.outcomes}  # everything lost
    # A forward takes two steps (proxy, server): one step per run leaves it in flight.
    cut = Simulation(hello.Naive).explore(
        [hello.Proxy.post("p", hello.Forward(hello.Chunk(0, "x"), SERVER))], seed=0, runs=3, max_steps=1
    )
    assert cut.stopped_by == "max_steps=1 (3 of 3 runs still had messages in flight)"
    assert cut.outcomes == () and not cut.complete


# -- CALM ----------------------------------------------------------------------------------------


def test_calm_checks_on_a_counter_that_is_not_idempotent() -> None:
    counter = hello.AppendingServer.address("c")  # appending is a counter of characters
    envelopes = [counter.post(hello.Chunk(0, "a")), counter.post(hello.Chunk(1, "bb"))]
    sim = Simulation(hello.Naive)
    dup = check_duplicate_tolerant(sim, envelopes)
    assert not dup.holds and "not idempotent" in dup.explanation
    assert [step.kind for step in dup.counterexamples[0]].count("duplicate") == 1
    # FIFO never passes through "bb" (the second without the first); a lost "a" produces it.
    loss = check_loss_tolerant(sim, envelopes)
    assert not loss.holds
    assert any(o.steps[0].kind == "drop" for o in loss.counterexamples)
    # Against a reordering baseline a drop is a message delayed forever: nothing new can appear.
    assert check_loss_tolerant(sim, envelopes, baseline=Network.reordering()).holds
    with pytest.raises(PropertyViolation, match="FAILS: duplicate-tolerant"):
        dup.check()


def test_calm_hello_world() -> None:
    naive = check_calm(Simulation(hello.Naive), hello.say(SERVER))
    assert [r.holds for r in naive] == [False, False, False]
    assert naive[0].explanation.startswith("6 distinct outcomes across 90 delivery orderings (39 distinct worlds)")
    assert check_deterministic(Simulation(hello.Naive), hello.say(SERVER), network=Network.fifo()).holds
    fifo_two_proxies = Simulation(hello.Naive).exhaust(hello.say(SERVER, proxies=2), network=Network.fifo())
    assert sorted(o.state(SERVER) for o in fifo_two_proxies.outcomes) == [" worldhello,!", "hello, world!", "hello,! world"]
    confluent = check_calm(
        Simulation(hello.Confluent), hello.say(STREAM, proxies=2), observe=lambda w: w.state(STREAM).text
    )
    assert [r.holds for r in confluent] == [True, True, True], "\n".join(map(str, confluent))


def test_calm_checks_say_when_they_cannot_decide() -> None:
    result = check_deterministic(Simulation(hello.Naive), hello.say(SERVER), max_worlds=5)
    assert not result.holds and result.explanation.startswith("inconclusive")


# -- the examples run -----------------------------------------------------------------------------


def test_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    janken.main()
    hello.main()
    out = capsys.readouterr().out
    assert "the only outcome" in out and "every check holds" in out
