"""Odd and hostile input from callers: each works or gets a clear error, and loses nothing."""

from __future__ import annotations

import pytest

from pachyderm_typed import PachydermError
from tests.conftest import MakeWorld
from tests.entities import Increment, Nest, Nester, OddApp, OddIds

ODD_IDS = [
    "",
    "a\x00b",
    "a\x00",
    "a",
    "\udcff\udcfe",  # lone surrogates: what os.fsdecode makes of non-UTF-8 bytes
    "é\u2028\U0001f418",
    " " * 3,
    "x" * 1_000_000,  # 1 MB
]


def test_odd_ids_are_distinct_entities_that_keep_their_state(make_world: MakeWorld) -> None:
    world = make_world(OddApp)
    for n, entity_id in enumerate(ODD_IDS, start=1):
        assert world.send_sync(OddIds.post(entity_id, Increment(by=n))) == n
    for n, entity_id in enumerate(ODD_IDS, start=1):
        assert world.state(OddIds.address(entity_id)) == n
        assert world.send_sync(OddIds.post(entity_id, Increment(by=100))) == n + 100


def build_nest(depth: int) -> Nest:
    nest = Nest()
    for _ in range(depth - 1):
        nest = Nest(nest)
    return nest


def test_a_deeply_nested_message_works_or_is_refused_clearly(make_world: MakeWorld) -> None:
    world = make_world(OddApp)
    assert world.send_sync(Nester.post("n", build_nest(50))) == 50
    try:
        result = world.send_sync(Nester.post("n", build_nest(20_000)))
    except PachydermError as error:
        assert "nest" in str(error).lower() or "deep" in str(error).lower() or "recursion" in str(error).lower()
        assert world.state(Nester.address("n")) == 50  # nothing changed
    else:
        assert result == 20_000
    assert world.send_sync(Nester.post("n", build_nest(3))) == 3  # still working


@pytest.mark.parametrize("value", [True, 1.5, None, b"bytes"])
def test_ids_of_the_wrong_type_are_refused(make_world: MakeWorld, value: object) -> None:
    world = make_world(OddApp)
    with pytest.raises(PachydermError, match="OddIds ids are str"):
        world.send(OddIds.post(value, Increment()))  # type: ignore[arg-type]
