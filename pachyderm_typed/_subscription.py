"""``Subscription``: a follower's view of one entity's committed states."""

from __future__ import annotations

import _thread
import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from pachyderm_typed._address import Address
from pachyderm_typed._bells import ring

S_co = TypeVar("S_co", covariant=True)

_CLOSED = object()  # queued last: iteration ends there
_EMPTY = object()


class Subscription(Generic[S_co]):
    """Every state an entity commits from now on, in commit order.

    ``state`` is the latest state this subscription has handed out (at first,
    the state when ``follow`` was called). Iterate (``for`` or ``async for``)
    to receive each later state; iteration ends when the subscription or its
    ecosystem is closed. States are queued, so a slow reader misses nothing.
    """

    # No lock guards the queue: a signal handler runs in the main thread between any two
    # bytecodes, also of a read of this subscription, and its call may commit a state that
    # is pushed here; a push waiting for a lock that read holds would wait forever. So a
    # push never waits: it appends (atomic) and then wakes a reader; a reader that found the
    # queue empty has already said where to be woken (``_bell``, ``_waiter``) when it looks
    # again, so one of the two sees the other.
    __slots__ = ("address", "_state", "_items", "_bell", "_closed", "_waiter", "_on_close")

    def __init__(
        self,
        address: Address[Any, Any, S_co],
        state: S_co,
        on_close: Callable[[Subscription[Any]], None],
    ) -> None:
        self.address = address
        self._state = state
        self._items: deque[object] = deque()
        self._bell = _thread.allocate_lock()  # released: a reader blocked on it wakes
        self._bell.acquire()
        self._closed = False
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._on_close = on_close

    @property
    def state(self) -> S_co:
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    def _push(self, state: object) -> None:
        """Called by the ecosystem after each commit of this entity."""
        self._items.append(state)
        self._ring()

    def _end(self) -> None:
        """The ecosystem is closing: end iteration after what is queued."""
        if self._closed:
            return
        self._closed = True
        self._items.append(_CLOSED)
        self._ring()

    def _ring(self) -> None:
        """Wake a thread blocked in a read, and an async reader, if any (never waits)."""
        ring(self._bell)
        waiter = self._waiter  # replaced only by the reader: a push must not lose a newer one
        if waiter is not None and not waiter[1].done():
            loop, future = waiter
            loop.call_soon_threadsafe(_wake, future)

    def _take(self) -> Any:
        """The next state, now ``state``; or _CLOSED (it stays queued for every later read), or _EMPTY."""
        items = self._items
        try:
            item = items.popleft()
        except IndexError:
            return _EMPTY
        if item is _CLOSED:
            items.appendleft(_CLOSED)
            self._ring()  # another reader may have found the queue empty meanwhile
            return item
        if items:
            self._ring()  # two pushes can ring once: another reader may wait for the second
        self._state = item  # type: ignore[assignment]
        return item

    def close(self) -> None:
        """Stop following; iteration ends once queued states are read."""
        if not self._closed:
            self._on_close(self)
            self._end()

    def __enter__(self) -> Subscription[S_co]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[S_co]:
        return self

    def __next__(self) -> S_co:
        return self.next()

    def next(self, timeout: float | None = None) -> S_co:
        """The next state, waiting at most ``timeout`` seconds (``TimeoutError`` after)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            item = self._take()
            if item is _CLOSED:
                raise StopIteration
            if item is not _EMPTY:
                return item  # type: ignore[no-any-return]
            if deadline is None:
                self._bell.acquire()
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not self._bell.acquire(timeout=left):
                if self._items:  # pushed as the time ran out
                    continue
                raise TimeoutError(f"no new state of {self.address!r} within {timeout} s")

    def __aiter__(self) -> AsyncIterator[S_co]:
        return self

    async def __anext__(self) -> S_co:
        while True:
            item = self._take()
            if item is _CLOSED:
                raise StopAsyncIteration
            if item is not _EMPTY:
                return item  # type: ignore[no-any-return]
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiter = (loop, future)
            if not self._items:  # else pushed before the waiter was set: no need to wait
                await future

    def __repr__(self) -> str:
        return f"<Subscription {self.address!r} state={self._state!r}{' closed' if self._closed else ''}>"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
