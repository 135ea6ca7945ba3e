"""The codec: one cattrs converter per declaration, used by every durable store.

Everything stored (states, pending messages, dead letters) is JSON produced by
this converter. Loading a record builds plain attrs objects from JSON; it never
runs code from the file (no pickle, no eval).

Layout of the JSON:

* an attrs class is an object of its fields;
* a member of a union that is an attrs class carries ``"_type": <tag>``, where
  the tag is the class's ``__qualname__`` or its ``pachyderm_tag`` class attribute
  (set it before renaming a class that appears in a union);
* an ``Address`` is ``{"kind": ..., "id": ...}``; ``UUID`` a string; tuples,
  lists, sets and frozensets arrays; ``datetime``/``date`` ISO strings; bytes base85;
* a state record is ``{"v": state_version, "s": state}``;
* a message record is ``{"kind": ..., "id": ..., "m": message}``.

A stored object with a field the class does not have is an error, never silently
dropped: a renamed field needs a ``state_version`` bump and an upgrade step.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import enum
import json
import json.encoder
import threading
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from pachyderm_typed._address import Address, Envelope, make_address, make_envelope
from pachyderm_typed._ecosystem import Declaration, EntitySpec
from pachyderm_typed.errors import CodecError, DeclarationError, PachydermError, StorageError, UpgradeError

_TAG = "_type"
_Hook = Callable[[Any], Any]
_LEAVES = (str, int, float, bool, bytes, type(None), uuid.UUID, datetime.datetime, datetime.date)
_CONTAINERS = {
    list, tuple, set, frozenset, dict,
    collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Set,
    collections.abc.MutableSet, collections.abc.Mapping, collections.abc.MutableMapping,
}


def tag_of(cls: type) -> str:
    """The stable name a union member is stored under."""
    tag = getattr(cls, "pachyderm_tag", None)
    return tag if isinstance(tag, str) else cls.__qualname__


def _is_union(tp: object) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _is_address(tp: object) -> bool:
    return tp is Address or get_origin(tp) is Address


def _json_writer() -> Callable[[object], str]:
    """``json.dumps`` with the canonical options, built once instead of per call.

    Every activation on a durable store encodes its state, so this is hot: the C
    encoder from ``json.encoder`` is called directly when the interpreter has it
    (``json.dumps`` builds a ``JSONEncoder`` and a C encoder on every call). The
    values are fresh output of the converter, so there is no cycle to check for.
    """
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    try:
        chunks = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    except TypeError:  # a different private signature: use the public encoder
        return encoder.encode
    join = "".join
    return lambda value: join(chunks(value, 0))


_write_json = _json_writer()


def dump_json(value: object) -> bytes:
    """Canonical JSON bytes: the only encoding of stored records and keys."""
    # surrogatepass: a str id holding lone surrogates (from undecodable bytes) must round-trip.
    return _write_json(value).encode("utf-8", "surrogatepass")


def load_json(data: bytes) -> Any:
    return json.loads(bytes(data).decode("utf-8", "surrogatepass"))


class Codec:
    """Encodes and decodes everything a durable ecosystem stores, for one declaration.

    Building it checks every id, message and state type of the declaration and
    raises ``DeclarationError`` naming the first type it cannot store.
    """

    def __init__(self, declaration: Declaration) -> None:
        self.declaration = declaration
        self.converter = converter = make_converter(forbid_extra_keys=True)
        converter.register_unstructure_hook(uuid.UUID, str)
        converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(value))
        converter.register_unstructure_hook_func(_is_address, self._unstructure_address)
        converter.register_structure_hook_func(_is_address, self._structure_address)
        converter.register_unstructure_hook_factory(_is_union, self._union_unstructure_hook)
        converter.register_structure_hook_func(_is_union, self._structure_union)
        # A field annotated ``object`` holds what ``Any`` would: cattrs has no hooks for it.
        converter.register_unstructure_hook_func(lambda tp: tp is object, self._unstructure_object)
        converter.register_structure_hook_func(lambda tp: tp is object, lambda value, _: value)
        self._union_members: dict[object, tuple[Any, ...]] = {}
        self._reached: dict[object, None] = {}  # every type _check looked at, in order
        for spec in declaration.specs:
            for role, tp in (("id", spec.id_type), ("message", spec.message_type), ("state", spec.state_type)):
                try:
                    self._check(tp, set())
                except CodecError as exc:
                    raise DeclarationError(f"{spec.cls.__qualname__} cannot be stored: its {role} type {exc}") from None
                if role == "id" and tp in (Any, object):
                    raise DeclarationError(
                        f"{spec.cls.__qualname__} has id type {tp!r}: ids are stored as keys, so give "
                        "them a concrete type (str, int, UUID, or a tuple of these)"
                    )
        self._make_hooks()
        # The converter's hooks, looked up once per entity type rather than on every record.
        get = converter.get_unstructure_hook
        self._unstructure: dict[EntitySpec, tuple[_Hook, _Hook, _Hook]] = {
            spec: (get(spec.id_type), get(spec.message_type), get(spec.state_type)) for spec in declaration.specs
        }

    # -- declaration-time check -----------------------------------------------------

    def _make_hooks(self) -> None:
        """Make, now, every hook the converter will need for the declared types, and keep them.

        cattrs makes a class's hook the first time it meets the class, and marks the class
        as being made, in a per-thread set, just before a ``try``: a KeyboardInterrupt landing
        between the two (Ctrl-C in the main thread, as a stored state is first decoded) left
        the mark for good, and every later decode of that class in that thread failed with
        RecursionError, reported as a corrupt record. Its cache of hooks is not enough to
        keep them: making a hook for a tuple or a set empties it. So the hooks made here are
        registered as they are, and no call makes one again.
        """
        converter = self.converter
        structure_hooks = _made(converter.get_structure_hook, self._reached)
        unstructure_hooks = _made(converter.get_unstructure_hook, self._reached)
        converter.register_structure_hook_factory(structure_hooks.__contains__, lambda tp: structure_hooks[tp])
        converter.register_unstructure_hook_factory(unstructure_hooks.__contains__, lambda tp: unstructure_hooks[tp])

    def _check(self, tp: object, seen: set[object]) -> None:
        """Raise CodecError naming the part of ``tp`` the converter cannot store."""
        try:
            self._reached[tp] = None
        except TypeError:  # an unhashable annotation: nothing to make ahead for it
            pass
        if tp is Any or tp is object or tp in _LEAVES or _is_address(tp):
            return
        if isinstance(tp, TypeVar):
            raise CodecError(f"uses the type variable {tp}: give it a concrete type")
        origin = get_origin(tp)
        if origin is Literal:
            return
        if origin is typing.Annotated:
            return self._check(get_args(tp)[0], seen)
        if _is_union(tp):
            members = get_args(tp)
            containers = [m for m in members if get_origin(m) in _CONTAINERS or m in _CONTAINERS]
            if containers:
                raise CodecError(
                    f"{_name(tp)} mixes containers into a union, which cannot be told apart when loaded: "
                    "wrap them in attrs classes"
                )
            tags: dict[str, object] = {}
            for member in members:
                if attrs.has(member) if isinstance(member, type) else False:
                    tag = tag_of(member)
                    if tag in tags:
                        raise CodecError(
                            f"{_name(tp)} has two members tagged {tag!r}: set pachyderm_tag on one of them"
                        )
                    tags[tag] = member
                self._check(member, seen)
            return
        if origin in _CONTAINERS:
            for arg in get_args(tp):
                if arg is not Ellipsis:
                    self._check(arg, seen)
            return
        if tp in _CONTAINERS:
            return
        if isinstance(tp, type):
            if issubclass(tp, enum.Enum):
                return
            if tp in seen:
                return
            if attrs.has(tp) or dataclasses.is_dataclass(tp):
                seen.add(tp)
                try:
                    hints = typing.get_type_hints(tp)
                except NameError as exc:
                    raise CodecError(
                        f"{tp.__qualname__} has an annotation that cannot be resolved ({exc}): "
                        "define the classes it names at module level"
                    ) from None
                for name, field_type in hints.items():
                    if name.startswith("__") or get_origin(field_type) is typing.ClassVar:
                        continue
                    try:
                        self._check(field_type, seen)
                    except CodecError as exc:
                        raise CodecError(f"{tp.__qualname__}.{name}: {exc}") from None
                return
        supertype = getattr(tp, "__supertype__", None)
        if supertype is not None:
            return self._check(supertype, seen)
        raise CodecError(
            f"{_name(tp)} is not storable: use attrs classes, str, int, float, bool, bytes, UUID, "
            "datetime, enums, Address, or lists/tuples/sets/dicts of these"
        )

    # -- hooks --------------------------------------------------------------------------

    def _unstructure_address(self, address: Address[Any, Any, Any]) -> dict[str, Any]:
        spec = self.declaration.by_class.get(address.entity)
        if spec is None:
            raise CodecError(f"cannot store {address!r}: {address.kind} is not declared in this ecosystem")
        return {"kind": spec.kind, "id": self.converter.unstructure(address.id, spec.id_type)}

    def _structure_address(self, value: Any, _: object) -> Address[Any, Any, Any]:
        try:
            kind, raw_id = value["kind"], value["id"]
        except (TypeError, KeyError):
            raise CodecError(f"expected an address {{'kind': ..., 'id': ...}}, found {value!r}") from None
        spec = self._spec_of_kind(kind)
        return make_address(spec.cls, self.converter.structure(raw_id, spec.id_type))

    def _unstructure_object(self, value: Any) -> Any:
        cls = type(value)
        if cls is object:
            raise CodecError("a bare object() cannot be stored")
        return self.converter.unstructure(value, cls)

    def _union_unstructure_hook(self, tp: Any) -> Callable[[Any], Any]:
        unstructure = self.converter.unstructure

        def unstructure_member(value: Any) -> Any:
            cls = type(value)
            if attrs.has(cls):
                data = unstructure(value, cls)
                data[_TAG] = tag_of(cls)
                return data
            return unstructure(value, cls)

        return unstructure_member

    def _structure_union(self, value: Any, tp: Any) -> Any:
        members: tuple[Any, ...] | None = self._union_members.get(tp)
        if members is None:
            members = self._union_members[tp] = get_args(tp)
        if value is None:
            if type(None) in members or Any in members:
                return None
        elif isinstance(value, dict):
            tag = value.get(_TAG)
            if tag is not None:
                for member in members:
                    if isinstance(member, type) and attrs.has(member) and tag_of(member) == tag:
                        fields = {k: v for k, v in value.items() if k != _TAG}
                        return self.converter.structure(fields, member)
                raise CodecError(f"no member of {_name(tp)} is tagged {tag!r}")
            for member in members:
                if _is_address(member):
                    return self._structure_address(value, member)
                if get_origin(member) in (dict, collections.abc.Mapping) or member is dict:
                    return self.converter.structure(value, member)
        else:
            for member in members:
                if member in (bool, int, float, str) and type(value) is member:
                    return value
            for member in members:
                if member is float and type(value) is int:
                    return float(value)
            for member in members:
                if member is Any or get_origin(member) is Literal:
                    return self.converter.structure(value, member)
                if member in _LEAVES or (isinstance(member, type) and issubclass(member, enum.Enum)):
                    try:
                        return self.converter.structure(value, member)
                    except Exception:
                        continue
        raise CodecError(f"{value!r} is not a stored {_name(tp)}")

    def _spec_of_kind(self, kind: object) -> EntitySpec:
        spec = self.declaration.by_kind.get(kind) if isinstance(kind, str) else None
        if spec is None:
            raise CodecError(
                f"the stored record names entity kind {kind!r}, which {self.declaration.name} does not "
                "declare: declare it (or set kind = ... on the renamed class)"
            )
        return spec

    # -- records ------------------------------------------------------------------------

    def encode_id(self, spec: EntitySpec, entity_id: object) -> bytes:
        """Canonical bytes of an id: equal ids give equal bytes (used in keys)."""
        try:
            return dump_json(self._unstructure[spec][0](entity_id))
        except Exception as exc:
            raise CodecError(f"cannot store the id {_show(entity_id)} of {spec.kind}: {_why(exc)}") from exc

    def decode_id(self, spec: EntitySpec, data: bytes) -> object:
        try:
            return self.converter.structure(load_json(data), spec.id_type)
        except Exception as exc:
            _raise_refusal(exc, f"a stored {spec.kind} id")
            raise CodecError(f"a stored {spec.kind} id is corrupt ({data[:80]!r}): {exc}") from exc

    def encode_state(self, spec: EntitySpec, state: object) -> bytes:
        try:
            # The record {"v": version, "s": state}, spelled out: this runs once per activation.
            return f'{{"v":{spec.state_version},"s":{_write_json(self._unstructure[spec][2](state))}}}'.encode(
                "utf-8", "surrogatepass"
            )
        except Exception as exc:
            raise CodecError(f"cannot store the state {_show(state)} of {spec.kind}: {_why(exc)}") from exc

    def unstructure_state(self, spec: EntitySpec, state: object) -> Any:
        return self._unstructure[spec][2](state)

    def decode_state(self, spec: EntitySpec, data: bytes, where: str = "") -> object:
        """Load a state record, upgrading it step by step from older versions."""
        try:
            record = load_json(data)
            version, raw = record["v"], record["s"]
            if not isinstance(version, int):
                raise TypeError(f"version {version!r} is not an int")
        except Exception as exc:
            raise CodecError(f"the stored state of {where or spec.kind} is corrupt: {exc}") from exc
        raw = self.upgrade(spec, version, raw, where)
        try:
            return self.converter.structure(raw, spec.state_type)
        except Exception as exc:
            _raise_refusal(exc, f"the stored state of {where or spec.kind}")
            raise CodecError(
                f"the stored state of {where or spec.kind} (version {version}) does not fit "
                f"{_name(spec.state_type)}: {_cattrs_reason(exc)}. If the state type changed, raise "
                f"{spec.cls.__qualname__}.state_version and add an upgrade"
            ) from exc

    def upgrade(self, spec: EntitySpec, version: int, raw: Any, where: str = "") -> Any:
        if version > spec.state_version:
            raise UpgradeError(
                f"the stored state of {where or spec.kind} has state_version {version}, but this code "
                f"knows {spec.cls.__qualname__} only up to version {spec.state_version}: it was written "
                "by newer code; run that code (nothing was changed)"
            )
        if version < 1:
            raise UpgradeError(f"the stored state of {where or spec.kind} has invalid state_version {version}")
        while version < spec.state_version:
            step = spec.upgrades[version]
            try:
                raw = step(raw)
            except Exception as exc:
                _raise_refusal(exc, None)
                raise UpgradeError(
                    f"upgrading the stored state of {where or spec.kind} from version {version} to "
                    f"{version + 1} raised {type(exc).__name__}: {exc} (nothing was changed)"
                ) from exc
            version += 1
        return raw

    def encode_message(self, envelope: Envelope[Any, Any], reason: str | None = None) -> bytes:
        """A message record; a dead letter's also carries the ``reason`` it failed."""
        address = envelope.address
        spec = self.declaration.spec_for(address.entity)
        unstructure_id, unstructure_message, _ = self._unstructure[spec]
        try:
            record = {"kind": spec.kind, "id": unstructure_id(address.id), "m": unstructure_message(envelope.message)}
            if reason is not None:
                record["reason"] = reason
            return dump_json(record)
        except Exception as exc:
            raise CodecError(f"cannot store the message {_show(envelope)}: {_why(exc)}") from exc

    def decode_message(self, data: bytes) -> Envelope[Any, Any]:
        try:
            record = load_json(data)
            kind, raw_id, raw_message = record["kind"], record["id"], record["m"]
        except Exception as exc:
            raise CodecError(f"a stored message is corrupt: {exc}") from exc
        spec = self._spec_of_kind(kind)
        try:
            entity_id = self.converter.structure(raw_id, spec.id_type)
            message = self.converter.structure(raw_message, spec.message_type)
        except Exception as exc:
            _raise_refusal(exc, f"a stored message for {kind}")
            raise CodecError(
                f"a stored message for {kind} does not fit its declared types: {_cattrs_reason(exc)}"
            ) from exc
        return make_envelope(make_address(spec.cls, entity_id), message)

    def encode(self, value: Any) -> bytes:
        """Encode already-unstructured JSON data (for store metadata)."""
        return dump_json(value)

    def decode(self, data: bytes) -> Any:
        return load_json(data)


def _show(value: object) -> str:
    """A short repr for error messages; deeply nested values would overflow ``repr`` itself."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__qualname__} nested too deeply to show>"
    return text if len(text) <= 300 else text[:300] + "..."


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply to store (Python's recursion limit); flatten it"
    return str(exc)


def _name(tp: object) -> str:
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _made(make: Callable[[Any], Any], types: Iterable[object]) -> dict[object, Any]:
    """The hook ``make`` gives each of ``types``; one it cannot make is left out (the record
    that needs it gets the error when it is stored or loaded, as without this)."""
    hooks = {}
    for tp in types:
        try:
            hooks[tp] = make(tp)
        except Exception:
            continue
    return hooks


def _raise_refusal(exc: BaseException, what: str | None) -> None:
    """An error raised while decoding ``what`` may hold the engine's refusal of a call
    (``SendInsideActivationError``, ``ReentrantCallError``; also inside cattrs' groups).
    The data is not at fault then, and calling it corrupt would send its reader looking
    for a fault the file does not have. In the main thread the refusal is raised as it
    is: a signal handler's call may have been refused there, in the middle of a decode
    that is otherwise fine. Elsewhere only the decoding itself (a validator, a hook) can
    have made the call, every time this record is decoded: a CodecError says so.
    ``what`` None: the caller words that error."""
    found = _refusal(exc)
    if found is None:
        return
    if threading.current_thread() is threading.main_thread():
        raise found
    if what is not None:
        raise CodecError(f"decoding {what} called the ecosystem, which was refused: {found}") from exc


def _refusal(exc: BaseException) -> PachydermError | None:
    if isinstance(exc, PachydermError) and not isinstance(exc, StorageError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _refusal(inner)
            if found is not None:
                return found
    return None


def _cattrs_reason(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc))
    return f"{type(exc).__name__}: {exc}"
