"""``Postgres``: one ecosystem run by many processes on many machines, sharing one database.

Every process that opens ``Postgres(App, dsn, namespace=...)`` is a *node*. Nodes
share nothing but the database: states, pending messages, dead letters and
followers all live in tables (``_pg_schema.py``), so any node may process any
message and a node can die at any instant.

Uniqueness of activations: transaction-scoped advisory locks
    Each entity has a 64-bit lock key (a keyed hash of namespace, kind and id).
    Whoever processes messages of an entity holds ``pg_advisory_xact_lock`` on its
    key for the whole transaction that reads the state, consumes the messages and
    writes the new state. We chose advisory locks over row locks because an entity
    that was never activated has no row to lock, and creating rows just to lock
    them would cost a write per message and invite insert races; over optimistic
    version checks because those waste whole batches on conflict. The locks are
    released by commit or abort, including when PostgreSQL notices that a node's
    connection died, so a crashed node never leaves an entity stuck. (Nodes set
    ``idle_in_transaction_session_timeout`` so a frozen remote node is cut off too.)

Exactly once in effect
    The consumed messages (deleted from ``pending``), the new states (upserted
    with a per-entity ``version``), the outgoing envelopes (inserted into
    ``pending``), dead letters and followers' history commit in one transaction.
    A crash before the commit changes nothing; after it, everything is there.

Who processes what
    * ``send``/``send_sync`` (and ``retry``) are processed by the node that receives
      the call, inline, in the transaction that accepts them: it takes the entity's
      lock (waiting for at most one batch of another node), first processes the
      entity's older pending messages (FIFO), then the caller's message, and
      commits. So ``send_sync`` learns its result directly, ``send`` returns after
      its message was applied (or dead-lettered), and a caller's message is never
      visible to another node before it is processed.
    * Outbox messages are rows of ``pending``. Worker threads on every node claim
      them: they scan the oldest pending rows of kinds their code declares, try-lock
      (``pg_try_advisory_xact_lock``, the advisory twin of ``FOR UPDATE SKIP LOCKED``)
      up to ``batch_entities`` distinct entities, and process up to ``batch_size`` of
      their messages in ``seq`` order in one transaction (batching many entities per
      commit is what beats one transaction per activation). Idle workers sleep until
      a ``NOTIFY`` on the namespace's work channel (sent by every commit that adds
      pending rows); they do not poll, except for one check every ``idle_poll``
      seconds as a guard against a lost notification, and a short retry while
      pending work is held by another node (which is how a dead node's work is
      picked up once PostgreSQL releases its locks).
    * FIFO per (sender, receiver): a sender's messages get increasing ``seq``
      (an entity's activations are serialised by its lock and commit in order; a
      caller's calls return one after the other), and each entity's messages are
      consumed in ``seq`` order.

Follow across nodes
    ``follow`` registers a row in ``follows`` while holding the entity's lock, and
    reads the state and its version under the same lock. From then on every
    transaction that changes the entity sees the row and also writes each new
    version to ``history`` and NOTIFYs the follow channel with the entity's key.
    A node's listener thread then reads ``history`` past the version its
    subscription last handed out, so followers never skip or repeat a state, in
    commit order, whichever node committed it. States committed by this node are
    also handed to its own followers straight after the commit. History rows are
    deleted once every follower has seen them (followers report progress with a
    heartbeat; followers of a node gone for ``follow_grace`` seconds are dropped).

Failures
    Calls that cannot reach PostgreSQL raise ``DatabaseUnavailableError`` (a
    ``StorageError``) saying whether the call was applied: "nothing was applied",
    or, when the connection broke during the commit itself, "unknown". Worker and
    listener threads reconnect by themselves with back-off and carry on; the
    listener re-reads what it may have missed when it reconnects.

Node-local memory is only a cache of recent messages for ``ActivationError``'s
history. Rolling upgrades: a node processes only kinds its declaration has, and
leaves alone (for newer nodes) an entity whose stored state or pending message its
code cannot read, instead of dead-lettering it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO, TypeVar, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pachyderm_typed._address import Address, Envelope, make_address
from pachyderm_typed._codec import Codec, load_json
from pachyderm_typed._ecosystem import AnyEntity, Ecosystem, EntitySpec
from pachyderm_typed._kernel import forbid_inside_activation, thread_marks
from pachyderm_typed._subscription import Subscription
from pachyderm_typed._world import HISTORY_PER_ENTITY, DeadLetter, World, _interruptible, start_thread
from pachyderm_typed.ecosystems._pg_schema import (
    SCHEMA_VERSION,
    Connection,
    Queries,
    channels,
    check_namespace,
    drop_schema,
    ensure_schema,
    lock_key,
)
from pachyderm_typed.errors import (
    ActivationError,
    ClosedError,
    CodecError,
    DatabaseUnavailableError,
    DeclarationError,
    ReentrantCallError,
    StorageError,
)

logger = logging.getLogger("pachyderm_typed.postgres")

E = TypeVar("E")
S = TypeVar("S")
T = TypeVar("T")

_UNINIT: Any = object()  # an entity with no stored state: init() runs at its first activation

# Worker outcomes of one claim attempt.
_IDLE, _BUSY, _DONE = 0, 1, 2


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe(params: Mapping[str, str]) -> str:
    """Where the database is, without credentials."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or ""
    return f"{host}:{port}/{dbname}"


def _pg_text(text: str) -> str:
    """``text`` as a PostgreSQL ``text`` value can hold it: NUL and lone surrogates escaped.

    A dead letter's reason quotes the exception, which may quote the message's data.
    """
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _parse_dsn(dsn: object) -> dict[str, str]:
    if not isinstance(dsn, str):
        raise TypeError(f"dsn must be a str such as 'postgresql://user@host:5432/db', got {type(dsn).__qualname__}")
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except psycopg.Error as exc:
        raise ValueError(f"invalid PostgreSQL DSN: {_first_line(exc)}") from None


def _rollback(conn: Connection) -> None:
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        pass


def _lost(conn: Connection, exc: BaseException) -> bool:
    """Whether ``exc`` means the connection itself is gone."""
    if conn.closed or conn.broken or isinstance(exc, psycopg.InterfaceError):
        return True
    # The server's FATAL (pg_terminate_backend, shutdown) can arrive as a result before libpq
    # sees the socket close; in a pipeline psycopg then raises "cannot exit pipeline mode while
    # busy", with the FATAL as its __context__, and leaves libpq in pipeline mode: unusable.
    # (Callers are outside their pipeline blocks here.)
    if conn.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        return True
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        sqlstate = getattr(seen, "sqlstate", None) or ""
        if sqlstate.startswith(("08", "57P")) or sqlstate == "25P03":  # the session has ended
            return True
        seen = seen.__context__
    return False


class _CommitUnknown(Exception):
    """The connection broke during the round trip that carried COMMIT (``__cause__``)."""


class _Pool:
    """Idle connections for callers' threads (one transaction per call).

    No lock: a signal handler's call runs in the main thread between any two bytecodes,
    also of a ``take`` or ``give`` of the call it interrupted, and would wait forever for
    a lock that call holds. ``list.pop`` and ``append`` are atomic, and a connection given
    back while the pool closes is closed by whichever of the two looks last.
    """

    def __init__(self, connect: Callable[[], Connection], keep: int = 8) -> None:
        self._connect = connect
        self._keep = keep
        self._idle: list[Connection] = []
        self._closed = False

    def take(self) -> tuple[Connection, bool]:
        """A connection, and whether it is brand new (so cannot be a stale one)."""
        if self._closed:
            raise ClosedError("the ecosystem is closed: open a new one to keep working")
        try:
            return self._idle.pop(), False
        except IndexError:
            return self._connect(), True

    def give(self, conn: Connection) -> None:
        no_transaction = psycopg.pq.TransactionStatus.IDLE
        reusable = not conn.closed and not conn.broken and conn.info.transaction_status == no_transaction
        if reusable and not self._closed and len(self._idle) < self._keep:
            self._idle.append(conn)
            if self._closed:  # closed meanwhile: its flush may have run before the append
                self.flush()
            return
        conn.close()

    def flush(self) -> None:
        """Close the idle connections: after one broke, the others are likely stale too."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            conn.close()

    def close(self) -> None:
        self._closed = True
        self.flush()


class _Entity:
    """One entity inside one transaction."""

    # Built per entity per batch on the hot path.
    __slots__ = ("kind", "id", "data", "version", "followed", "spec", "address", "state",
                 "state_bytes", "dirty", "blocked", "versions")

    def __init__(self, kind: str, entity_id: bytes, data: bytes | None, version: int, followed: bool) -> None:
        self.kind = kind
        self.id = entity_id
        self.data = data
        self.version = version
        self.followed = followed
        self.spec: EntitySpec | None = None
        self.address: Address[Any, Any, Any] | None = None
        self.state: object = _UNINIT
        self.state_bytes = b""
        self.dirty = False
        self.blocked: StorageError | None = None
        self.versions: list[tuple[int, object, bytes]] = []  # for followers


class _Tail:
    """A caller's message, processed after the older pending messages of its entity."""

    __slots__ = ("spec", "envelope", "id", "body", "raises", "done", "result", "error")

    def __init__(self, spec: EntitySpec, envelope: Envelope[Any, Any], entity_id: bytes, body: bytes, raises: bool) -> None:
        self.spec = spec
        self.envelope = envelope
        self.id = entity_id
        self.body = body
        self.raises = raises
        self.done = False
        self.result: object = None
        self.error: ActivationError | None = None


class _Batch:
    """What one transaction processed."""

    __slots__ = ("entities", "consumed", "outbox", "dead", "count", "more", "blocked")

    def __init__(self) -> None:
        self.entities: dict[tuple[str, bytes], _Entity] = {}
        self.consumed: list[int] = []
        self.outbox: list[tuple[int, str, bytes, bytes]] = []  # (lock key, kind, id, body)
        self.dead: list[tuple[_Entity, bytes, Envelope[Any, Any], ActivationError]] = []
        self.count = 0
        self.more = False
        self.blocked: list[_Entity] = []


class _Follow:
    """One local subscription and the last version it handed out."""

    __slots__ = ("subscription", "token", "entity", "spec", "address", "seen")

    def __init__(
        self, subscription: Subscription[Any], token: uuid.UUID, entity: tuple[str, bytes],
        spec: EntitySpec, address: Address[Any, Any, Any], seen: int,
    ) -> None:
        self.subscription = subscription
        self.token = token
        self.entity = entity
        self.spec = spec
        self.address = address
        self.seen = seen


F = TypeVar("F", bound=Callable[..., Any])


def _main_call(method: F) -> F:
    """Marks the main thread as inside a call of the node while ``method`` runs (see
    ``Postgres._refuse_handler_await``). The mark found is restored, wherever an
    interruption lands: a handler's own call inside nests."""

    @functools.wraps(method)
    def marked(self: Postgres[Any], *args: Any, **kwargs: Any) -> Any:
        if not _interruptible():
            return method(self, *args, **kwargs)
        outer = self._main_in_call
        try:
            self._main_in_call = True
            return method(self, *args, **kwargs)
        finally:
            self._main_in_call = outer

    return cast(F, marked)


class Postgres(World[E]):
    """Runs a declaration as one node of an ecosystem stored in PostgreSQL.

    ``Postgres(App, "postgresql://user@host/db", namespace="shop")``: every process
    opening the same DSN and namespace is a node of the same ecosystem. Options:

    ``namespace``
        The PostgreSQL schema holding this ecosystem's tables (created on first use).
    ``workers``
        Threads that process pending (outbox) messages on this node; 0 makes a node
        that only serves its own calls and followers.
    ``connect_timeout``
        Seconds to wait for a connection before reporting the database unavailable.
    """

    #: messages processed per transaction at most
    batch_size = 512
    #: distinct entities a worker claims per transaction at most
    batch_entities = 256
    #: seconds an idle worker sleeps before checking for work it was not told about
    idle_poll = 30.0
    #: seconds between a node's follower heartbeats (and catch-up reads)
    heartbeat_interval = 5.0
    #: seconds after which followers of a silent node are dropped
    follow_grace = 600.0
    #: seconds a node leaves alone an entity its code cannot read (newer state, ...)
    unreadable_backoff = 30.0

    def __init__(
        self,
        declaration: type[Ecosystem[E]],
        dsn: str,
        *,
        namespace: str = "pachyderm",
        implementations: Mapping[type[AnyEntity], AnyEntity] | None = None,
        history: int = 1000,
        workers: int = 1,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(declaration, implementations=implementations, history=history)
        for spec in self._declaration.specs:
            if _pg_text(spec.kind) != spec.kind:  # kinds are stored as PostgreSQL text
                raise DeclarationError(
                    f"{spec.cls.__qualname__}.kind {spec.kind!r} contains a NUL character or a lone "
                    "surrogate, which PostgreSQL cannot store: choose another kind"
                )
        self._codec = Codec(self._declaration)
        self._namespace = check_namespace(namespace)
        params = _parse_dsn(dsn)
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self._where = _describe(params)
        self._connect_timeout = max(1, round(connect_timeout))
        # A node frozen mid-transaction (or on a machine that vanished) must not hold locks forever.
        # Generic plans: our statements are few and fixed, and re-planning each call cost half their time.
        settings = " -c idle_in_transaction_session_timeout=60000 -c plan_cache_mode=force_generic_plan"
        extra = {"options": (params.get("options", "") + settings).strip()}
        if "application_name" not in params:
            extra["application_name"] = f"pachyderm-typed {namespace}"
        self._conninfo = make_conninfo(dsn, **extra)
        self._q = Queries(namespace)
        self._work_channel, self._follow_channel = channels(namespace)
        self._node = uuid.uuid4()
        self._node_channel = f"{namespace}__n{self._node.hex[:8]}"
        self._kinds = [spec.kind for spec in self._declaration.specs]
        self._close_lock = threading.Lock()
        self._stopping = threading.Event()
        # Reentrant: a signal handler's call may commit while the main thread pushes its own
        # commit to local followers; nested, it pushes only the next version of each, and
        # the listener fills in what it skipped, in order.
        self._follow_lock = threading.RLock()
        # What the main thread's calls in progress lock: entity lock keys, and ("dead", id) for
        # the dead letters they take (see _main_thread_takes).
        self._main_locks: set[int | tuple[str, int]] = set()
        self._main_in_call = False  # the main thread is inside a call (see _main_call)
        self._follows: dict[tuple[str, bytes], list[_Follow]] = {}
        self._unreadable: dict[int, float] = {}  # lock key -> monotonic time to retry
        # Reentrant: a signal handler's call may land in the main thread's update of the count.
        self._stats_lock = threading.RLock()
        self._processed = 0
        self._pool = _Pool(self._connect)

        conn = self._connect()
        try:
            ensure_schema(conn, namespace)
        except psycopg.Error as exc:
            conn.close()
            raise StorageError(
                f"cannot create or migrate the namespace {namespace!r} in PostgreSQL at {self._where}: "
                f"{_first_line(exc)}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        self._pool.give(conn)

        self._wakes = [threading.Event() for _ in range(workers)]
        self._threads = [threading.Thread(target=self._listen, name=f"pachyderm-pg-listen-{namespace}", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work_loop, args=(wake,), name=f"pachyderm-pg-worker-{namespace}", daemon=True)
            for wake in self._wakes
        ]
        for thread in self._threads:
            start_thread(thread)

    # -- public API -----------------------------------------------------------------

    @classmethod
    def drop_namespace(cls, dsn: str, namespace: str) -> None:
        """Delete an ecosystem's tables and everything in them (close its nodes first)."""
        check_namespace(namespace)
        params = _parse_dsn(dsn)
        try:
            conn: Connection = psycopg.connect(dsn, connect_timeout=5)
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {_describe(params)}: {_first_line(exc)}"
            ) from exc
        with conn:
            drop_schema(conn, namespace)

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def processed(self) -> int:
        """Messages this node has processed and committed (for monitoring). A signal handler's
        call landing in the main thread's very update of this count may go uncounted."""
        return self._processed

    def send(self, envelope: Envelope[E, object]) -> None:
        """Deliver ``envelope``; return once it is applied and committed (or dead-lettered).

        If its activation fails, the message becomes a dead letter.
        """
        forbid_inside_activation("send")
        self._deliver(envelope, raises=False)

    def send_sync(self, envelope: Envelope[E, S]) -> S:
        """Deliver ``envelope`` and return the entity's new state once it is committed.

        Raises ``ActivationError`` if ``activate`` raised; the entity keeps its state.
        """
        forbid_inside_activation("send_sync")
        return self._deliver(envelope, raises=True)  # type: ignore[return-value]

    async def asend(self, envelope: Envelope[E, object]) -> None:
        """``send`` for asyncio code: the transaction runs in a thread, not on the loop."""
        forbid_inside_activation("asend")
        self._refuse_handler_await()
        await asyncio.to_thread(self._deliver, envelope, False)

    async def asend_sync(self, envelope: Envelope[E, S]) -> S:
        """``send_sync`` for asyncio code: the transaction runs in a thread, not on the loop."""
        forbid_inside_activation("asend_sync")
        self._refuse_handler_await()
        result: object = await asyncio.to_thread(self._deliver, envelope, True)
        return result  # type: ignore[return-value]

    def _refuse_handler_await(self) -> None:
        """An async call from a signal handler (which may run an event loop of its own) that
        interrupted a call of the main thread (``_main_call``): its transaction would run on
        another thread, which may wait for what the interrupted call holds (the entity's
        lock, the lock on followers or on the statistics, a lock inside psycopg), and the
        handler waits for that thread."""
        if self._main_in_call and _interruptible():
            raise ReentrantCallError(
                f"{self!r}: an async call came from a signal handler that interrupted a call of this "
                "same thread; its transaction would run on another thread and may wait for what the "
                "interrupted call holds until the handler returns, which waits for it. Have the "
                "handler set a flag (or hand the work to another thread) and make the call after it "
                "returns; the synchronous twin is served there for other entities"
            )

    @_main_call
    def state(self, address: Address[E, Any, S]) -> S:
        """The entity's latest committed state, without activating it."""
        forbid_inside_activation("state")
        spec = self._spec_for_address(address)
        self._check_open()
        entity_id = self._codec.encode_id(spec, address.id)
        row = self._run(
            lambda conn: conn.execute(self._q.state, {"kind": spec.kind, "id": entity_id}).fetchone(), "state"
        )
        if row is None:
            return self._kernel.initial_state(spec, address)  # type: ignore[return-value]
        return self._codec.decode_state(spec, row[1], where=repr(address))  # type: ignore[return-value]

    @_main_call
    def follow(self, address: Address[E, Any, S]) -> Subscription[S]:
        """Follow the entity: ``.state`` now, then every later committed state, in order.

        States committed by any node are delivered, in commit order.
        """
        forbid_inside_activation("follow")
        spec = self._spec_for_address(address)
        self._check_open()
        entity_id = self._codec.encode_id(spec, address.id)
        entity = (spec.kind, entity_id)
        key = lock_key(self._namespace, spec.kind, entity_id)
        token = uuid.uuid4()

        def register(conn: Connection) -> _Follow:
            # Under the entity's lock, so that every later activation sees the follows row.
            with conn.pipeline():
                conn.execute(self._q.lock, (key,))
                cursor = conn.execute(self._q.state, {"kind": spec.kind, "id": entity_id})
            row = cursor.fetchone()
            if row is None:
                version, state = 0, self._kernel.initial_state(spec, address)
            else:
                version, state = row[0], self._codec.decode_state(spec, row[1], where=repr(address))
            conn.execute(self._q.follow_insert, (token, self._node, spec.kind, entity_id, version))
            subscription: Subscription[Any] = Subscription(address, state, lambda _: self._drop_follow(token))
            follow = _Follow(subscription, token, entity, spec, address, version)
            # Registered before the commit: nothing can commit on this entity until we do.
            with self._follow_lock:
                follows = [f for f in self._follows.get(entity, []) if f.token != token]
                self._follows[entity] = [*follows, follow]
            return follow

        try:
            with self._main_thread_takes(key, address):
                follow = self._run(register, "follow")
        except BaseException:
            self._forget_follow(token)
            raise
        return follow.subscription

    @_main_call
    def dead_letters(self) -> list[DeadLetter]:
        """Messages whose activation failed with nobody waiting, oldest first (all nodes)."""
        forbid_inside_activation("dead_letters")
        self._check_open()
        rows = self._run(lambda conn: conn.execute(self._q.dead_list, (self._kinds,)).fetchall(), "dead_letters")
        return [DeadLetter(row[0], self._codec.decode_message(row[1]), row[2]) for row in rows]

    def retry(self, dead_letter: DeadLetter) -> None:
        """Send a dead letter again (after fixing the cause); it leaves the list.

        Taking it off the list and processing it again commit together.
        """
        forbid_inside_activation("retry")
        with self._main_thread_takes_letter(dead_letter):
            self._deliver(dead_letter.envelope, raises=False, dead_letter=dead_letter.id)

    @_main_call
    def discard(self, dead_letter: DeadLetter) -> None:
        """Drop a dead letter for good."""
        forbid_inside_activation("discard")
        self._check_open()
        with self._main_thread_takes_letter(dead_letter):
            taken = self._run(lambda conn: conn.execute(self._q.dead_take, (dead_letter.id,)).fetchone(), "discard")
        if taken is None:
            raise LookupError(f"dead letter {dead_letter.id} is not (or no longer) in {self!r}")

    @_main_call
    def close(self) -> None:
        """Stop this node's threads, end its subscriptions, and close its connections.

        Pending messages stay in the database for the other nodes (or the next start).
        """
        if not _interruptible():  # a signal handler (a graceful shutdown) may land in entity code
            forbid_inside_activation("close")
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        for wake in self._wakes:
            wake.set()
        self._poke_listener()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        with self._follow_lock:
            follows = [f for fs in self._follows.values() for f in fs]
        if follows:
            self._final_follow_sync(follows)
        with self._follow_lock:
            self._follows.clear()
        for follow in follows:
            follow.subscription._end()
        self._pool.close()

    def __enter__(self) -> Postgres[E]:
        return self

    def __repr__(self) -> str:
        return (
            f"<Postgres {self._declaration.name} at {self._where} namespace={self._namespace}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- connections ----------------------------------------------------------------

    def _connect(self, autocommit: bool = False) -> Connection:
        try:
            conn: Connection = psycopg.connect(
                self._conninfo, autocommit=autocommit, connect_timeout=self._connect_timeout
            )
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {self._where}: {_first_line(exc)}"
            ) from exc
        return conn

    @contextlib.contextmanager
    def _main_thread_takes(self, lock: int | tuple[str, int], what: object) -> Iterator[None]:
        """Around a call whose transactions take ``lock``: an entity's lock key, or a dead
        letter's row (``("dead", id)``), which retry and discard delete. ``what`` names it in
        the error (formatted only then).

        A signal handler runs in the main thread, in the middle of whatever it interrupted.
        Had that been a call holding this lock, a call from the handler that takes it too
        would wait for it forever: that is refused with ReentrantCallError. The lock is
        marked from before it is taken until after it is released, so a handler landing
        on either edge is refused too, never left waiting.
        """
        if not _interruptible():
            yield
            return
        if lock in self._main_locks:
            raise ReentrantCallError(
                f"{self!r}: a call for {what} came from a signal handler that interrupted another call "
                f"for it in this same thread, which holds its lock until the handler returns: it could "
                "never finish. Have the handler set a flag (or hand the work to another thread) "
                "and make the call after it returns; calls for other entities and dead letters are "
                "served there"
            )
        try:  # added inside: Ctrl-C's handler runs as add() returns, and must find the discard ahead
            self._main_locks.add(lock)
            yield
        finally:
            self._main_locks.discard(lock)

    def _main_thread_takes_letter(self, dead_letter: DeadLetter) -> contextlib.AbstractContextManager[None]:
        """``_main_thread_takes`` for the row of a dead letter, which retry and discard delete."""
        return self._main_thread_takes(("dead", dead_letter.id), f"dead letter {dead_letter.id}")

    def _run(self, work: Callable[[Connection], T], what: str) -> T:
        """Run ``work`` in one transaction on a pooled connection, then commit.

        A connection that turns out stale (the server restarted since it was last
        used) is replaced once, transparently: nothing was committed on it.
        """
        attempt = 0
        while True:
            attempt += 1
            self._check_open()
            try:
                conn, fresh = self._pool.take()
            except DatabaseUnavailableError as exc:
                raise DatabaseUnavailableError(f"{what}: {exc}; nothing was applied") from exc.__cause__
            try:
                result = work(conn)
            except _CommitUnknown as exc:
                conn.close()
                self._pool.flush()
                raise self._outcome_unknown(what, exc.__cause__ or exc) from exc.__cause__
            except BaseException as exc:
                if isinstance(exc, psycopg.Error) and _lost(conn, exc):
                    conn.close()
                    self._pool.flush()
                    if not fresh and attempt == 1:
                        continue
                    raise DatabaseUnavailableError(
                        f"{what}: lost the connection to PostgreSQL at {self._where} ({_first_line(exc)}); "
                        "nothing was applied"
                    ) from exc
                _rollback(conn)
                self._pool.give(conn)
                if isinstance(exc, psycopg.errors.TransactionRollback) and attempt < 5:
                    continue  # deadlock or serialisation failure: nothing was applied
                if isinstance(exc, psycopg.Error):
                    raise StorageError(f"{what} failed in PostgreSQL at {self._where}: {_first_line(exc)}") from exc
                raise
            try:
                conn.commit()
            except psycopg.Error as exc:
                lost = _lost(conn, exc)
                conn.close()
                if lost:
                    self._pool.flush()
                    raise self._outcome_unknown(what, exc) from exc
                raise StorageError(f"{what}: the commit failed in PostgreSQL at {self._where}: {_first_line(exc)}") from exc
            self._pool.give(conn)
            return result

    def _outcome_unknown(self, what: str, exc: BaseException) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"{what}: the connection to PostgreSQL at {self._where} broke while committing "
            f"({_first_line(exc)}): the outcome is unknown, it may or may not have been applied",
            applied=None,
        )

    # -- processing -----------------------------------------------------------------

    @_main_call
    def _deliver(self, envelope: Envelope[Any, Any], raises: bool, dead_letter: int | None = None) -> object:
        """Process a caller's message on this node, after its entity's older pending messages."""
        self._check_open()
        spec = self._declaration.check_envelope(envelope)
        entity_id = self._codec.encode_id(spec, envelope.address.id)
        body = self._codec.encode_message(envelope)
        key = lock_key(self._namespace, spec.kind, entity_id)
        q = self._q

        def work(conn: Connection) -> tuple[_Batch, _Tail]:
            tail = _Tail(spec, envelope, entity_id, body, raises)
            with conn.pipeline():
                conn.execute(q.lock, (key,))
                cursor = conn.execute(q.read, {"keys": [key], "limit": self.batch_size, "kinds": [spec.kind], "ids": [entity_id]})
            batch = self._process(cursor.fetchall(), tail)
            if tail.done and dead_letter is not None:
                if conn.execute(q.dead_take, (dead_letter,)).fetchone() is None:
                    raise LookupError(f"dead letter {dead_letter} is not (or no longer) in {self!r}")
            self._write_and_commit(conn, batch)
            return batch, tail

        with self._main_thread_takes(key, envelope.address):
            while True:
                batch, tail = self._run(work, "send_sync" if raises else "send")
                self._after_commit(batch)
                if tail.done:
                    break
                # More older messages than one transaction takes: those were committed; go on.
        if tail.error is not None and raises:
            raise tail.error
        return tail.result

    def _process(self, rows: Sequence[tuple[Any, ...]], tail: _Tail | None) -> _Batch:
        """Run the activations of one transaction (rows from ``Queries.read``)."""
        batch = _Batch()
        entities = batch.entities
        messages: list[tuple[int, _Entity, bytes]] = []
        for part, seq, kind, entity_id, data, version, followed in rows:
            if part == 0:
                entities[(kind, entity_id)] = _Entity(kind, entity_id, data, version or 0, followed)
            else:
                messages.append((seq, entities[(kind, entity_id)], data))
        batch.more = len(messages) >= self.batch_size
        decode_message = self._codec.decode_message
        depth = thread_marks.depth
        thread_marks.depth = depth + 1  # activating(), inline: see there
        try:
            for seq, entity, body in messages:
                if entity.blocked is not None:
                    continue  # an earlier message of this entity is unreadable here: keep FIFO
                try:
                    if entity.spec is None:
                        self._prepare(entity)
                    envelope = decode_message(body)
                except StorageError as exc:
                    entity.blocked = exc
                    batch.blocked.append(entity)
                    continue
                batch.consumed.append(seq)
                error = self._activate(batch, entity, envelope)
                if error is not None:
                    batch.dead.append((entity, body, envelope, error))
            if tail is not None and not batch.more:
                entity = entities[(tail.spec.kind, tail.id)]
                if entity.blocked is not None:
                    raise StorageError(
                        f"an earlier message for {tail.envelope.address!r} cannot be processed by this node, "
                        f"so {tail.envelope!r} cannot be either (nothing was applied): {entity.blocked}"
                    )
                if entity.spec is None:
                    self._prepare(entity)
                tail.error = self._activate(batch, entity, tail.envelope)
                tail.result = entity.state
                tail.done = True
                if tail.error is not None and not tail.raises:
                    batch.dead.append((entity, tail.body, tail.envelope, tail.error))
        finally:
            thread_marks.depth = depth
        return batch

    def _prepare(self, entity: _Entity) -> None:
        spec = self._declaration.by_kind.get(entity.kind)
        if spec is None:
            raise StorageError(f"entity kind {entity.kind!r} is not declared in {self._declaration.name}")
        entity.spec = spec
        entity.address = address = make_address(spec.cls, self._codec.decode_id(spec, entity.id))
        if entity.data is not None:
            entity.state = self._codec.decode_state(spec, entity.data, where=repr(address))

    def _activate(self, batch: _Batch, entity: _Entity, envelope: Envelope[Any, Any]) -> ActivationError | None:
        spec, address = entity.spec, entity.address
        assert spec is not None and address is not None
        message = envelope.message
        codec = self._codec
        batch.count += 1
        self._history.append((address, message))
        try:
            if entity.state is _UNINIT:
                try:
                    entity.state = self._kernel.initial_state(spec, address)
                except Exception as exc:
                    raise ActivationError(
                        address, message, None, self._recent_messages(address),
                        f"init({address.id!r}) raised {type(exc).__name__}: {exc}",
                    ) from exc
            outbox, new_state = self._kernel.activate(spec, address, message, entity.state, self._recent_messages)
            try:
                state_bytes = codec.encode_state(spec, new_state)
                out = [self._encode_out(sent) for sent in outbox]
            except CodecError as exc:
                raise ActivationError(
                    address, message, entity.state, self._recent_messages(address),
                    f"what it returned cannot be stored: {exc}",
                ) from exc
        except ActivationError as error:
            return error
        entity.state = new_state
        entity.state_bytes = state_bytes
        entity.version += 1
        entity.dirty = True
        if entity.followed:
            entity.versions.append((entity.version, new_state, state_bytes))
        batch.outbox.extend(out)
        return None

    def _encode_out(self, envelope: Envelope[Any, Any]) -> tuple[int, str, bytes, bytes]:
        spec = self._declaration.by_class[envelope.address.entity]
        entity_id = self._codec.encode_id(spec, envelope.address.id)
        return (
            lock_key(self._namespace, spec.kind, entity_id),
            spec.kind,
            entity_id,
            self._codec.encode_message(envelope),
        )

    def _recent_messages(self, address: Address[Any, Any, Any]) -> Sequence[object]:
        # list() of a deque is atomic under the GIL; iterating it while other threads append is not.
        messages = [message for a, message in list(self._history) if a == address][:-1]
        return messages[-HISTORY_PER_ENTITY:]

    def _write_and_commit(self, conn: Connection, batch: _Batch) -> None:
        """Send the batch's writes and the COMMIT in one round trip."""
        try:
            self._write(conn, batch)
        except psycopg.Error as exc:
            if _lost(conn, exc):
                raise _CommitUnknown(exc) from exc
            raise

    def _write(self, conn: Connection, batch: _Batch) -> None:
        q = self._q
        dirty = [e for e in batch.entities.values() if e.dirty]
        followed = [e for e in dirty if e.versions]
        with conn.pipeline():
            if batch.consumed:
                conn.execute(q.delete_pending, (batch.consumed,))
            if dirty:
                conn.execute(q.upsert_entities, (
                    [e.kind for e in dirty], [e.id for e in dirty],
                    [e.version for e in dirty], [e.state_bytes for e in dirty],
                ))
            if batch.outbox:
                outbox = batch.outbox
                conn.execute(q.insert_pending, (
                    [o[0] for o in outbox], [o[1] for o in outbox], [o[2] for o in outbox], [o[3] for o in outbox],
                ))
                conn.execute(q.notify, (self._work_channel, ""))
            if followed:
                rows = [(e.kind, e.id, version, data) for e in followed for version, _, data in e.versions]
                conn.execute(q.insert_history, (
                    [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                ))
                payload = ",".join(str(lock_key(self._namespace, e.kind, e.id)) for e in followed)
                conn.execute(q.notify, (self._follow_channel, payload if len(payload) < 7000 else "*"))
            if batch.dead:
                dead = batch.dead
                conn.execute(q.insert_dead, (
                    [d[0].kind for d in dead], [d[0].id for d in dead], [d[1] for d in dead],
                    [_pg_text(d[3].reason) for d in dead],
                ))
            conn.commit()

    def _after_commit(self, batch: _Batch) -> None:
        updates = [e for e in batch.entities.values() if e.versions]
        if updates:
            self._push_local(updates)
        if batch.outbox:
            for wake in self._wakes:
                wake.set()
        for _, _, envelope, error in batch.dead:
            logger.warning("pachyderm-typed: dead letter %r: %s", envelope, error.reason)
        if batch.count:
            with self._stats_lock:
                self._processed += batch.count

    # -- workers ----------------------------------------------------------------------

    def _work_loop(self, wake: threading.Event) -> None:
        conn: Connection | None = None
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                wake.clear()
                if self._stopping.is_set():  # close() may have set wake just before the clear
                    break
                outcome = self._claim_and_process(conn)
                backoff = 0.1
                if outcome == _IDLE:
                    wake.wait(self.idle_poll)
                elif outcome == _BUSY:
                    wake.wait(0.1)  # the work is held by another node; retry soon in case it died
            except (psycopg.Error, DatabaseUnavailableError, _CommitUnknown) as exc:
                if conn is not None and not _lost(conn, exc):
                    _rollback(conn)
                    logger.warning("pachyderm-typed: a worker batch failed (%s); retrying", _first_line(exc))
                else:
                    logger.warning("pachyderm-typed: worker lost PostgreSQL at %s (%s); reconnecting",
                                   self._where, _first_line(exc))
                    if conn is not None:
                        conn.close()
                    conn = None
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                logger.exception("pachyderm-typed: a worker batch failed")
                if conn is not None:
                    _rollback(conn)
                self._stopping.wait(1.0)
        if conn is not None:
            conn.close()

    def _claim_and_process(self, conn: Connection) -> int:
        q = self._q
        now = time.monotonic()
        if self._unreadable:
            self._unreadable = {k: until for k, until in self._unreadable.items() if until > now}
        skip = list(self._unreadable)
        window = self.batch_size * 2
        locked: list[int] = []
        seen = False
        after = 0
        try:
            for _ in range(4):
                with conn.pipeline():
                    cursor = conn.execute(q.claim, (after, self._kinds, skip, window, self.batch_entities))
                rows = cursor.fetchall()
                if not rows:
                    break
                seen = True
                locked = [row[0] for row in rows if row[1]]
                if locked or rows[0][3] < window:
                    break
                after = rows[0][2]  # all taken by other nodes: look further back in the queue
            if not locked:
                conn.rollback()
                return _BUSY if seen else _IDLE
            rows = conn.execute(q.read, {"keys": locked, "limit": self.batch_size, "kinds": [], "ids": []}).fetchall()
            batch = self._process(rows, None)
            self._write_and_commit(conn, batch)
        except BaseException:
            _rollback(conn)
            raise
        for entity in batch.blocked:
            key = lock_key(self._namespace, entity.kind, entity.id)
            self._unreadable[key] = time.monotonic() + self.unreadable_backoff
            logger.warning(
                "pachyderm-typed: this node cannot process the pending messages of %s %r and leaves them "
                "to nodes that can (retrying in %.0f s): %s",
                entity.kind, entity.id, self.unreadable_backoff, entity.blocked,
            )
        self._after_commit(batch)
        return _DONE

    # -- listener: wake-ups, followers, heartbeats ---------------------------------------

    def _listen(self) -> None:
        conn: Connection | None = None
        backoff = 0.1
        down_since: float | None = None
        next_tick = 0.0
        ticks = 0
        while not self._stopping.is_set():
            try:
                if conn is None:
                    conn = self._connect(autocommit=True)
                    for channel in (self._work_channel, self._follow_channel, self._node_channel):
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    if down_since is not None:
                        logger.warning("pachyderm-typed: reconnected to PostgreSQL at %s after %.1f s",
                                       self._where, time.monotonic() - down_since)
                    down_since = None
                    backoff = 0.1
                    # Notifications sent while we were not listening are lost: catch up.
                    for wake in self._wakes:
                        wake.set()
                    self._refresh(conn, None)
                timeout = min(1.0, max(0.0, next_tick - time.monotonic()))
                notes = list(conn.notifies(timeout=timeout, stop_after=1))
                keys: set[int] | None = set()
                refresh = False
                for note in notes:
                    if note.channel == self._work_channel:
                        for wake in self._wakes:
                            wake.set()
                    elif note.channel == self._follow_channel:
                        refresh = True
                        if note.payload == "*" or keys is None:
                            keys = None
                        else:
                            keys.update(int(k) for k in note.payload.split(",") if k)
                if refresh:
                    self._refresh(conn, keys)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.heartbeat_interval
                    self._tick(conn, ticks)
                    ticks += 1
            except (psycopg.Error, DatabaseUnavailableError) as exc:
                if conn is not None:
                    conn.close()
                conn = None
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning("pachyderm-typed: lost PostgreSQL at %s (%s); reconnecting",
                                   self._where, _first_line(exc))
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                logger.exception("pachyderm-typed: the listener failed")
                self._stopping.wait(1.0)
        if conn is not None:
            conn.close()

    def _poke_listener(self) -> None:
        """Wake this node's listener out of its wait so that close() is prompt."""
        try:
            conn, _ = self._pool.take()
        except (DatabaseUnavailableError, ClosedError):
            return  # the listener notices _stopping within a second anyway
        try:
            conn.execute(self._q.notify, (self._node_channel, ""))
            conn.commit()
        except psycopg.Error:
            conn.close()
        else:
            self._pool.give(conn)

    def _tick(self, conn: Connection, tick: int) -> None:
        with self._follow_lock:
            live = [(f.token, f.seen) for fs in self._follows.values() for f in fs]
        if live:
            conn.execute(self._q.follow_heartbeat, ([t for t, _ in live], [s for _, s in live]))
            self._refresh(conn, None)  # guards against a lost notification
        if tick % 6 == 0:
            conn.execute(self._q.follow_expire, (self.follow_grace,))
            conn.execute(self._q.history_prune)

    # -- followers ----------------------------------------------------------------------

    def _refresh(self, conn: Connection, keys: set[int] | None) -> None:
        """Read the committed states that local followers have not seen yet, and hand them out."""
        with self._follow_lock:
            wanted: dict[tuple[str, bytes], int] = {}
            for entity, follows in self._follows.items():
                if keys is not None and lock_key(self._namespace, *entity) not in keys:
                    continue
                wanted[entity] = min(f.seen for f in follows)
        if not wanted:
            return
        entities = list(wanted)
        rows = conn.execute(self._q.history_read, (
            [e[0] for e in entities], [e[1] for e in entities], [wanted[e] for e in entities],
        )).fetchall()
        by_entity: dict[tuple[str, bytes], list[tuple[int, bytes]]] = {}
        for kind, entity_id, version, data in rows:
            by_entity.setdefault((kind, entity_id), []).append((version, data))
        with self._follow_lock:
            for entity, versions in by_entity.items():
                decoded: dict[int, object] = {}
                for follow in list(self._follows.get(entity, ())):
                    for version, data in versions:
                        if version <= follow.seen:
                            continue
                        if version != follow.seen + 1:
                            self._end_follow(follow, f"states {follow.seen + 1}..{version - 1} are no longer stored")
                            break
                        if version not in decoded:
                            try:
                                decoded[version] = self._codec.decode_state(follow.spec, data, repr(follow.address))
                            except StorageError as exc:
                                self._end_follow(follow, str(exc))
                                break
                        follow.subscription._push(decoded[version])
                        follow.seen = version

    def _push_local(self, updates: list[_Entity]) -> None:
        """Hand this node's own commits to its local followers without a round trip."""
        with self._follow_lock:
            for entity in updates:
                for follow in self._follows.get((entity.kind, entity.id), ()):
                    for version, state, _ in entity.versions:
                        if version == follow.seen + 1:
                            follow.subscription._push(state)
                            follow.seen = version
                        # a gap means another node committed in between: the listener fills it in order

    def _end_follow(self, follow: _Follow, reason: str) -> None:
        """Under the follow lock: end a subscription that can no longer be served in order."""
        logger.error("pachyderm-typed: ending the subscription to %r: %s", follow.address, reason)
        follows = self._follows.get(follow.entity, [])
        if follow in follows:
            follows.remove(follow)
            if not follows:
                del self._follows[follow.entity]
        follow.subscription._end()

    def _forget_follow(self, token: uuid.UUID) -> _Follow | None:
        with self._follow_lock:
            for entity, follows in self._follows.items():
                for follow in follows:
                    if follow.token == token:
                        follows.remove(follow)
                        if not follows:
                            del self._follows[entity]
                        return follow
        return None

    @_main_call
    def _drop_follow(self, token: uuid.UUID) -> None:
        follow = self._forget_follow(token)
        if follow is None or self._closed:
            return

        def drop(conn: Connection) -> None:
            conn.execute(self._q.follow_delete, ([token],))
            conn.execute(self._q.history_prune_entity, {"kind": follow.entity[0], "id": follow.entity[1]})

        try:
            self._run(drop, "unfollow")
        except (StorageError, ClosedError) as exc:
            # The row expires after follow_grace seconds without heartbeats.
            logger.info("pachyderm-typed: could not remove a follower row now (%s)", exc)

    def _final_follow_sync(self, follows: list[_Follow]) -> None:
        """At close: deliver what was committed up to now, then remove this node's follower rows."""
        try:
            conn = self._connect(autocommit=True)
        except DatabaseUnavailableError:
            return
        with conn:
            try:
                self._refresh(conn, None)
                conn.execute(self._q.follow_delete, ([f.token for f in follows],))
                conn.execute(self._q.history_prune)
            except psycopg.Error as exc:
                logger.info("pachyderm-typed: could not tidy follower rows at close (%s)", exc)


# -- inspection (``python -m pachyderm_typed inspect DSN [--namespace NS] [KIND ID]``) ----------


def inspect_postgres(dsn: str, argv: list[str], out: TextIO) -> int:
    """``inspect DSN [--namespace NS] [KIND ID]``: kinds with entity, pending and dead-letter
    counts, or one entity's stored state as JSON.

    Needs no declaration: it reads the stored JSON and changes nothing. Returns the exit
    status: 0 on success, 1 when the store cannot be read or the entity is not there, 2 on
    a usage error. ``ID`` is matched as a string first, then as JSON (``42``, ``'["a", 1]'``).
    """
    namespace = "pachyderm"
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--namespace":
            namespace = next(args, "")
        elif arg.startswith("--namespace="):
            namespace = arg.partition("=")[2]
        else:
            rest.append(arg)
    if len(rest) not in (0, 2):
        print("usage: python -m pachyderm_typed inspect DSN [--namespace NS] [KIND ID]", file=out)
        return 2
    try:
        check_namespace(namespace)
        where = _describe(_parse_dsn(dsn))
    except ValueError as exc:
        print(f"error: {exc}", file=out)
        return 2
    try:
        conn: Connection = psycopg.connect(dsn, connect_timeout=5)
    except psycopg.Error as exc:
        print(f"error: cannot connect to PostgreSQL at {where}: {_first_line(exc)}", file=out)
        return 1
    with conn:
        try:
            row = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'meta'", (namespace,)
            ).fetchone()
            if row is None:
                print(f"error: PostgreSQL at {where} has no pachyderm-typed namespace {namespace!r}", file=out)
                return 1
            s = sql.Identifier(namespace)
            version_row = conn.execute(
                sql.SQL("SELECT value FROM {s}.meta WHERE key = 'schema_version'").format(s=s)
            ).fetchone()
            version = int(version_row[0]) if version_row else 0
            if version > SCHEMA_VERSION:
                print(f"error: namespace {namespace!r} has schema version {version}, newer than this "
                      f"pachyderm-typed ({SCHEMA_VERSION}): upgrade it to inspect", file=out)
                return 1
            if rest:
                return _inspect_entity(conn, s, rest[0], rest[1], out)
            return _inspect_overview(conn, s, namespace, where, version, out)
        except psycopg.Error as exc:
            print(f"error: reading namespace {namespace!r} at {where} failed: {_first_line(exc)}", file=out)
            return 1


def _inspect_overview(conn: Connection, s: sql.Identifier, namespace: str, where: str, version: int, out: TextIO) -> int:
    counts: dict[str, list[int]] = {}
    for column, query in enumerate((
        sql.SQL("SELECT kind, count(*) FROM {s}.entities GROUP BY kind").format(s=s),
        sql.SQL("SELECT kind, count(*) FROM {s}.pending GROUP BY kind").format(s=s),
        sql.SQL("SELECT kind, count(*) FROM {s}.dead_letters GROUP BY kind").format(s=s),
    )):
        for kind, count in conn.execute(query).fetchall():
            counts.setdefault(kind, [0, 0, 0])[column] = count
    followers_row = conn.execute(sql.SQL("SELECT count(*) FROM {s}.follows").format(s=s)).fetchone()
    print(f"PostgreSQL {where}, namespace {namespace!r} (schema version {version})", file=out)
    width = max([len("total"), *(len(k) for k in counts)])
    print(f"{'kind':<{width}}  {'entities':>10}  {'pending':>10}  {'dead letters':>12}", file=out)
    totals = [0, 0, 0]
    for kind in sorted(counts):
        entities, pending, dead = counts[kind]
        totals = [totals[0] + entities, totals[1] + pending, totals[2] + dead]
        print(f"{kind:<{width}}  {entities:>10}  {pending:>10}  {dead:>12}", file=out)
    print(f"{'total':<{width}}  {totals[0]:>10}  {totals[1]:>10}  {totals[2]:>12}", file=out)
    print(f"followers: {followers_row[0] if followers_row else 0}", file=out)
    return 0


def _inspect_entity(conn: Connection, s: sql.Identifier, kind: str, raw_id: str, out: TextIO) -> int:
    from pachyderm_typed.cli import id_candidates  # the CLI imports this module lazily

    found = []
    for key in id_candidates(raw_id):
        row = conn.execute(
            sql.SQL(
                "SELECT e.version, e.state, (SELECT count(*) FROM {s}.pending p WHERE p.kind = e.kind AND p.id = e.id) "
                "FROM {s}.entities e WHERE e.kind = %(kind)s AND sha256(e.id) = sha256(%(id)s) AND e.id = %(id)s"
            ).format(s=s),
            {"kind": kind, "id": key},
        ).fetchone()
        if row is not None:
            found.append((load_json(key), row))
    if not found:
        print(f"error: {kind} {raw_id} has no stored state (never activated: its state is what its init "
              "returns), or the kind is not stored here", file=out)
        return 1
    if len(found) > 1:
        print(f"error: {kind} has both ids {raw_id!r} and {found[1][0]!r}: quote the id as JSON to choose "
              f"(e.g. '\"{raw_id}\"')", file=out)
        return 1
    entity_id, (version, data, pending) = found[0]
    try:
        record = load_json(data)
        state_version, state = record["v"], record["s"]
    except (ValueError, KeyError, TypeError) as exc:
        print(f"error: the stored state of {kind} {raw_id} is corrupt: {exc}", file=out)
        return 1
    report = {
        "kind": kind,
        "id": entity_id,
        "version": version,
        "state_version": state_version,
        "state": state,
        "pending": pending,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False), file=out)
    return 0
