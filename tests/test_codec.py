"""The codec on its own: what it stores, what it refuses, and how it upgrades."""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

import attrs
import pytest

from pachyderm_typed import CodecError, DeclarationError, Ecosystem, Entity, Outbox, ReplyTo, UpgradeError
from pachyderm_typed._codec import Codec
from pachyderm_typed._ecosystem import Declaration


@attrs.frozen
class Ask:
    reply_to: ReplyTo[Answer]


@attrs.frozen
class Answer:
    text: str


@attrs.frozen
class Book:
    pages: int
    last: Ask | Answer | None = None
    tags: frozenset[str] = frozenset()


class Keeper(Entity[tuple[str, uuid.UUID], Ask | Answer, Book]):
    state_version = 3
    upgrades = {
        1: lambda pages: {"pages": pages},  # v1 stored a bare int
        2: lambda data: {**data, "tags": ["old"]},
    }

    def init(self, entity_id: tuple[str, uuid.UUID]) -> Book:
        return Book(0)

    def activate(self, message: Ask | Answer, state: Book) -> tuple[Outbox, Book]:
        return [], attrs.evolve(state, last=message)


class Shelf(Ecosystem[Keeper]): ...


@pytest.fixture
def codec() -> Codec:
    return Codec(Declaration(Shelf))


KEY = ("k", uuid.UUID(int=7))


def test_states_and_messages_round_trip_with_tags_and_addresses(codec: Codec) -> None:
    spec = codec.declaration.by_class[Keeper]
    book = Book(3, Ask(reply_to=Keeper.address(KEY)), frozenset({"x"}))
    data = codec.encode_state(spec, book)
    assert b'"_type":"Ask"' in data and b"00000000-0000-0000-0000-000000000007" in data
    assert codec.decode_state(spec, data) == book
    envelope = Keeper.post(KEY, Answer("yes"))
    assert codec.decode_message(codec.encode_message(envelope)) == envelope
    assert codec.decode_id(spec, codec.encode_id(spec, KEY)) == KEY


def test_storing_and_loading_make_no_converter_code_once_the_codec_is_built(codec: Codec) -> None:
    """Every hook is made when the codec is built (see ``Codec._make_hooks``): cattrs making one
    on first use is a window in which Ctrl-C breaks that class's decoding in that thread. Each
    kind of value here, union members, nested addresses and all, is met for the first time."""
    spec = codec.declaration.by_class[Keeper]
    made: list[tuple[str, int]] = []

    def tracer(frame: Any, event: str, arg: object) -> Any:
        if "cattrs" in frame.f_code.co_filename and f"gen{os.sep}" in frame.f_code.co_filename:
            made.append((frame.f_code.co_name, frame.f_lineno))
        return None

    sys.settrace(tracer)
    try:
        for book in (Book(1), Book(2, Ask(reply_to=Keeper.address(KEY)), frozenset({"a"})), Book(3, Answer("no"))):
            assert codec.decode_state(spec, codec.encode_state(spec, book)) == book
        for message in (Ask(reply_to=Keeper.address(("x", uuid.UUID(int=1)))), Answer("yes")):
            envelope = Keeper.post(KEY, message)
            assert codec.decode_message(codec.encode_message(envelope)) == envelope
        assert codec.decode_id(spec, codec.encode_id(spec, KEY)) == KEY
        assert codec.decode_state(spec, b'{"v":1,"s":12}') == Book(12, None, frozenset({"old"}))
    finally:
        sys.settrace(None)
    assert made == []


def test_old_records_are_upgraded_step_by_step(codec: Codec) -> None:
    spec = codec.declaration.by_class[Keeper]
    assert codec.decode_state(spec, b'{"v":1,"s":12}') == Book(12, None, frozenset({"old"}))
    assert codec.decode_state(spec, b'{"v":2,"s":{"pages":5}}') == Book(5, None, frozenset({"old"}))


def test_records_from_newer_code_are_refused(codec: Codec) -> None:
    spec = codec.declaration.by_class[Keeper]
    with pytest.raises(UpgradeError, match="state_version 4, but this code knows Keeper only up to version 3"):
        codec.decode_state(spec, b'{"v":4,"s":{"pages":5}}')


def test_an_unknown_field_is_an_error_not_silently_dropped(codec: Codec) -> None:
    spec = codec.declaration.by_class[Keeper]
    with pytest.raises(CodecError, match="does not fit"):
        codec.decode_state(spec, b'{"v":3,"s":{"pages":5,"colour":"red"}}')


def test_unknown_tags_and_kinds_are_clear_errors(codec: Codec) -> None:
    with pytest.raises(CodecError):
        codec.decode_message(b'{"kind":"Keeper","id":["k","00000000-0000-0000-0000-000000000007"],"m":{"_type":"Nope"}}')
    with pytest.raises(CodecError, match="kind 'Ghost', which Shelf does not declare"):
        codec.decode_message(b'{"kind":"Ghost","id":"x","m":{}}')
    with pytest.raises(CodecError, match="corrupt"):
        codec.decode_message(b'{"kind":"Kee')


class Opaque:
    pass


class Unstorable(Entity[str, Opaque, int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Opaque, state: int) -> tuple[Outbox, int]:
        return [], state


@attrs.frozen
class Left:
    items: list[int]


class Ambiguous(Entity[str, Left | list[int], int]):
    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: Left | list[int], state: int) -> tuple[Outbox, int]:
        return [], state


def test_types_the_codec_cannot_store_fail_at_declaration() -> None:
    with pytest.raises(DeclarationError, match="Unstorable cannot be stored: its message type Opaque is not storable"):
        Codec(Declaration(Ecosystem[Unstorable]))
    with pytest.raises(DeclarationError, match="mixes containers into a union"):
        Codec(Declaration(Ecosystem[Ambiguous]))
