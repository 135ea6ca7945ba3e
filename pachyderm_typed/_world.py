"""The public ecosystem API over one scheduling engine, shared by InMemory and LocalDisk.

Scheduling: one FIFO queue of pending messages per ecosystem, and one run lock.
Whoever holds the run lock takes messages from the queue, runs them through the
kernel, commits the batch (a no-op in memory, one transaction on disk), then
resolves the callers and notifies followers.

* ``send_sync``/``send`` called from a plain thread run inline: the caller takes
  the run lock and processes the queue up to its own message, together with any
  other caller's message already waiting (so concurrent callers share one commit:
  group commit). It never runs the cascade its message causes; a background
  worker thread does.
* The async twins never run activations on the event loop: they queue the
  message, wake the worker, and await a future it resolves after the commit.

A single queue gives FIFO per (sender, receiver) and one activation at a time
per entity. Activations are CPU-bound Python, so a finer lock would buy nothing
under the GIL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
from typing_extensions import Self

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._ecosystem import AnyEntity, Declaration, Ecosystem, EntitySpec
from pachyderm_typed._kernel import Kernel, activating, forbid_inside_activation
from pachyderm_typed._subscription import Subscription
from pachyderm_typed.errors import ActivationError, ClosedError, PachydermError, StorageError

logger = logging.getLogger("pachyderm_typed")

E = TypeVar("E")
S = TypeVar("S")

MISSING: Any = object()
HISTORY_PER_ENTITY = 20


@attrs.frozen
class DeadLetter:
    """A message whose activation failed with nobody waiting for the result.

    ``world.retry(dead_letter)`` sends it again; ``world.discard(dead_letter)`` drops it.
    """

    id: int
    envelope: Envelope[Any, Any]
    reason: str


class Waiter:
    """Completion of one queued message: set by the engine after its batch commits."""

    # One per send_sync call: slots keep the hot path free of dict allocations.
    __slots__ = ("done", "result", "error", "raises")

    def __init__(self, raises: bool) -> None:
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None
        self.raises = raises  # False: a failed activation becomes a dead letter

    def resolve(self, result: object) -> None:
        self.result = result
        self.done = True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True


class AsyncWaiter(Waiter):
    __slots__ = ("loop", "future")

    def __init__(self, raises: bool) -> None:
        super().__init__(raises)
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()

    def resolve(self, result: object) -> None:
        super().resolve(result)
        self._wake()

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        self._wake()

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(_set_done, self.future)
        except RuntimeError:  # the caller's loop is closed; nobody is waiting any more
            pass


def _unloadable(address: Address[Any, Any, Any], message: object, exc: StorageError) -> ActivationError:
    error = ActivationError(address, message, None, (), f"its stored state cannot be used: {exc}")
    error.__cause__ = exc
    return error


def _set_all_done(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Item:
    """One pending message. ``row`` is its key in a durable store, if it is stored."""

    __slots__ = ("envelope", "waiter", "row", "consumed")

    def __init__(self, envelope: Envelope[Any, Any], waiter: Waiter | None, row: Any = None) -> None:
        self.envelope = envelope
        self.waiter = waiter  # None: produced by an outbox
        self.row = row
        self.consumed = False


class Batch:
    """What one drain did, handed to ``_commit`` and then published."""

    __slots__ = ("done", "failed", "produced")

    def __init__(self) -> None:
        self.done: list[tuple[Item, object]] = []  # (item, new state), in order
        self.failed: list[tuple[Item, ActivationError]] = []
        self.produced: list[Item] = []  # outbox items, some consumed in the same batch


class World(Generic[E]):
    """An ecosystem instance: the public API every environment shares."""

    #: messages processed per commit at most (the worker's batch size)
    batch_size = 512

    def __init__(
        self,
        declaration: type[Ecosystem[E]],
        *,
        implementations: Mapping[type[AnyEntity], AnyEntity] | None = None,
        history: int = 1000,
    ) -> None:
        self._declaration = Declaration(declaration, implementations)
        self._kernel = Kernel(self._declaration)
        self._queue: deque[Item] = deque()
        self._run_lock = threading.Lock()
        self._leader = threading.Condition(threading.Lock())
        self._leading = False  # an inline caller is draining; the others wait on _leader
        self._states: dict[Address[Any, Any, Any], object] = {}
        self._followers: dict[Address[Any, Any, Any], list[Subscription[Any]]] = {}
        self._history: deque[tuple[Address[Any, Any, Any], object]] = deque(maxlen=max(history, 0))
        self._dead: dict[int, DeadLetter] = {}
        self._dead_seq = 0
        self._closed = False
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None

    # -- public API -----------------------------------------------------------------

    @property
    def declaration(self) -> Declaration:
        return self._declaration

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, envelope: Envelope[E, object]) -> None:
        """Deliver ``envelope``; return once it is accepted (durably, where that applies).

        If its activation fails, the message becomes a dead letter.
        """
        forbid_inside_activation("send")
        self._run_until(self._enqueue(envelope, Waiter(raises=False)))

    def send_sync(self, envelope: Envelope[E, S]) -> S:
        """Deliver ``envelope`` and return the entity's new state once it is committed.

        Raises ``ActivationError`` if ``activate`` raised; the entity keeps its state.
        """
        forbid_inside_activation("send_sync")
        item = self._enqueue(envelope, Waiter(raises=True))
        self._run_until(item)
        return self._outcome(item)  # type: ignore[return-value]

    async def asend(self, envelope: Envelope[E, object]) -> None:
        """``send`` for asyncio code: never runs an activation on the event loop."""
        forbid_inside_activation("asend")
        item = self._enqueue(envelope, AsyncWaiter(raises=False))
        await self._await(item)

    async def asend_sync(self, envelope: Envelope[E, S]) -> S:
        """``send_sync`` for asyncio code: never runs an activation on the event loop."""
        forbid_inside_activation("asend_sync")
        item = self._enqueue(envelope, AsyncWaiter(raises=True))
        await self._await(item)
        return self._outcome(item)  # type: ignore[return-value]

    def state(self, address: Address[E, Any, S]) -> S:
        """The entity's current committed state, without activating it."""
        spec = self._spec_for_address(address)
        with self._run_lock:
            self._check_open()
            return self._state_of(spec, address)  # type: ignore[no-any-return]

    def follow(self, address: Address[E, Any, S]) -> Subscription[S]:
        """Follow the entity: ``.state`` now, then every later committed state, in order."""
        spec = self._spec_for_address(address)
        with self._run_lock:
            self._check_open()
            subscription: Subscription[S] = Subscription(address, self._state_of(spec, address), self._unfollow)
            self._followers.setdefault(address, []).append(subscription)
        return subscription

    def dead_letters(self) -> list[DeadLetter]:
        """Messages whose activation failed with nobody waiting, oldest first."""
        with self._run_lock:
            return list(self._dead.values())

    def retry(self, dead_letter: DeadLetter) -> None:
        """Send a dead letter again (after fixing the cause); it leaves the list."""
        forbid_inside_activation("retry")
        with self._run_lock:
            self._take_dead_letter(dead_letter)
        self.send(dead_letter.envelope)

    def discard(self, dead_letter: DeadLetter) -> None:
        """Drop a dead letter for good."""
        with self._run_lock:
            self._take_dead_letter(dead_letter)

    def close(self) -> None:
        """Stop the worker, end every subscription, and release the store."""
        if self._closed:
            return
        with self._run_lock:
            self._closed = True
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        with self._run_lock:
            self._release()
            for subscriptions in self._followers.values():
                for subscription in subscriptions:
                    subscription._end()
            self._followers.clear()
            self._fail_queued()

    def _fail_queued(self) -> None:
        """Fail every caller still queued. Callers append without the run lock, so pop, never iterate."""
        queue = self._queue
        while queue:
            item = queue.popleft()
            if item.waiter is not None and not item.waiter.done:
                item.waiter.fail(ClosedError(f"{self!r} was closed before {item.envelope!r} was processed"))

    def __enter__(self) -> Self:  # `with LocalDisk(...) as world` keeps LocalDisk's own API
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._declaration.name}{' closed' if self._closed else ''}>"

    # -- engine ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self!r} is closed: open a new one to keep working")

    def _spec_for_address(self, address: Address[Any, Any, Any]) -> EntitySpec:
        if not isinstance(address, Address):
            raise TypeError(f"expected an Address, got {type(address).__qualname__}: use EntityType.address(id)")
        return self._declaration.spec_for(address.entity)

    def _enqueue(self, envelope: Envelope[Any, Any], waiter: Waiter) -> Item:
        self._check_open()
        self._declaration.check_envelope(envelope)
        self._check_storable(envelope)
        item = Item(envelope, waiter)
        self._queue.append(item)
        if self._closed:  # closed while we appended: close() may have missed this item
            self._fail_queued()
            self._check_open()
        return item

    def _outcome(self, item: Item) -> object:
        waiter = item.waiter
        assert waiter is not None and waiter.done
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def _await(self, item: Item) -> None:
        waiter = item.waiter
        assert isinstance(waiter, AsyncWaiter)
        self._kick()
        await waiter.future
        if waiter.error is not None and not isinstance(waiter.error, ActivationError):
            raise waiter.error

    def _run_until(self, item: Item) -> None:
        waiter = item.waiter
        assert waiter is not None
        if not self._leading and self._run_lock.acquire(blocking=False):
            try:  # uncontended: nobody to share a commit with, skip the leader protocol
                self._drain_until(item)
            finally:
                self._run_lock.release()
        leader = self._leader
        while not waiter.done:
            # Group commit: while one caller drains (its batch takes every caller's message
            # already queued), the others sleep here rather than queue on the run lock one
            # by one, and all wake together when its commit is done.
            with leader:
                while self._leading and not waiter.done:
                    leader.wait()
                if waiter.done:
                    break
                self._leading = True
            try:
                with self._run_lock:
                    self._drain_until(item)
            finally:
                with leader:
                    self._leading = False
                    leader.notify_all()
        if not waiter.raises and isinstance(waiter.error, PachydermError) and not isinstance(
            waiter.error, ActivationError
        ):
            raise waiter.error
        if self._queue:
            self._kick()

    def _drain_until(self, item: Item) -> None:
        """Under the run lock: process batches until ``item`` is done (or the world closes)."""
        waiter = item.waiter
        assert waiter is not None
        while not waiter.done:
            if self._closed:
                waiter.fail(ClosedError(f"{self!r} was closed before {item.envelope!r} was processed"))
                break
            self._drain(item)

    def _kick(self) -> None:
        if self._worker is None:
            with self._run_lock:
                if self._worker is None and not self._closed:
                    self._worker = threading.Thread(
                        target=self._work, name=f"pachyderm-{self._declaration.name}", daemon=True
                    )
                    self._worker.start()
        if not self._wake.is_set():  # the worker clears it before it looks at the queue
            self._wake.set()

    def _work(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while self._queue and not self._closed:
                with self._run_lock:
                    if self._closed:
                        break
                    try:
                        self._drain(None)
                    except Exception:  # a store failure: reported to the waiters, logged here
                        logger.exception("pachyderm-typed: a batch failed to commit")
                with self._leader:
                    self._leader.notify_all()  # inline callers whose messages this batch took

    def _drain(self, target: Item | None) -> None:
        """Under the run lock: process one batch, commit it, then publish it.

        With a ``target`` (an inline caller), stop once it is processed and the
        next message is a cascade rather than another caller's; otherwise take
        up to ``batch_size`` messages.
        """
        queue = self._queue
        states = self._states
        by_class = self._declaration.by_class
        kernel = self._kernel
        history = self._history
        recent = self._recent_messages
        batch = Batch()
        done, failed, produced = batch.done, batch.failed, batch.produced
        limit = self.batch_size
        reached = target is None
        count = 0
        with activating():
            while queue and count < limit:
                if reached and target is not None and queue[0].waiter is None:
                    break
                item = queue.popleft()
                item.consumed = True
                count += 1
                envelope = item.envelope
                address = envelope.address
                spec = by_class[address.entity]
                state = states.get(address, MISSING)
                if state is MISSING:
                    try:
                        state = self._load(spec, address)
                    except StorageError as exc:
                        # An unreadable stored state (corrupt, from newer code) fails this
                        # message alone; the record stays untouched.
                        failed.append((item, _unloadable(address, envelope.message, exc)))
                        if item is target:
                            reached = True
                        continue
                history.append((address, envelope.message))
                try:
                    outbox, new_state = kernel.activate(spec, address, envelope.message, state, recent)
                except ActivationError as error:
                    failed.append((item, error))
                else:
                    states[address] = new_state
                    done.append((item, new_state))
                    for out in outbox:
                        child = Item(out, None)
                        queue.append(child)
                        produced.append(child)
                if item is target:
                    reached = True
        dead = [(item, error) for item, error in failed if item.waiter is None or not item.waiter.raises]
        try:
            self._commit(batch, dead)
        except BaseException as exc:
            self._commit_failed(batch, exc)
            raise
        self._publish(batch, dead)

    def _recent_messages(self, address: Address[Any, Any, Any]) -> Sequence[object]:
        """What the entity received before the message being processed (the newest entry)."""
        messages = [message for a, message in self._history if a == address][:-1]
        return messages[-HISTORY_PER_ENTITY:]

    def _publish(self, batch: Batch, dead: list[tuple[Item, ActivationError]]) -> None:
        followers = self._followers
        # One cross-thread wake-up per event loop per batch, not one per awaiting task.
        wakes: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for item, new_state in batch.done:
            waiter = item.waiter
            if waiter is not None:
                if type(waiter) is AsyncWaiter:
                    waiter.result = new_state
                    waiter.done = True
                    wakes.setdefault(waiter.loop, []).append(waiter.future)
                else:
                    waiter.resolve(new_state)
            if followers:
                subscriptions = followers.get(item.envelope.address)
                if subscriptions:
                    for subscription in subscriptions:
                        subscription._push(new_state)
        for item, error in batch.failed:
            if item.waiter is not None:
                item.waiter.fail(error)
        for item, error in dead:
            logger.warning("pachyderm-typed: dead letter %r: %s", item.envelope, error.reason)
        for loop, futures in wakes.items():
            try:
                loop.call_soon_threadsafe(_set_all_done, futures)
            except RuntimeError:  # that loop is closed; nobody is waiting any more
                pass

    def _state_of(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> Any:
        state = self._states.get(address, MISSING)
        if state is MISSING:
            state = self._load(spec, address)
        return state

    def _unfollow(self, subscription: Subscription[Any]) -> None:
        with self._run_lock:
            subscriptions = self._followers.get(subscription.address)
            if subscriptions and subscription in subscriptions:
                subscriptions.remove(subscription)
                if not subscriptions:
                    del self._followers[subscription.address]

    # -- store hooks (in memory here; durable ecosystems override) -------------------

    def _check_storable(self, envelope: Envelope[Any, Any]) -> None:
        """Refuse, before it is queued, a valid envelope this store could not keep."""

    def _load(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> object:
        """The state of an entity not in the cache: the stored one, or ``init``."""
        return self._kernel.initial_state(spec, address)

    def _commit(self, batch: Batch, dead: list[tuple[Item, ActivationError]]) -> None:
        """Make the batch durable. In memory, only dead letters need keeping."""
        for item, error in dead:
            self._dead_seq += 1
            self._dead[self._dead_seq] = DeadLetter(self._dead_seq, item.envelope, str(error))

    def _commit_failed(self, batch: Batch, error: BaseException) -> None:
        """Undo the in-memory effects of a batch whose commit failed."""
        raise NotImplementedError

    def _take_dead_letter(self, dead_letter: DeadLetter) -> None:
        if self._dead.pop(dead_letter.id, None) is None:
            raise LookupError(f"dead letter {dead_letter.id} is not (or no longer) in {self!r}")

    def _release(self) -> None:
        """Release the store (close files and connections)."""
