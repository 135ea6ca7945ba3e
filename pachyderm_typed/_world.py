"""The public ecosystem API over one scheduling engine, shared by InMemory and LocalDisk.

A message goes through three steps:

1. **process**: under the run lock, a thread takes messages from the FIFO
   queue, runs them through the kernel and adds the outcome to the *open
   batch*. The state cache runs ahead of the store from here on;
2. **seal**: under the run lock, the open batch is closed and queued for
   commit; later messages go into a new open batch;
3. **commit and publish**: under the commit lock, sealed batches are committed
   in order (a no-op in memory, one fsync'd transaction on disk) and then
   published: callers resolved, followers told.

Commits run outside the run lock, so on disk the next batch is processed while
the previous one is being written (a pipelined group commit): with many
senders the fsync overlaps the Python work of the next batch instead of adding
to it. Whoever processed a batch commits it if nobody else is committing;
otherwise it leaves the batch to the committer in charge, which looks for new
work after letting go of the lock (nobody waits for it: see ``_flush``). A
durable store keeps a committer thread for that (``pipelined``) so an inline
caller is never kept committing other callers' batches. That thread may
wait, up to one commit, for the thread callers it just answered, when they come
back fast enough to share the next commit (``Regroup``). The worker processes
whatever is queued into one batch: asyncio callers one commit answered come back
together and share the next commit. (Committing a long queue in two halves, so
that one half's Python overlaps the other's fsync, took a quarter more CPU per
call for no more calls per second on a real disk, and made fewer on a fast one:
see docs/performance.md.)

* ``send_sync``/``send`` called from a plain thread process inline (no thread
  hop): the caller processes the queue up to its own message, together with
  any other caller's message already waiting, but never the cascade its message
  causes; a background worker thread does that.
* The main thread of a durable world is the exception: a signal may interrupt it
  between any two steps (KeyboardInterrupt), and engine code stopped halfway
  would strand other callers' work or report a landed commit as failed. So the
  worker processes its message the same way while it waits (``MainThreadCall``),
  and its other calls that may commit (state and follow when something waits to be
  committed, dead letters, close) run on a short-lived thread (``_shielded``).
  Where the main thread does hold the engine's locks (those reads; in memory, every
  call), it is marked (``_main_inside``): a signal handler that interrupted it there
  gets ReentrantCallError, and its close() takes effect once the locks are let go.
* The async twins never run activations on the event loop: they queue the
  message, wake the worker, and await a future resolved after the commit.

A single queue gives FIFO per (sender, receiver) and one activation at a time
per entity. Activations are CPU-bound Python, so a finer lock would buy nothing
under the GIL. Lock order: commit lock, then run lock (a processor holding the
run lock only ever *tries* the commit lock).
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import attrs
from typing_extensions import Self

from pachyderm_typed._address import Address, Envelope
from pachyderm_typed._bells import ring
from pachyderm_typed._ecosystem import AnyEntity, Declaration, Ecosystem, EntitySpec
from pachyderm_typed._fork import forsake_in_forked_children, released
from pachyderm_typed._kernel import Kernel, forbid_inside_activation, thread_marks
from pachyderm_typed._subscription import Subscription
from pachyderm_typed.errors import ActivationError, ClosedError, PachydermError, ReentrantCallError, StorageError

logger = logging.getLogger("pachyderm_typed")

E = TypeVar("E")
S = TypeVar("S")
C = TypeVar("C", bound="Call")
T = TypeVar("T")

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


class Item:
    """One pending message nobody waits for (an outbox produced it, or a store kept it).

    ``row`` is its key in a durable store, if it is stored. A caller's message is
    a ``Call``: the message and its completion are one object, so a send
    allocates once.
    """

    __slots__ = ("envelope", "row", "consumed")
    #: a caller waits for the outcome (``Call``)
    waits: ClassVar[bool] = False
    #: False: a failed activation becomes a dead letter
    raises = False

    def __init__(self, envelope: Envelope[Any, Any], row: Any = None) -> None:
        self.envelope = envelope
        self.row = row
        self.consumed = False

    def fail(self, error: BaseException) -> None:
        """Nobody waits: a failure is recorded as a dead letter, not reported here."""


class Call(Item):
    """A caller's message: its outcome is set once, after its batch commits (or fails)."""

    __slots__ = ("done", "result", "error", "raises")
    waits = True

    def __init__(self, envelope: Envelope[Any, Any], raises: bool, row: Any = None) -> None:
        Item.__init__(self, envelope, row)
        self.done = False
        self.result: object = None
        self.error: BaseException | None = None
        self.raises = raises

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.error = error
            self.done = True
            self._wake()

    def _wake(self) -> None:
        raise NotImplementedError


class ThreadCall(Call):
    """A thread caller's: it blocks in ``wait`` on a lock of its own.

    The callers one batch answers are woken one after another, each by the one
    before it (``_then``), not all at once by the publisher: every woken thread
    needs the GIL first, and a crowd of them hands it round in a convoy of
    context switches that cost more than the activations (measured on LocalDisk
    with 16 threads: 25-55% more calls per second, a quarter less CPU per call).
    """

    __slots__ = ("_signal", "_then", "_left", "group")
    #: woken by the caller answered before it (False: by the publisher, see MainThreadCall)
    chained: ClassVar[bool] = True
    #: the main thread working inline (see InlineMainCall)
    inline_main: ClassVar[bool] = False

    def __init__(self, envelope: Envelope[Any, Any], raises: bool, row: Any = None) -> None:
        Call.__init__(self, envelope, raises, row)
        self._signal = _thread.allocate_lock()
        self._signal.acquire()
        self._then: ThreadCall | None = None  # the next caller its batch answered
        self._left = False
        self.group = -1  # the group of callers its batch answered (see Regroup)

    def _wake(self) -> None:
        ring(self._signal)

    def wait(self) -> None:
        if not self.done:
            self._signal.acquire()

    def leave(self) -> None:
        """The caller is returning (answered, or interrupted): wake the next one.

        Publishing links ``_then`` and then looks at ``_left``; this sets ``_left``
        and then looks at ``_then``. Whichever runs second sees the other's write,
        so the next caller is woken even if its predecessor left early (a second
        wake-up is harmless).
        """
        self._left = True
        then = self._then
        if then is not None:
            ring(then._signal)


class InlineMainCall(ThreadCall):
    """The main thread's, in memory: it works inline like any thread, marked as inside the
    engine (see ``World._main_inside``) from before its message is queued. Unmarked there,
    a signal handler's call would be processed with this one and woken only when this
    caller leaves (the chain of wake-ups), which it cannot do before the handler returns.
    """

    __slots__ = ()
    inline_main = True


class MainThreadCall(ThreadCall):
    """The main thread's, in a durable world. A signal can interrupt the main thread between
    any two steps (``_interruptible``), so it runs nothing others depend on: the worker
    processes its message as it would have (not the cascade), and it is woken directly,
    not as a link of the chain (stopped before waking the next caller, it would strand
    the rest).
    """

    __slots__ = ()
    chained = False


def _interruptible() -> bool:
    """Whether this thread may be interrupted anywhere: Python runs signal handlers (so raises
    KeyboardInterrupt, or what a handler raises) in the main thread only.

    Engine code stopped halfway would lose or strand other callers' work: a batch taken
    and never committed, a commit that landed reported as failed, a chain of wake-ups cut.
    """
    return _thread.get_ident() == _main_ident


_main_ident = threading.main_thread().ident  # cached: asked on every call


def _main_thread_changed() -> None:
    global _main_ident
    _main_ident = threading.main_thread().ident  # a forked child's main thread is the forking one


os.register_at_fork(after_in_child=_main_thread_changed)  # after threading's own hook


class _Shielded(Generic[T]):
    """An operation run on a thread of its own; the caller waits, interruptibly, for its outcome."""

    __slots__ = ("operation", "signal", "result", "error")

    def __init__(self, operation: Callable[[], T]) -> None:
        self.operation = operation
        self.signal = _thread.allocate_lock()
        self.signal.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.operation()
        except BaseException as exc:  # handed to the caller
            self.error = exc
        finally:
            self.signal.release()

    def outcome(self) -> T:
        self.signal.acquire()  # if a signal interrupts the caller here, the operation still completes
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def _on_own_thread(operation: Callable[[], T]) -> T:
    """Run ``operation`` on a short-lived thread and wait for its outcome: a signal that
    interrupts the caller meanwhile cannot stop the operation halfway."""
    job = _Shielded(operation)
    start_thread(threading.Thread(target=job.run, name="pachyderm-shielded", daemon=True))
    return job.outcome()


def start_thread(thread: threading.Thread) -> None:
    """``thread.start()``, where a signal handler's exception comes out as itself.

    start() waits for the new thread on a Condition. An exception a handler raises (Ctrl-C)
    just as that wait takes the Condition's lock back leaves the lock released, and start()
    then fails with RuntimeError("release unlocked lock") instead. The thread did start.
    """
    try:
        thread.start()
    except RuntimeError as exc:
        if exc.__context__ is not None:  # (failing to start a thread has none)
            raise exc.__context__ from None
        raise


class AsyncCall(Call):
    """An async caller's: it awaits ``future``, resolved on its loop from any thread."""

    __slots__ = ("loop", "future")

    def __init__(self, envelope: Envelope[Any, Any], raises: bool) -> None:
        Call.__init__(self, envelope, raises)
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[None] = self.loop.create_future()

    def _wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(_set_done, self.future)
        except RuntimeError:  # the caller's loop is closed; nobody is waiting any more
            pass


def _unloadable(address: Address[Any, Any, Any], message: object, exc: Exception) -> ActivationError:
    if isinstance(exc, StorageError):
        reason = f"its stored state cannot be used: {exc}"
    else:
        reason = f"init({address.id!r}) raised {type(exc).__name__}: {exc}"  # as Postgres says it
    error = ActivationError(address, message, None, (), reason)
    error.__cause__ = exc
    return error


def _fail_items(items: Sequence[Item], error: BaseException) -> None:
    for item in items:
        item.fail(error)  # a no-op for a caller already answered, or nobody waiting


def _set_all_done(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Doorbell:
    """Wakes one sleeping thread; rings before it sleeps are not lost, repeated rings merge.

    A bare lock rather than ``threading.Event``: ringing is on every async call's path.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def ring(self) -> None:
        ring(self._lock)

    def wait(self) -> None:
        self._lock.acquire()


_groups = itertools.count()  # group numbers, unique across worlds (a thread may use several)


class Regroup:
    """Whether the committer, having answered thread callers, waits for them to come back.

    A committer that writes whatever is ready splits looping thread callers into
    two groups that take turns: each commit carries half of them, and each caller
    waits for two commits (the one in flight when it arrived, then its own).
    Waiting until the callers just answered are back puts them all in the next
    commit, while the disk idles for as long as they take to return. That pays
    when returning takes less time than a commit: on a disk whose fsync costs
    2 ms more, 8 and 16 threads got 1.8-1.9 times as many calls through. On a fast
    disk the callers' return (serialised by the GIL) can outlast a commit, and
    callers that do other work between calls come back later still: then
    waiting only adds latency.

    So both are measured: commits (an average), and how long the callers of each
    answered group took until all of them were back (each thread remembers the
    group its last call was answered in), per caller, since the group to wait
    for is larger than the groups seen while not waiting. The committer waits
    only when the whole group is expected back within a commit, and never
    longer than one commit or twice the time expected.
    """

    __slots__ = ("commit_seconds", "per_caller", "group", "count", "at", "returned", "back_after", "waiting", "bell")

    def __init__(self) -> None:
        self.commit_seconds = 0.0  # average time a commit takes
        self.per_caller: float | None = None  # average time for a group to be back, per caller
        self.group = -2  # the group the last published batch answered (no thread's mark)
        self.count = 0  # its thread callers
        self.at = 0.0  # when it was published
        self.returned = 0  # how many of them are back
        self.back_after: float | None = None  # how long they took, once all are back
        self.waiting = False
        self.bell = _thread.allocate_lock()

    def committed(self, seconds: float) -> None:
        self.commit_seconds = seconds if not self.commit_seconds else 0.8 * self.commit_seconds + 0.2 * seconds

    def answered(self, group: int, count: int) -> None:
        """A batch answered ``count`` thread callers, as ``group``."""
        now = time.perf_counter()
        if self.count:  # what the previous group took, up to now if not all are back yet
            took = (self.back_after if self.back_after is not None else now - self.at) / self.count
            self.per_caller = took if self.per_caller is None else 0.8 * self.per_caller + 0.2 * took
        self.group, self.count, self.at, self.returned, self.back_after = group, count, now, 0, None

    def came_back(self) -> None:
        """Under the run lock: a caller of the last answered group is calling again."""
        self.returned += 1
        if self.returned == self.count:
            self.back_after = time.perf_counter() - self.at
            if self.waiting:
                ring(self.bell)

    def pays(self, queued: int) -> bool:
        """Whether waiting for the answered callers should beat committing ``queued`` now."""
        group = self.count + queued
        if self.count == 0 or group < 2 or self.per_caller is None:
            return False
        return self.per_caller * group < self.commit_seconds

    def gather(self, queued: int) -> None:
        """The committer, after publishing: wait for the answered callers if that pays.

        ``queued``: messages processed meanwhile, which the next commit carries anyway.
        ``came_back`` and this each write their flag before reading the other's, so
        a caller coming back while this starts to wait is not missed.
        """
        if not self.pays(queued):
            return
        assert self.per_caller is not None
        # Up to twice the expected wait: callers that late are not coming back soon.
        timeout = min(self.commit_seconds, 2 * self.per_caller * (self.count + queued))
        bell = self.bell
        bell.acquire(blocking=False)  # forget a ring meant for an earlier wait
        self.waiting = True
        try:
            if self.back_after is None:
                bell.acquire(timeout=timeout)
        finally:
            self.waiting = False


class Batch:
    """What was processed between two seals: committed as one, then published.

    ``produced`` holds the outbox items not consumed by the time the batch was
    sealed (a durable store keeps them as pending messages); ``dead`` the failed
    activations nobody waits for; ``store`` what a store prepared for its commit.
    """

    __slots__ = ("seq", "done", "failed", "produced", "dead", "store")

    def __init__(self) -> None:
        self.seq = 0
        self.done: list[tuple[Item, object]] = []  # (item, new state), in order
        self.failed: list[tuple[Item, ActivationError]] = []
        self.produced: list[Item] = []
        self.dead: list[tuple[Item, ActivationError]] = []
        self.store: Any = None

    def __len__(self) -> int:  # messages processed into it
        return len(self.done) + len(self.failed)

    def items(self) -> list[Item]:
        return [*(item for item, _ in self.done), *(item for item, _ in self.failed)]


class World(Generic[E]):
    """An ecosystem instance: the public API every environment shares."""

    #: messages processed per batch at most (the worker's batch size)
    batch_size = 512
    #: commits are slow (a durable store): a committer thread commits while others process
    pipelined: ClassVar[bool] = False
    #: a child forked while the world is open cannot use it (see ``_forsake``)
    closed_in_forked_children: ClassVar[bool] = True

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
        self._commit_lock = threading.Lock()
        self._lock_requests: deque[_thread.LockType] = deque()  # see _committing
        self._open = Batch()  # processed, not sealed
        self._sealed: deque[Batch] = deque()  # sealed, not yet committed (in order)
        self._writing = False  # a batch taken from _sealed is being committed (see _settled)
        self._seq = 0  # of the last sealed batch
        self._states: dict[Address[Any, Any, Any], object] = {}
        # (first batch to push, subscription): a follower sees batches sealed after it started
        self._followers: dict[Address[Any, Any, Any], list[tuple[int, Subscription[Any]]]] = {}
        self._history: deque[tuple[Address[Any, Any, Any], object]] = deque(maxlen=max(history, 0))
        self._dead: dict[int, DeadLetter] = {}
        self._dead_seq = 0
        self._closed = False
        self._released = False
        self._wake = Doorbell()
        self._worker: threading.Thread | None = None
        self._commit_wake = Doorbell()
        self._committer: threading.Thread | None = None
        self._regroup = Regroup()
        self._main_call: ThreadCall | None = None  # the worker processes up to it, as its caller would
        # The main thread runs engine code holding the engine's locks: a state read, or in
        # memory any call. A signal handler that interrupts it there cannot wait for them.
        self._main_inside = False
        self._pid = os.getpid()
        forsake_in_forked_children(self)

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
        self._run_until(self._thread_call(envelope, raises=False))

    def send_sync(self, envelope: Envelope[E, S]) -> S:
        """Deliver ``envelope`` and return the entity's new state once it is committed.

        Raises ``ActivationError`` if ``activate`` raised; the entity keeps its state.
        """
        forbid_inside_activation("send_sync")
        call = self._thread_call(envelope, raises=True)
        self._run_until(call)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    async def asend(self, envelope: Envelope[E, object]) -> None:
        """``send`` for asyncio code: never runs an activation on the event loop."""
        forbid_inside_activation("asend")
        call = self._hand_to_worker(AsyncCall(envelope, raises=False))
        await call.future
        if call.error is not None and not isinstance(call.error, ActivationError):
            raise call.error  # a failed activation became a dead letter; anything else is ours

    async def asend_sync(self, envelope: Envelope[E, S]) -> S:
        """``send_sync`` for asyncio code: never runs an activation on the event loop."""
        forbid_inside_activation("asend_sync")
        call = self._hand_to_worker(AsyncCall(envelope, raises=True))
        await call.future  # no helper coroutine: this is every async caller's path
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def state(self, address: Address[E, Any, S]) -> S:
        """The entity's current state: every message processed before the call, committed."""
        forbid_inside_activation("state")
        return self._settled_shielded(address, None)  # type: ignore[no-any-return]

    def follow(self, address: Address[E, Any, S]) -> Subscription[S]:
        """Follow the entity: ``.state`` now, then every later committed state, in order."""
        forbid_inside_activation("follow")
        return self._settled_shielded(address, self._unfollow)  # type: ignore[no-any-return]

    def dead_letters(self) -> list[DeadLetter]:
        """Messages whose activation failed with nobody waiting, oldest first."""
        forbid_inside_activation("dead_letters")
        self._check_open()
        return self._shielded(self._dead_letters)

    def _dead_letters(self) -> list[DeadLetter]:
        with self._committing():  # dead letters are written by commits
            return list(self._dead.values())

    def retry(self, dead_letter: DeadLetter) -> None:
        """Send a dead letter again (after fixing the cause); it leaves the list."""
        forbid_inside_activation("retry")
        self._check_open()
        self._shielded(lambda: self._take_dead_letter_now(dead_letter))
        self.send(dead_letter.envelope)

    def discard(self, dead_letter: DeadLetter) -> None:
        """Drop a dead letter for good."""
        forbid_inside_activation("discard")
        self._check_open()
        self._shielded(lambda: self._take_dead_letter_now(dead_letter))

    def _take_dead_letter_now(self, dead_letter: DeadLetter) -> None:
        with self._committing():
            self._take_dead_letter(dead_letter)

    def close(self) -> None:
        """Commit what was processed, stop the threads, end every subscription, release the store.

        Called from a signal handler (say SIGTERM's) that interrupted the main thread inside
        this world's engine (a state read; in memory, any call), it cannot wait: the
        interrupted code holds the locks closing needs. It then returns at once and the world
        closes as soon as they are let go, before the interpreter exits.
        """
        if self._closed or self._once_main_lets_go(self._close, "pachyderm-close"):
            return  # (a handler may land in entity code run there: this check comes first)
        forbid_inside_activation("close")
        self._shielded(self._close)

    def _close(self) -> None:
        if self._closed:
            return
        with self._run_lock:
            self._closed = True
        released(self)
        self._wake.ring()
        self._commit_wake.ring()
        for thread in (self._worker, self._committer):
            if thread is not None and thread is not threading.current_thread():
                thread.join()
        with self._commit_lock:
            self._commit_sealed(until=None)  # callers whose messages were processed get their answer
            with self._run_lock:
                self._released = True
                self._release()
                for entries in self._followers.values():
                    for _, subscription in entries:
                        subscription._end()
                self._followers.clear()
                self._fail_queued()

    def _fail_queued(self) -> None:
        """Fail every caller still queued: the world is closed."""
        for item in self._take_queued():
            item.fail(ClosedError(f"{self!r} was closed before {item.envelope!r} was processed"))

    def _take_queued(self) -> list[Item]:
        """Empty the queue. Callers append without the run lock, so pop, never iterate."""
        queue = self._queue
        taken = []
        while queue:
            taken.append(queue.popleft())
        return taken

    def __enter__(self) -> Self:  # `with LocalDisk(...) as world` keeps LocalDisk's own API
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._declaration.name}{' closed' if self._closed else ''}>"

    # -- callers ----------------------------------------------------------------------

    #: what ``_check_open`` says once the world is closed
    _closed_reason = "is closed: open a new one to keep working"

    def _main_caller(self) -> bool:
        """Whether the caller is the main thread, where signal handlers run (``_interruptible``).

        Raises ReentrantCallError in a handler that interrupted the main thread inside the
        engine (``_main_inside``): the call would wait forever for locks its own thread holds."""
        if _thread.get_ident() != _main_ident:
            return False
        if self._main_inside:
            raise ReentrantCallError(
                f"{self!r} was called from a signal handler that interrupted a call of this same "
                "thread, which holds the ecosystem's locks until the handler returns: the call "
                "could never finish. Have the handler set a flag (or hand the work to another "
                "thread) and make the call after it returns. Only close(), of the world or of a "
                "subscription, may be called there: it finishes once the interrupted call lets go"
            )
        return True

    def _once_main_lets_go(self, operation: Callable[[], None], name: str) -> bool:
        """In a signal handler that interrupted the main thread inside the engine (holding its
        locks, see ``_main_inside``), start ``operation`` on a thread that runs it once they are
        let go, and return True; elsewhere return False. The thread is not a daemon: the
        interpreter waits for it before exiting."""
        if not (self._main_inside and _interruptible()):
            return False
        start_thread(threading.Thread(target=operation, name=name))
        return True

    def _thread_call(self, envelope: Envelope[Any, Any], raises: bool) -> ThreadCall:
        """The main thread of a durable world leaves engine work to the engine's threads
        (``MainThreadCall``): an interruption could cost an acknowledged commit or strand other
        callers. In memory the thread hop would cost ten times the call, so the main thread
        works inline there, marked as inside the engine (``InlineMainCall``)."""
        if _thread.get_ident() != _main_ident or not self._main_caller():  # inlined: every call asks
            return ThreadCall(envelope, raises)
        return (MainThreadCall if self.pipelined else InlineMainCall)(envelope, raises)

    def _shielded(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, which takes the engine's locks, where no signal can stop it halfway
        (in memory, the main thread runs it inline, marked as inside the engine)."""
        if not self._main_caller():
            return operation()
        if self.pipelined:
            return _on_own_thread(operation)
        return self._inside(operation)

    def _inside(self, operation: Callable[[], T]) -> T:
        """The main thread runs ``operation`` inline, marked as inside the engine."""
        outer = self._main_inside
        try:  # set inside: an interruption right after setting it must still clear it
            self._main_inside = True
            return operation()
        finally:
            self._main_inside = outer

    def _marked_if_main(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, which holds the run lock a moment, marked as inside the engine if
        this is the main thread: a signal handler landing there is refused, not left waiting
        for a lock its own thread holds."""
        return self._inside(operation) if _interruptible() else operation()

    def _check_open(self) -> None:
        """Raise ClosedError if closed. Public methods call it before taking any lock:
        in a forked child a lock may be held for good by a thread that is not there."""
        if self._closed:
            raise ClosedError(f"{self!r} {self._closed_reason}")

    def _forsake(self) -> None:
        """In a child forked while this world was open: close it here without touching anything.

        Its threads did not survive the fork, a lock may be held for good, and its
        file or connections are the parent's: closing them from the child would harm
        the parent (the store's own objects let go of them without closing, see
        ``DbmFile._forsake``). Every call in the child raises ClosedError saying why.
        """
        if self._closed or not self.closed_in_forked_children:
            return
        self._closed = True
        self._released = True
        self._closed_reason = (
            f"belongs to process {self._pid}, and this process ({os.getpid()}) is a fork of it: "
            "an ecosystem serves the process that opened it; open one in this process (after forking) instead"
        )

    def _spec_for_address(self, address: Address[Any, Any, Any]) -> EntitySpec:
        if not isinstance(address, Address):
            raise TypeError(f"expected an Address, got {type(address).__qualname__}: use EntityType.address(id)")
        return self._declaration.spec_for(address.entity)

    def _enqueue(self, call: C) -> C:
        self._check_open()
        envelope = call.envelope
        self._declaration.check_envelope(envelope)
        if not call.raises:  # a send_sync message is never stored: a failure goes to its caller
            self._check_storable(envelope)
        self._queue.append(call)
        if self._closed:  # closed while we appended: close() may have missed this call
            self._fail_queued()
            self._check_open()
        return call

    def _hand_to_worker(self, call: AsyncCall) -> AsyncCall:
        """An async caller: queue the message for the worker, which resolves ``call.future``.

        Refused in a signal handler that interrupted the main thread inside the engine (a
        handler may run an event loop of its own): the worker would wait for the locks the
        interrupted call holds, and the handler for the worker."""
        if self._main_inside:
            self._main_caller()  # raises ReentrantCallError there; other threads go on
        self._enqueue(call)
        self._kick()
        return call

    def _run_until(self, call: ThreadCall, enqueue: bool = True) -> None:
        """A thread caller: queue ``call`` (unless it is queued already), process up to it
        inline, see it committed, and return."""
        inside = call.inline_main
        try:
            if inside:
                self._main_inside = True  # before the message is queued (see InlineMainCall)
            if enqueue:
                self._enqueue(call)
            if not call.chained:  # the main thread leaves the work to the worker (see MainThreadCall)
                self._main_call = call
                self._kick()
                call.wait()
                self._raise_for_send(call)
                return
            with self._run_lock:
                if not call.consumed:
                    if self._closed:
                        call.fail(ClosedError(f"{self!r} was closed before {call.envelope!r} was processed"))
                    else:
                        self._process_queue(call)
                if thread_marks.group == self._regroup.group:
                    self._regroup.came_back()
            try:
                if not call.done:
                    self._flush(call)
                    call.wait()
            finally:
                call.leave()
        finally:
            if inside:
                self._main_inside = False
        thread_marks.group = call.group
        self._raise_for_send(call)
        if self._queue:
            self._kick()

    @staticmethod
    def _raise_for_send(call: Call) -> None:
        """A send's failed activation became a dead letter; any other failure of ours is raised."""
        if not call.raises and isinstance(call.error, PachydermError) and not isinstance(
            call.error, ActivationError
        ):
            raise call.error

    def _settled_shielded(self, address: Address[Any, Any, Any], on_close: Any) -> Any:
        """``_settled``, safe from signals: in the main thread of a durable world, read inline
        if nothing waits to be committed (a read leaves nothing half done), else run it on
        its own thread (see ``_shielded``). The main thread reading inline is marked as inside
        the engine (``_main_inside``)."""
        if not self._main_caller():
            return self._settled(address, on_close)
        if not self.pipelined:
            return self._inside(lambda: self._settled(address, on_close))
        found = self._inside(lambda: self._settled_now(address, on_close))
        if found is not MISSING:
            return found
        return _on_own_thread(lambda: self._settled(address, on_close))

    def _settled(self, address: Address[Any, Any, Any], on_close: Any) -> Any:
        """The state after every message processed so far, once committed; with ``on_close``,
        a subscription to it, registered so that it is pushed every later batch."""
        spec = self._spec_for_address(address)
        self._check_open()
        for _ in range(2):  # once more if a commit failed meanwhile: the state is then reread
            with self._committing():  # nobody else publishes until what we read is committed
                with self._run_lock:
                    self._check_open()
                    state = self._state_of(spec, address)
                    if self._open:
                        self._seal()
                    last = self._seq
                    subscription = None
                    if on_close is not None:
                        subscription = Subscription(address, state, on_close)
                        self._followers.setdefault(address, []).append((last + 1, subscription))
                error = self._commit_sealed(until=last)
            if error is None:
                return state if subscription is None else subscription
            if subscription is not None:
                self._unfollow(subscription)
        assert error is not None
        raise error  # the store failed twice in a row

    def _settled_now(self, address: Address[Any, Any, Any], on_close: Any) -> Any:
        """``_settled`` if everything processed is committed already, else MISSING.

        Under the run lock alone, a lock of C's: the main thread reads this way inline, and
        Ctrl-C's handler may run as any Python function starts, ``__exit__`` of a context
        manager written in Python too, which would leave the commit lock held for good."""
        spec = self._spec_for_address(address)
        self._check_open()
        with self._run_lock:
            self._check_open()
            if self._open or self._sealed or self._writing:
                return MISSING
            state = self._state_of(spec, address)
            if on_close is None:
                return state
            subscription = Subscription(address, state, on_close)
            self._followers.setdefault(address, []).append((self._seq + 1, subscription))
            return subscription

    # -- processing (under the run lock) -------------------------------------------------

    def _process_queue(self, target: Item | None, limit: int = 0) -> None:
        """Process queued messages into the open batch.

        With a ``target`` (an inline caller), stop once it is processed and the
        next message is a cascade rather than another caller's; otherwise take
        up to ``limit`` messages (``batch_size`` if 0).
        """
        queue = self._queue
        states = self._states
        by_class = self._declaration.by_class
        kernel = self._kernel
        history = self._history
        recent = self._recent_messages
        batch = self._open
        done, failed, produced = batch.done, batch.failed, batch.produced
        limit = limit or self.batch_size
        reached = target is None
        count = 0
        marks = thread_marks
        depth = marks.depth
        marks.depth = depth + 1  # activating(), without a generator on the hot path
        try:
            while queue and count < limit:
                if reached and target is not None and not queue[0].waits:
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
                    except Exception as exc:
                        # An unreadable stored state (corrupt, from newer code), or an init
                        # that raised, fails this message alone; a record stays untouched.
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
                        child = Item(out)
                        queue.append(child)
                        produced.append(child)
                if item is target:
                    reached = True
        finally:
            marks.depth = depth

    def _seal(self) -> None:
        """Close the open batch and queue it for commit (the open batch is not empty)."""
        batch = self._open
        self._open = Batch()
        self._seq += 1
        batch.seq = self._seq
        if batch.produced:
            batch.produced = [item for item in batch.produced if not item.consumed]
        if batch.failed:
            batch.dead = [(item, error) for item, error in batch.failed if not item.raises]
        self._sealing(batch)
        self._sealed.append(batch)

    def _recent_messages(self, address: Address[Any, Any, Any]) -> Sequence[object]:
        """What the entity received before the message being processed (the newest entry)."""
        messages = [message for a, message in self._history if a == address][:-1]
        return messages[-HISTORY_PER_ENTITY:]

    # -- committing (under the commit lock) ----------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._sealed or self._open)

    def _flush(self, own: ThreadCall | None) -> None:
        """Commit and publish what was processed, in order, unless someone else is.

        Nobody waits for the commit lock here: whoever finds it held leaves its batch to
        the holder, and every holder looks for new work after letting go of it. A waiter
        would be handed the lock as it is released, before it has the GIL back, so the
        releasing thread's next call would wait for it in turn, and so on: a convoy with
        a context switch per call (in memory, 2 threads made 2.4 times fewer calls than 1).

        A durable store's inline caller (``own``) stops once its own message is published,
        and the committer thread takes the rest (a commit is an fsync). In memory a commit
        costs nothing, so the holder commits everything there is. While a thread asks for
        the lock (``_committing``), a durable store's callers leave it to that thread: the
        committer commits once it has had its turn.
        """
        lock = self._commit_lock
        pipelined = self.pipelined
        while self._has_work() and not (pipelined and own is not None and own.done):
            if pipelined and self._lock_requests:
                self._kick_committer()  # someone waits for the lock: not taken before them
                return
            if not lock.acquire(blocking=False):
                return
            try:
                self._commit_sealed(until=None, own=own if pipelined else None)
            except BaseException:
                lock.release()
                self._handed_back(unwinding=True)
                raise
            lock.release()
        self._handed_back()

    @contextlib.contextmanager
    def _committing(self, ask: bool = True) -> Iterator[None]:
        """Hold the commit lock (no batch is published meanwhile); hand back what others processed.

        ``ask``: the wait is announced (``_lock_requests``), so that a holder committing
        batch after batch lets go of the lock between two of them (``_let_waiters_in``);
        the committer thread, which takes it to do just that, does not ask.
        """
        request = None
        if ask:  # a lock held from here until this thread has the commit lock, reused if it can be
            request = thread_marks.request
            if request is None or not request.acquire(blocking=False):
                # (held: by a wait that a signal handler running this one interrupted, or by
                # the holder that let this thread in last time)
                request = thread_marks.request = _thread.allocate_lock()
                request.acquire()
        granted = False
        try:
            try:
                if request is not None:
                    self._lock_requests.append(request)
                with self._commit_lock:
                    if request is not None:
                        self._granted(request)
                        granted = True
                    yield
            finally:
                if request is not None and not granted:  # interrupted while waiting
                    self._granted(request)
        except BaseException:
            self._handed_back(unwinding=True)
            raise
        self._handed_back()

    def _granted(self, request: _thread.LockType) -> None:
        """A request for the commit lock is over: whoever let us in may go on."""
        ring(request)
        requests = self._lock_requests
        if requests:
            try:
                requests.remove(request)
            except ValueError:  # taken by the holder that let us in
                pass

    def _let_waiters_in(self) -> None:
        """Holding the commit lock between two batches, with threads waiting for it: let go of
        it until each of them has had it (a lock does not queue its waiters), then take it back.

        A holder committing everything there is keeps the lock from batch to batch for as
        long as callers keep adding work, and the committer thread even waits for the
        callers it answered to come back: under a few looping callers, state(), follow(),
        dead letters and retries waited for the lock for seconds, on a slow disk forever.
        Not in the main thread: a signal handler's exception there could stop it before it
        has the lock back, and its caller would go on as if it held it.
        """
        self._commit_lock.release()
        try:
            self._await_requests()
        finally:
            self._commit_lock.acquire()

    def _await_requests(self) -> None:
        """Not holding the commit lock: wait until the threads asking for it have had it.

        Meanwhile nobody else takes it (inline callers leave their batches to the committer,
        which waits here first). A request still open after a second is dropped: its thread
        was interrupted in a way that kept it from withdrawing it.
        """
        for request in tuple(self._lock_requests):
            if request.acquire(timeout=1.0):
                ring(request)  # (others may be waiting for it too)
            else:
                self._granted(request)

    def _handed_back(self, unwinding: bool = False) -> None:
        """After releasing the commit lock: commit what others processed meanwhile and left to
        the holder (see ``_flush``), or have the committer thread of a durable store do it.

        Also when the holder is ``unwinding`` from an exception (a read that failed; Ctrl-C
        in the main thread, in memory): the callers that found the lock held wait for it
        all the same. The worker commits then, not the unwinding thread.
        """
        if not self._has_work():
            return
        if self.pipelined:
            self._kick_committer()
        elif unwinding:
            self._kick()
        else:
            self._flush(None)

    def _commit_sealed(
        self, until: int | None, own: ThreadCall | None = None, gather: bool = False
    ) -> StorageError | None:
        """Holding the commit lock: commit and publish sealed batches in order.

        ``until``: up to that batch; None: until nothing is processed and not
        committed (sealing the open batch as it goes), or until ``own`` is done.
        ``gather``: the committer thread, which may wait for the callers it just
        answered before it seals the next batch (see ``Regroup``).
        Returns the error of a failed commit, if one failed.
        """
        error = None
        committed: Batch | None = None
        while True:
            if committed is not None and self._lock_requests and not _interruptible():
                self._let_waiters_in()  # (the main thread could not be sure to take the lock back)
            if gather and committed is not None and not self._closed:
                self._regroup.gather(len(self._open))
            with self._run_lock:
                if committed is not None:
                    self._committed(committed)
                    committed = None
                if own is not None and own.done:
                    return error  # the rest is handed back (see _handed_back)
                sealed = self._sealed
                if until is None and not sealed and self._open:
                    self._seal()
                if not sealed or (until is not None and sealed[0].seq > until):
                    return error
                batch = sealed.popleft()
                self._writing = True
            if self._released:  # close() ran; nothing can be written any more
                _fail_items(batch.items(), ClosedError(f"{self!r} was closed before committing"))
                self._writing = False
                continue
            started = time.perf_counter() if self.pipelined else 0.0  # only a committer thread regroups
            try:
                self._commit(batch)
            except BaseException as exc:
                error = self._commit_failed_all(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            finally:  # durable, or failed with the cache reset: either way, not being written
                self._writing = False
            if self.pipelined:
                self._regroup.committed(time.perf_counter() - started)
            self._publish(batch)
            committed = batch

    def _commit_failed_all(self, batch: Batch, exc: BaseException) -> StorageError:
        """A commit failed: it and every batch processed after it (built on its states) fail."""
        failure = exc if isinstance(exc, StorageError) else StorageError(
            f"{self!r}: committing failed ({type(exc).__name__}: {exc}); nothing was changed"
        )
        logger.error("pachyderm-typed: a batch failed to commit: %s", failure)
        with self._run_lock:
            later = [item for sealed in (*self._sealed, self._open) for item in sealed.items()]
            self._sealed.clear()
            self._open = Batch()
            _fail_items([*batch.items(), *later, *self._take_queued()], failure)
            self._reset_after_failure(failure)
        self._back_off()
        return failure

    def _publish(self, batch: Batch) -> None:
        followers = self._followers
        seq = batch.seq
        # One cross-thread wake-up per event loop per batch, not one per awaiting task.
        wakes: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        first: ThreadCall | None = None  # thread callers are woken in a chain (see ThreadCall)
        last: ThreadCall | None = None
        answered = 0
        group = next(_groups)
        for item, new_state in batch.done:
            # Setting the outcome and waking the caller, inlined per kind: this loop is the hot path.
            if isinstance(item, AsyncCall):
                item.result = new_state
                item.done = True
                futures = wakes.get(item.loop)
                if futures is None:
                    futures = wakes[item.loop] = []
                futures.append(item.future)
            elif isinstance(item, ThreadCall) and not item.done:
                item.result = new_state
                item.done = True
                if not item.chained:
                    ring(item._signal)
                else:
                    if last is None:
                        first = item
                    else:
                        last._then = item
                        if last._left:
                            ring(item._signal)
                    last = item
                    item.group = group
                    answered += 1
            if followers:
                entries = followers.get(item.envelope.address)
                if entries:
                    for since, subscription in tuple(entries):
                        if seq >= since:
                            subscription._push(new_state)
        if self.pipelined:
            self._regroup.answered(group, answered)
        if first is not None:
            ring(first._signal)
        for item, error in batch.failed:
            item.fail(error)
        for item, error in batch.dead:
            logger.warning("pachyderm-typed: dead letter %r: %s", item.envelope, error.reason)
        for loop, futures in wakes.items():
            try:
                loop.call_soon_threadsafe(_set_all_done, futures)
            except RuntimeError:  # that loop is closed; nobody is waiting any more
                pass

    # -- threads ---------------------------------------------------------------------

    def _kick(self) -> None:
        if self._worker is None:
            self._start("_worker", self._work)
        self._wake.ring()

    def _kick_committer(self) -> None:
        if self._committer is None:
            self._start("_committer", self._commit_loop)
        self._commit_wake.ring()

    def _start(self, attribute: str, target: Any) -> None:
        self._marked_if_main(lambda: self._start_now(attribute, target))

    def _start_now(self, attribute: str, target: Any) -> None:
        with self._run_lock:
            if getattr(self, attribute) is None and not self._closed:
                thread = threading.Thread(
                    target=target, name=f"pachyderm-{self._declaration.name}{attribute}", daemon=True
                )
                setattr(self, attribute, thread)
                start_thread(thread)

    def _work(self) -> None:
        """The worker: cascades and async callers' messages."""
        while not self._closed:
            self._wake.wait()  # consumes the ring: a ring from now on means "look again"
            while self._queue and not self._closed:
                with self._run_lock:
                    if self._closed:
                        break
                    main = self._main_call
                    if main is not None and main.consumed:
                        main = self._main_call = None
                    # With the main thread's call: up to it, as that thread would have (not its cascade).
                    self._process_queue(main)
                    full = len(self._open) >= self.batch_size
                if not full or not self.pipelined:
                    self._flush(None)  # commit here if nobody else is, else leave it to who is
                else:  # the committer is behind: commit here (back-pressure)
                    self._commit_here()
            if not self.pipelined and self._has_work() and not self._closed:
                self._flush(None)  # left by a caller interrupted while committing (see _flush)

    def _commit_loop(self) -> None:
        """The committer of a durable store: commits while others process."""
        while True:
            self._commit_wake.wait()
            if self._closed:
                return
            self._commit_here(gather=True)

    def _commit_here(self, gather: bool = False) -> None:
        if gather and self._lock_requests:
            self._await_requests()
        with self._committing(ask=not gather):
            self._commit_sealed(until=None, gather=gather)

    def _state_of(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> Any:
        state = self._states.get(address, MISSING)
        if state is MISSING:
            state = self._load(spec, address)
        return state

    def _unfollow(self, subscription: Subscription[Any]) -> None:
        if self._once_main_lets_go(lambda: self._unfollow_now(subscription), "pachyderm-unfollow"):
            return
        forbid_inside_activation("Subscription.close")  # entity code would hold the run lock
        self._marked_if_main(lambda: self._unfollow_now(subscription))

    def _unfollow_now(self, subscription: Subscription[Any]) -> None:
        with self._run_lock:
            entries = self._followers.get(subscription.address)
            if entries:
                entries[:] = [entry for entry in entries if entry[1] is not subscription]
                if not entries:
                    del self._followers[subscription.address]

    # -- store hooks (in memory here; durable ecosystems override) -------------------

    def _check_storable(self, envelope: Envelope[Any, Any]) -> None:
        """Refuse, before it is queued, a ``send`` this store could not keep as a dead letter."""

    def _load(self, spec: EntitySpec, address: Address[Any, Any, Any]) -> object:
        """The state of an entity not in the cache: the stored one, or ``init``."""
        return self._kernel.initial_state(spec, address)

    def _sealing(self, batch: Batch) -> None:
        """Under the run lock: a batch is being sealed; prepare what its commit needs."""

    def _commit(self, batch: Batch) -> None:
        """Under the commit lock (not the run lock): make the batch durable."""
        for item, error in batch.dead:
            self._dead_seq += 1
            self._dead[self._dead_seq] = DeadLetter(self._dead_seq, item.envelope, str(error))

    def _committed(self, batch: Batch) -> None:
        """Under both locks, after ``batch`` was published."""

    def _reset_after_failure(self, failure: StorageError) -> None:
        """Under both locks: a commit failed; forget what was in flight (the store is unchanged)."""
        raise AssertionError("this store's commits cannot fail") from failure

    def _back_off(self) -> None:
        """Under the commit lock only, after a failed commit."""

    def _take_dead_letter(self, dead_letter: DeadLetter) -> None:
        if self._dead.pop(dead_letter.id, None) is None:
            raise LookupError(f"dead letter {dead_letter.id} is not (or no longer) in {self!r}")

    def _release(self) -> None:
        """Release the store (close files and connections)."""
