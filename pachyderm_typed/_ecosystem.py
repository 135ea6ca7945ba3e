"""``Ecosystem[...]`` declarations and their validation.

A declaration names the entity types one application runs. Every ecosystem
(InMemory, LocalDisk, Postgres, Simulation) is built from one and validates it
at construction, so a mistake fails at start-up, never at the first message.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, ForwardRef, Generic, Literal, TypeVar, Union, get_args, get_origin

from pachyderm_typed._address import Envelope
from pachyderm_typed._entity import Entity
from pachyderm_typed.errors import DeclarationError, MessageTypeError, UndeclaredEntityError

E = TypeVar("E")

AnyEntity = Entity[Any, Any, Any]


class Ecosystem(Generic[E]):
    """The declaration of an application: ``class App(Ecosystem[Counter | PingPong]): ...``.

    It is pure configuration: pass it to an ecosystem, ``LocalDisk(App, path)``.
    ``Ecosystem[Counter | PingPong]`` itself works too.
    """

    def __init__(self) -> None:
        raise TypeError(
            f"{type(self).__qualname__} is a declaration, not an ecosystem: "
            "pass the class to one, e.g. InMemory(App) or LocalDisk(App, 'app.db')"
        )


def _declared_union(declaration: object) -> object:
    """The ``E`` of ``Ecosystem[E]`` for a subclass or an alias."""
    if get_origin(declaration) is Ecosystem:
        return get_args(declaration)[0]
    if isinstance(declaration, type) and issubclass(declaration, Ecosystem):
        for klass in declaration.__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                if get_origin(base) is Ecosystem:
                    (arg,) = get_args(base)
                    if isinstance(arg, TypeVar):
                        break
                    return _resolve(arg, klass)
        raise DeclarationError(
            f"{declaration.__qualname__} does not say which entities it runs: "
            "write class App(Ecosystem[Counter | PingPong]): ..."
        )
    raise DeclarationError(
        f"{declaration!r} is not an ecosystem declaration: pass a subclass of "
        "Ecosystem[...] such as class App(Ecosystem[Counter | PingPong]): ..."
    )


def _resolve(tp: object, owner: type) -> Any:
    """Evaluate string / forward-reference type arguments in the owner's module."""
    if isinstance(tp, str):
        tp = ForwardRef(tp)
    if isinstance(tp, ForwardRef) or any(isinstance(a, (str, ForwardRef)) for a in get_args(tp)):
        namespace = dict(vars(sys.modules[owner.__module__]))
        namespace.setdefault(owner.__name__, owner)
        holder = types.SimpleNamespace(__annotations__={"t": tp}, __module__=owner.__module__)
        try:
            return typing.get_type_hints(holder, globalns=namespace)["t"]
        except NameError as exc:
            raise DeclarationError(f"cannot resolve type {tp!r} used by {owner.__qualname__}: {exc}") from None
    return tp


def _union_members(tp: object) -> tuple[object, ...]:
    if get_origin(tp) in (Union, types.UnionType):
        return get_args(tp)
    return (tp,)


def runtime_classes(tp: object) -> tuple[type, ...] | None:
    """Classes for an ``isinstance`` check of ``tp``, or None when it cannot be checked."""
    if tp is Any or tp is object or isinstance(tp, TypeVar):
        return None
    if tp is None or tp is type(None):
        return (type(None),)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        classes: list[type] = []
        for member in get_args(tp):
            sub = runtime_classes(member)
            if sub is None:
                return None
            classes.extend(c for c in sub if c not in classes)
        return tuple(classes)
    if origin is Literal:
        return tuple({type(v) for v in get_args(tp)})
    if origin is typing.Annotated:
        return runtime_classes(get_args(tp)[0])
    if isinstance(origin, type):
        return (origin,)
    supertype = getattr(tp, "__supertype__", None)  # NewType
    if supertype is not None:
        return runtime_classes(supertype)
    if isinstance(tp, type):
        return (tp,)
    return None


def _admits_none(tp: object) -> bool:
    classes = runtime_classes(tp)
    return classes is None or type(None) in classes


def entity_type_args(cls: type[AnyEntity]) -> tuple[Any, Any, Any]:
    """``(Id, Message, State)`` of an entity class, resolved to real types."""
    for klass in cls.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is Entity:
                id_t, msg_t, state_t = get_args(base)
                return _resolve(id_t, klass), _resolve(msg_t, klass), _resolve(state_t, klass)
    raise DeclarationError(
        f"{cls.__qualname__} must subclass Entity[Id, Message, State] with concrete types, "
        f"e.g. class {cls.__name__}(Entity[str, MyMessage, int])"
    )


class EntitySpec:
    """What the runtime knows about one declared entity type."""

    __slots__ = (
        "cls", "kind", "impl", "id_type", "message_type", "state_type",
        "id_check", "message_check", "state_version", "upgrades",
    )

    def __init__(self, cls: type[AnyEntity], impl: AnyEntity) -> None:
        self.cls = cls
        self.kind = cls.kind
        self.impl = impl
        self.id_type, self.message_type, self.state_type = entity_type_args(cls)
        self.id_check = runtime_classes(self.id_type)
        self.message_check = runtime_classes(self.message_type)
        self.state_version = cls.state_version
        self.upgrades = dict(cls.upgrades)

    def __repr__(self) -> str:
        return f"<EntitySpec {self.kind}>"


class Declaration:
    """A validated ecosystem declaration, shared by the kernel and the stores."""

    def __init__(
        self,
        declaration: object,
        implementations: Mapping[type[AnyEntity], AnyEntity] | None = None,
    ) -> None:
        self.source = declaration
        members = _union_members(_declared_union(declaration))
        self.name = getattr(declaration, "__qualname__", None) or repr(declaration)
        specs: list[EntitySpec] = []
        by_kind: dict[str, EntitySpec] = {}
        implementations = dict(implementations or {})
        for member in members:
            if not (isinstance(member, type) and issubclass(member, Entity)):
                raise DeclarationError(f"{self.name} declares {member!r}, which is not an Entity subclass")
            if any(s.cls is member for s in specs):
                raise DeclarationError(f"{self.name} declares {member.__qualname__} twice")
            if member.activate is Entity.activate:
                raise DeclarationError(f"{member.__qualname__} does not implement activate(message, state)")
            impl = implementations.pop(member, None)
            if impl is None:
                impl = member()
            elif not isinstance(impl, member):
                raise DeclarationError(
                    f"the implementation given for {member.__qualname__} is a {type(impl).__qualname__}; "
                    f"it must be an instance of {member.__qualname__} (subclass it to make a double)"
                )
            spec = EntitySpec(member, impl)
            if spec.kind in by_kind:
                other = by_kind[spec.kind].cls
                raise DeclarationError(
                    f"{member.__module__}.{member.__qualname__} and {other.__module__}.{other.__qualname__} "
                    f"share the kind name {spec.kind!r}: give one of them an explicit kind = '...'"
                )
            if member.init is Entity.init and not _admits_none(spec.state_type):
                raise DeclarationError(
                    f"{member.__qualname__} has state type {spec.state_type!r}, which does not admit None, "
                    "but does not define init(entity_id): define init to give the first state"
                )
            if not isinstance(spec.state_version, int) or spec.state_version < 1:
                raise DeclarationError(f"{member.__qualname__}.state_version must be an int >= 1")
            missing = [v for v in range(1, spec.state_version) if v not in spec.upgrades]
            if missing:
                raise DeclarationError(
                    f"{member.__qualname__} is at state_version {spec.state_version} but has no upgrade "
                    f"from version(s) {missing}: add upgrades = {{{missing[0]}: lambda data: ..., ...}}"
                )
            extra = [v for v in spec.upgrades if not 1 <= v < spec.state_version]
            if extra:
                raise DeclarationError(
                    f"{member.__qualname__} has upgrades from version(s) {sorted(extra)}, outside "
                    f"1..{spec.state_version - 1}"
                )
            specs.append(spec)
            by_kind[spec.kind] = spec
        if implementations:
            names = ", ".join(c.__qualname__ for c in implementations)
            raise DeclarationError(f"implementations given for entity types {self.name} does not declare: {names}")
        self.specs: tuple[EntitySpec, ...] = tuple(specs)
        self.by_class: dict[type, EntitySpec] = {s.cls: s for s in specs}
        self.by_kind = by_kind

    def spec_for(self, entity: type) -> EntitySpec:
        spec = self.by_class.get(entity)
        if spec is None:
            name = getattr(entity, "__qualname__", repr(entity))
            raise UndeclaredEntityError(
                f"{name} is not declared in {self.name}: add it to the Ecosystem[...] union"
            )
        return spec

    def check_envelope(self, envelope: object) -> EntitySpec:
        """Reject what untyped callers can get wrong; return the target's spec."""
        if not isinstance(envelope, Envelope):
            raise TypeError(
                f"expected an Envelope, got {type(envelope).__qualname__}: build one with "
                "EntityType.post(id, message) or address.post(message)"
            )
        address = envelope.address
        spec = self.spec_for(address.entity)
        if spec.id_check is not None and not isinstance(address.id, spec.id_check):
            raise MessageTypeError(
                f"{spec.kind} ids are {_type_name(spec.id_type)}, got {address.id!r} "
                f"({type(address.id).__qualname__})"
            )
        self.check_message(spec, envelope.message)
        return spec

    @staticmethod
    def check_message(spec: EntitySpec, message: object) -> None:
        if spec.message_check is not None and not isinstance(message, spec.message_check):
            raise MessageTypeError(
                f"{spec.kind} accepts messages of type {_type_name(spec.message_type)}, "
                f"got {message!r} ({type(message).__qualname__})"
            )


def _type_name(tp: object) -> str:
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")
