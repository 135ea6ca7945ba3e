"""Declarations, addresses and envelopes: what fails at construction, and value semantics."""

from __future__ import annotations

import pickle
from typing import Any

import attrs
import pytest

from pachyderm_typed import (
    Address,
    DeclarationError,
    Ecosystem,
    Entity,
    Envelope,
    Outbox,
)
from pachyderm_typed.ecosystems import InMemory
from tests.entities import App, Counter, Increment, PingPong, Pong


class NoActivate(Entity[str, Increment, int]):
    def init(self, entity_id: str) -> int:
        return 0


class NeedsInit(Entity[str, Increment, int]):
    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state


class SameName(Entity[str, Increment, int]):
    kind = "Counter"

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state


class Gap(Counter):
    kind = "Gap"
    state_version = 3
    upgrades = {1: lambda data: data}


def test_declaration_errors_name_the_culprit() -> None:
    with pytest.raises(DeclarationError, match="NoActivate does not implement activate"):
        InMemory(Ecosystem[NoActivate])
    with pytest.raises(DeclarationError, match="NeedsInit has state type <class 'int'>, which does not admit None"):
        InMemory(Ecosystem[NeedsInit])
    with pytest.raises(DeclarationError, match="share the kind name 'Counter'"):
        InMemory(Ecosystem[Counter | SameName])
    with pytest.raises(DeclarationError, match=r"no upgrade from version\(s\) \[2\]"):
        InMemory(Ecosystem[Gap])
    with pytest.raises(DeclarationError, match="is not an Entity subclass"):
        InMemory(Ecosystem[int])  # type: ignore[type-var, arg-type, misc]
    with pytest.raises(DeclarationError, match="is not an ecosystem declaration"):
        InMemory(Counter)  # type: ignore[arg-type]


def test_a_declaration_must_name_its_entities() -> None:
    class Bare(Ecosystem):  # type: ignore[type-arg]
        ...

    with pytest.raises(DeclarationError, match="does not say which entities it runs"):
        InMemory(Bare)


def test_a_declaration_is_not_an_ecosystem() -> None:
    with pytest.raises(TypeError, match="pass the class to one"):
        App()


def test_implementations_must_be_instances_of_the_declared_type() -> None:
    with pytest.raises(DeclarationError, match="must be an instance of Counter"):
        InMemory(App, implementations={Counter: PingPong()})
    with pytest.raises(DeclarationError, match="does not declare: NoActivate"):
        InMemory(Ecosystem[Counter], implementations={NoActivate: NoActivate()})


def test_kind_defaults_to_the_class_name_and_can_be_set() -> None:
    assert Counter.kind == "Counter"
    assert SameName.kind == "Counter"

    class Renamed(Counter):
        kind = "Counter"

    assert Renamed.address("x") == Counter.address("x")


def test_addresses_are_values() -> None:
    a = Counter.address("a")
    assert a == Counter.address("a")
    assert hash(a) == hash(Counter.address("a"))
    assert a != Counter.address("b")
    assert a != PingPong.address("a")
    assert repr(a) == "Counter('a')"
    assert sorted([Counter.address("b"), PingPong.address("a"), a]) == [a, Counter.address("b"), PingPong.address("a")]
    assert {a: 1}[Counter.address("a")] == 1
    with pytest.raises(AttributeError):
        a.id = "b"  # type: ignore[misc]
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(a)


def test_envelopes_are_built_only_by_post() -> None:
    envelope = Counter.post("a", Increment(2))
    assert envelope == Counter.address("a").post(Increment(2))
    assert envelope.address == Counter.address("a")
    assert envelope.message == Increment(2)
    assert repr(envelope) == "Counter('a').post(Increment(by=2))"
    forged: Any = Envelope
    with pytest.raises(TypeError, match="no public constructor"):
        forged(Counter.address("a"), Increment(), _key=object())
    address_type: Any = Address
    with pytest.raises(TypeError, match="no public constructor"):
        address_type(Counter, "a", _key=None)


def test_string_type_arguments_resolve_in_the_entity_module() -> None:
    world = InMemory(Ecosystem[Quoted])
    assert world.send_sync(Quoted.post("q", Later(3))) == 3


class Quoted(Entity[str, "Later", int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Later, state: int) -> tuple[Outbox, int]:
        return [], state + message.n


@attrs.frozen
class Later:
    n: int


def test_instances_are_isolated() -> None:
    first, second = InMemory(App), InMemory(App)
    first.send_sync(Counter.post("c", Increment()))
    assert second.state(Counter.address("c")) == 0
    assert PingPong.post("a", Pong()).address.kind == "PingPong"
