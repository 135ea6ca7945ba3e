"""The helpers users get in pachyderm_typed.testing: the fixture and the strategies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pachyderm_typed import Address, Envelope
from pachyderm_typed.ecosystems import InMemory, LocalDisk, Simulation
from pachyderm_typed.testing import WorldFactory, addresses, envelopes
from tests.entities import App, Counter, Increment


def test_the_fixture_opens_in_memory_worlds_by_default(pachyderm_world: WorldFactory) -> None:
    world = pachyderm_world(App)
    assert isinstance(world, InMemory)
    assert world.send_sync(Counter.post("c", Increment())) == 1
    assert pachyderm_world(App).state(Counter.address("c")) == 0  # each world is isolated


@pytest.mark.pachyderm_ecosystem("localdisk")
def test_a_marker_chooses_the_ecosystem(pachyderm_world: WorldFactory) -> None:
    world = pachyderm_world(App)
    assert isinstance(world, LocalDisk)
    assert world.send_sync(Counter.post("c", Increment(by=2))) == 2


@pytest.mark.parametrize("pachyderm_world", ["inmemory", "localdisk", "simulation"], indirect=True)
def test_indirect_parametrisation_runs_a_test_on_several(pachyderm_world: WorldFactory) -> None:
    world = pachyderm_world(App)
    assert isinstance(world, {"inmemory": InMemory, "localdisk": LocalDisk, "simulation": Simulation}[pachyderm_world.ecosystem])
    assert world.send_sync(Counter.post("c", Increment())) == 1


def test_worlds_are_closed_after_the_test(tmp_path: object) -> None:
    from pathlib import Path

    factory = WorldFactory("localdisk", Path(str(tmp_path)))
    world = factory(App)
    factory.close()
    assert world.closed


def test_an_unknown_ecosystem_is_refused() -> None:
    from pathlib import Path

    with pytest.raises(ValueError, match="unknown ecosystem 'mongo'"):
        WorldFactory("mongo", Path("."))


@given(addresses(Counter, st.text(max_size=5)))
def test_address_strategy(address: Address[Counter, Increment, int]) -> None:
    assert address.entity is Counter
    assert isinstance(address.id, str)


@given(envelopes(Counter, st.text(max_size=5), st.builds(Increment, st.integers(-5, 5))))
def test_envelope_strategy_feeds_a_world(envelope: Envelope[Counter, int]) -> None:
    world = InMemory(App)
    assert world.send_sync(envelope) == envelope.message.by
