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
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._codec import Codec
from pachyderm_typed._dbmfile import DEAD, PENDING, DbmFile, key_seq, seq_key, state_key
from pachyderm_typed._ecosystem import AnyEntity, Declaration, Ecosystem, EntitySpec
from pachyderm_typed._kernel import Kernel, forbid_inside_activation
from pachyderm_typed._world import Batch, DeadLetter, Item, Waiter, World
from pachyderm_typed.errors import ActivationError, CodecError, DeclarationError, StorageError

logger = logging.getLogger("pachyderm_typed")

E = TypeVar("E")

DEFAULT_CACHE_SIZE = 10_000


class _StateCache(OrderedDict[Address[Any, Any, Any], object]):
    """The engine's state cache, in order of last write; trimmed only after a commit.

    Trimming between commits could evict a state that is newer than the file,
    and reloading it would lose an update: so ``trim`` runs once per commit.
    """

    def __setitem__(self, key: Address[Any, Any, Any], value: object) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)

    def trim(self, size: int) -> None:
        while len(self) > size:
            self.popitem(last=False)


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
        outbox, new_state = super().activate(spec, address, message, state, history)
        codec = self.codec
        try:
            data = codec.encode_state(spec, new_state)
            encoded = [(envelope, codec.encode_message(envelope)) for envelope in outbox]
        except CodecError as exc:
            raise ActivationError(
                address, message, state, history(address), f"what it returned cannot be stored: {exc}"
            ) from exc
        self.states[address] = (spec, data)
        for envelope, message_data in encoded:
            self.messages[id(envelope)] = (envelope, message_data)
        return outbox, new_state

    def message_data(self, envelope: Envelope[Any, Any]) -> bytes:
        entry = self.messages.get(id(envelope))
        if entry is not None and entry[0] is envelope:
            return entry[1]
        return self.codec.encode_message(envelope)

    def clear(self) -> None:
        self.states.clear()
        self.messages.clear()


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
    """

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
        self._cache = _StateCache()
        self._states = self._cache
        self._cache_size = cache_size
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
        with self._run_lock:
            self._check_open()
            return [self._dead_letter(key, data) for key, data in self._file.scan(DEAD)]

    def retry(self, dead_letter: DeadLetter) -> None:
        """Send a dead letter again: it moves back to pending atomically, then is delivered."""
        forbid_inside_activation("retry")
        with self._run_lock:
            dead_key = self._stored_dead_letter(dead_letter)
            row = seq_key(PENDING, self._next_pending)
            self._next_pending += 1
            self._file.write([(row, self._codec.encode_message(dead_letter.envelope))], [dead_key])
            item = Item(dead_letter.envelope, Waiter(raises=False), row=row)
            self._queue.append(item)
        self._run_until(item)

    # -- store hooks ----------------------------------------------------------------

    def _check_storable(self, envelope: Envelope[Any, Any]) -> None:
        # It may have to be stored (as a dead letter): unstorable is a CodecError now, not at commit.
        self._codec.encode_message(envelope)

    def _state_key(self, spec: EntitySpec, entity_id: object) -> bytes:
        return state_key(spec.kind, self._codec.encode_id(spec, entity_id))

    def _load(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> object:
        data = self._file.get(self._state_key(spec, address.id))
        if data is None:
            return self._kernel.initial_state(spec, address)
        return self._codec.decode_state(spec, data, where=f"{address!r} in {self.path}")

    def _commit(self, batch: Batch, dead: list[tuple[Item, ActivationError]]) -> None:
        storing = self._storing
        puts: list[tuple[bytes, bytes]] = [
            (self._state_key(spec, address.id), data) for address, (spec, data) in storing.states.items()
        ]
        deletes = [item.row for item, _ in batch.done if item.row is not None]
        deletes.extend(item.row for item, _ in batch.failed if item.row is not None)
        rows: list[tuple[Item, bytes]] = []
        for item in batch.produced:
            if not item.consumed:
                row = seq_key(PENDING, self._next_pending)
                self._next_pending += 1
                puts.append((row, storing.message_data(item.envelope)))
                rows.append((item, row))
        for item, error in dead:
            puts.append((seq_key(DEAD, self._next_dead), self._codec.encode_message(item.envelope, str(error))))
            self._next_dead += 1
        if puts or deletes:
            self._file.write(puts, deletes)
        self._failures = 0
        storing.clear()
        for item, row in rows:
            item.row = row
        self._cache.trim(self._cache_size)

    def _commit_failed(self, batch: Batch, error: BaseException) -> None:
        """The file is unchanged: forget everything in flight and start again from the file."""
        self._storing.clear()
        self._cache.clear()
        failure = error if isinstance(error, StorageError) else StorageError(
            f"{self.path}: committing failed ({type(error).__name__}: {error}); nothing was changed"
        )
        # Callers append to the queue without the run lock, so take items out one at a time:
        # iterating it while they append raised RuntimeError and left failed callers' messages
        # queued (applied later, then again when retried); an append between a scan and
        # clear() would have been dropped with its caller waiting forever. A message appended
        # after this loop is a new call: it stays and runs normally.
        queue = self._queue
        abandoned = []
        while queue:
            abandoned.append(queue.popleft())  # the only taker: we hold the run lock
        for item in [*(item for item, _ in batch.done), *(item for item, _ in batch.failed), *abandoned]:
            if item.waiter is not None and not item.waiter.done:
                item.waiter.fail(failure)
        try:
            queue.extendleft(reversed(self._stored_pending()))  # ahead of any newer call
        except StorageError:
            logger.exception("pachyderm-typed: cannot reload pending messages from %s", self.path)
        # The worker retries reloaded messages at once: back off while the disk keeps failing.
        self._failures += 1
        if self._failures > 1:
            time.sleep(min(1.0, 0.01 * 2 ** min(self._failures, 7)))

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
            items.append(Item(envelope, None, row=key))
        return items

    def _dead_letter(self, key: bytes, data: bytes) -> DeadLetter:
        try:
            envelope = self._codec.decode_message(data)
            reason = self._codec.decode(data).get("reason", "")
        except CodecError as exc:
            raise CodecError(f"{self.path}: the dead letter {key.decode()} cannot be loaded: {exc}") from exc
        return DeadLetter(key_seq(key), envelope, str(reason))
