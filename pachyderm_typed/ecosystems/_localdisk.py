"""``LocalDisk``: the durable embedded default, one process, one dbm file.

Same API and scheduling as ``InMemory`` (the shared engine in ``_world.py``);
what it adds is where things live:

* every batch the engine processes commits in one fsync'd SQLite transaction:
  the new states, the deletion of the pending rows it consumed, the outgoing
  messages not yet consumed (as pending rows) and any dead letters. A crash
  at any instant loses nothing acknowledged and applies nothing twice;
* pending rows are reloaded at open, in their original order, and delivered;
* the state cache holds at most ``cache_size`` entities (least recently written
  evicted first, only after their states are durable); others load on demand;
* what an activation returns is encoded right after it runs, so a state or
  message the codec cannot store fails that activation alone.

The file layout is in ``_dbmfile.py``; the codec in ``_codec.py``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._codec import Codec
from pachyderm_typed._dbmfile import DEAD, PENDING, DbmFile, key_seq, seq_key, state_key
from pachyderm_typed._ecosystem import AnyEntity, Declaration, Ecosystem, EntitySpec
from pachyderm_typed._kernel import Kernel, forbid_inside_activation
from pachyderm_typed._world import Batch, DeadLetter, Item, ThreadCall, World
from pachyderm_typed.errors import ActivationError, CodecError, DeclarationError, StorageError

logger = logging.getLogger("pachyderm_typed")

E = TypeVar("E")

DEFAULT_CACHE_SIZE = 10_000


class _StoringKernel(Kernel):
    """The kernel, plus encoding of what each activation returned (kept for the commit)."""

    __slots__ = ("codec", "states", "messages")

    def __init__(self, declaration: Declaration, codec: Codec) -> None:
        super().__init__(declaration)
        self.codec = codec
        self.states: dict[Address[Any, Any, Any], tuple[EntitySpec, bytes]] = {}
        # id(envelope) -> (envelope, bytes): the envelope is kept to make the id unambiguous.
        self.messages: dict[int, tuple[Envelope[Any, Any], bytes]] = {}

    def activate(
        self,
        spec: EntitySpec,
        address: Address[Any, Any, Any],
        message: object,
        state: object,
        history: Callable[[Address[Any, Any, Any]], Sequence[object]],
    ) -> tuple[Sequence[Envelope[Any, Any]], object]:
        outbox, new_state = Kernel.activate(self, spec, address, message, state, history)
        codec = self.codec
        try:
            data = codec.encode_state(spec, new_state)
            encoded = [(envelope, codec.encode_message(envelope)) for envelope in outbox] if outbox else ()
        except CodecError as exc:
            raise ActivationError(
                address, message, state, history(address), f"what it returned cannot be stored: {exc}"
            ) from exc
        self.states[address] = (spec, data)
        for envelope, message_data in encoded:
            self.messages[id(envelope)] = (envelope, message_data)
        return outbox, new_state

    def take(self) -> _Encoded:
        """What the open batch's activations returned, encoded; the next batch starts afresh."""
        encoded = _Encoded(self.states, self.messages)
        self.states, self.messages = {}, {}
        return encoded

    def clear(self) -> None:
        self.states, self.messages = {}, {}


class _Encoded:
    """A sealed batch's encoded states and outgoing messages, for its commit."""

    __slots__ = ("states", "messages")

    def __init__(
        self,
        states: dict[Address[Any, Any, Any], tuple[EntitySpec, bytes]],
        messages: dict[int, tuple[Envelope[Any, Any], bytes]],
    ) -> None:
        self.states = states
        self.messages = messages


class LocalDisk(World[E]):
    """Runs a declaration durably in one file: ``LocalDisk(App, "app.db")``.

    Same API as ``InMemory``. ``send`` returns once the message's activation is
    committed (fsync'd), ``send_sync`` once its new state is; messages produced
    by activations are stored in the same transaction and delivered exactly
    once in effect, also after a crash and reopening. One process opens a file
    at a time: a second opener gets ``AlreadyOpenError``.

    ``cache_size`` bounds how many entity states stay in memory; the rest load
    from the file on demand. ``history`` is the number of recent messages kept
    for ``ActivationError`` reports.

    Commits are pipelined: while one batch is being written and fsync'd, the
    next is processed (by the callers themselves, or the worker for asyncio
    callers and cascades), and a committer thread writes it as soon as the
    disk is free. Each caller still returns only after its own batch is durable.
    Thread callers that come back faster than a commit takes are waited for, so
    that they share the next commit (see ``Regroup``).
    """

    pipelined = True

    def __init__(
        self,
        declaration: type[Ecosystem[E]],
        path: str | os.PathLike[str],
        *,
        implementations: Mapping[type[AnyEntity], AnyEntity] | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        history: int = 1000,
    ) -> None:
        super().__init__(declaration, implementations=implementations, history=history)
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int, got {cache_size!r}")
        for spec in self._declaration.specs:
            if "\x00" in spec.kind:
                raise DeclarationError(f"{spec.cls.__qualname__}.kind {spec.kind!r} contains a NUL character")
        self._codec = Codec(self._declaration)  # raises DeclarationError before the file is touched
        self._storing = _StoringKernel(self._declaration, self._codec)
        self._kernel = self._storing
        # The engine's state cache: a dict kept in order of last commit (see _committed).
        self._cache: dict[Address[Any, Any, Any], object] = {}
        self._states = self._cache
        self._cache_size = cache_size
        self._keys: dict[Address[Any, Any, Any], bytes] = {}  # state keys of recently used entities
        self._failures = 0  # consecutive failed commits
        self._file = DbmFile(path)
        self.path: Path = self._file.path
        try:
            last = self._file.last_key(PENDING)
            self._next_pending = 1 if last is None else key_seq(last) + 1
            last = self._file.last_key(DEAD)
            self._next_dead = 1 if last is None else key_seq(last) + 1
            self._queue.extend(self._stored_pending())
        except BaseException:
            self._closed = True
            self._file.close()
            raise
        if self._queue:
            self._kick()  # deliver what was pending when the file was last closed (or crashed)

    def __repr__(self) -> str:
        return f"<LocalDisk {self._declaration.name} {str(self.path)!r}{' closed' if self._closed else ''}>"

    # -- public API additions -------------------------------------------------------

    def dead_letters(self) -> list[DeadLetter]:
        """Persisted dead letters, oldest first (they survive restarts)."""
        forbid_inside_activation("dead_letters")
        self._check_open()
        return self._shielded(self._stored_dead_letters)

    def _stored_dead_letters(self) -> list[DeadLetter]:
        with self._committing():
            self._check_open()
            return [self._dead_letter(key, data) for key, data in self._file.scan(DEAD)]

    def retry(self, dead_letter: DeadLetter) -> None:
        """Send a dead letter again: it moves back to pending atomically, then is delivered."""
        forbid_inside_activation("retry")
        self._check_open()
        call = self._thread_call(dead_letter.envelope, raises=False)
        self._shielded(lambda: self._revive(dead_letter, call))
        self._run_until(call, enqueue=False)

    def _revive(self, dead_letter: DeadLetter, call: ThreadCall) -> None:
        """Move the dead letter back to pending, as ``call``'s message, and queue it."""
        with self._committing():
            dead_key = self._stored_dead_letter(dead_letter)
            call.row = seq_key(PENDING, self._next_pending)
            self._next_pending += 1
            self._file.write([(call.row, self._codec.encode_message(dead_letter.envelope))], [dead_key])
            self._queue.append(call)

    # -- store hooks ----------------------------------------------------------------

    def _check_storable(self, envelope: Envelope[Any, Any]) -> None:
        # If its activation fails it is stored as a dead letter: unstorable is a CodecError now,
        # not at commit.
        self._codec.encode_message(envelope)

    def _state_key(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> bytes:
        keys = self._keys
        key = keys.get(address)
        if key is None:
            if len(keys) > 2 * self._cache_size:
                keys.clear()
            key = keys[address] = state_key(spec.kind, self._codec.encode_id(spec, address.id))
        return key

    def _load(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> object:
        data = self._file.get(self._state_key(spec, address))
        if data is None:
            return self._kernel.initial_state(spec, address)
        return self._codec.decode_state(spec, data, where=f"{address!r} in {self.path}")

    def _sealing(self, batch: Batch) -> None:
        batch.store = self._storing.take()

    def _commit(self, batch: Batch) -> None:
        encoded: _Encoded = batch.store
        state_key_of = self._state_key
        puts: list[tuple[bytes, bytes]] = [
            (state_key_of(spec, address), data) for address, (spec, data) in encoded.states.items()
        ]
        deletes = [item.row for item, _ in batch.done if item.row is not None]
        deletes.extend(item.row for item, _ in batch.failed if item.row is not None)
        rows: list[tuple[Item, bytes]] = []
        messages = encoded.messages
        for item in batch.produced:
            row = seq_key(PENDING, self._next_pending)
            self._next_pending += 1
            entry = messages.get(id(item.envelope))
            data = entry[1] if entry is not None and entry[0] is item.envelope else self._codec.encode_message(item.envelope)
            puts.append((row, data))
            rows.append((item, row))
        for item, error in batch.dead:
            puts.append((seq_key(DEAD, self._next_dead), self._codec.encode_message(item.envelope, str(error))))
            self._next_dead += 1
        if puts or deletes:
            self._file.write(puts, deletes)
        self._failures = 0
        for item, row in rows:
            item.row = row  # a later batch that consumes it deletes the row

    def _committed(self, batch: Batch) -> None:
        cache = self._cache
        if 2 * len(cache) < self._cache_size:
            return  # no eviction in sight: keeping the order would cost a dict move per write
        written: dict[Address[Any, Any, Any], Any] = batch.store.states
        for address in written:  # most recently committed last
            if address in cache:
                cache[address] = cache.pop(address)
        excess = len(cache) - self._cache_size
        if excess <= 0:
            return
        # Evict the least recently committed states, never one written by a batch that is not
        # durable yet: reloading it from the file would lose that update.
        dirty = [self._storing.states, *(sealed.store.states for sealed in self._sealed)]
        evict = []
        for address in cache:
            if not any(address in states for states in dirty):
                evict.append(address)
                if len(evict) == excess:
                    break
        for address in evict:
            del cache[address]

    def _reset_after_failure(self, failure: StorageError) -> None:
        """The file is unchanged: forget everything in flight and start again from the file."""
        self._storing.clear()
        self._cache.clear()
        try:
            self._queue.extendleft(reversed(self._stored_pending()))  # ahead of any newer call
        except StorageError:
            logger.exception("pachyderm-typed: cannot reload pending messages from %s", self.path)
        self._failures += 1

    def _back_off(self) -> None:
        # The worker retries reloaded messages at once: back off while the disk keeps failing.
        if self._failures > 1:
            time.sleep(min(1.0, 0.01 * 2 ** min(self._failures, 7)))
        if self._queue:
            self._kick()

    def _take_dead_letter(self, dead_letter: DeadLetter) -> None:
        self._file.write((), [self._stored_dead_letter(dead_letter)])

    def _stored_dead_letter(self, dead_letter: DeadLetter) -> bytes:
        """The key of a dead letter still in the file, or LookupError."""
        self._check_open()
        key = seq_key(DEAD, dead_letter.id)
        if self._file.get(key) is None:
            raise LookupError(f"dead letter {dead_letter.id} is not (or no longer) in {self!r}")
        return key

    def _release(self) -> None:
        self._file.close()

    # -- records --------------------------------------------------------------------

    def _stored_pending(self) -> list[Item]:
        items = []
        for key, data in self._file.scan(PENDING):
            try:
                envelope = self._codec.decode_message(data)
            except CodecError as exc:
                raise CodecError(
                    f"{self.path}: the pending message {key.decode()} cannot be loaded: {exc}. "
                    "Nothing was changed"
                ) from exc
            items.append(Item(envelope, row=key))
        return items

    def _dead_letter(self, key: bytes, data: bytes) -> DeadLetter:
        try:
            envelope = self._codec.decode_message(data)
            reason = self._codec.decode(data).get("reason", "")
        except CodecError as exc:
            raise CodecError(f"{self.path}: the dead letter {key.decode()} cannot be loaded: {exc}") from exc
        return DeadLetter(key_seq(key), envelope, str(reason))
