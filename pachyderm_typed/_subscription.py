"""``Subscription``: a follower's view of one entity's committed states."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from pachyderm_typed._address import Address

S_co = TypeVar("S_co", covariant=True)

_CLOSED = object()


class Subscription(Generic[S_co]):
    """Every state an entity commits from now on, in commit order.

    ``state`` is the latest state this subscription has handed out (at first,
    the state when ``follow`` was called). Iterate (``for`` or ``async for``)
    to receive each later state; iteration ends when the subscription or its
    ecosystem is closed. States are queued, so a slow reader misses nothing.
    """

    __slots__ = ("address", "_state", "_items", "_cond", "_closed", "_waiter", "_on_close")

    def __init__(
        self,
        address: Address[Any, Any, S_co],
        state: S_co,
        on_close: Callable[[Subscription[Any]], None],
    ) -> None:
        self.address = address
        self._state = state
        self._items: deque[object] = deque()
        self._cond = threading.Condition(threading.Lock())
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
        with self._cond:
            self._items.append(state)
            self._cond.notify()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_wake, future)

    def _end(self) -> None:
        """The ecosystem is closing: end iteration after what is queued."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._items.append(_CLOSED)
            self._cond.notify_all()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_wake, future)

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
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items[0]
            if item is _CLOSED:
                raise StopIteration
            self._items.popleft()
        self._state = item  # type: ignore[assignment]
        return item  # type: ignore[return-value]

    def next(self, timeout: float | None = None) -> S_co:
        """The next state, waiting at most ``timeout`` seconds (``TimeoutError`` after)."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise TimeoutError(f"no new state of {self.address!r} within {timeout} s")
        return next(self)

    def __aiter__(self) -> AsyncIterator[S_co]:
        return self

    async def __anext__(self) -> S_co:
        while True:
            with self._cond:
                if self._items:
                    item = self._items[0]
                    if item is _CLOSED:
                        raise StopAsyncIteration
                    self._items.popleft()
                    self._state = item  # type: ignore[assignment]
                    return item  # type: ignore[return-value]
                loop = asyncio.get_running_loop()
                future: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, future)
            await future

    def __repr__(self) -> str:
        return f"<Subscription {self.address!r} state={self._state!r}{' closed' if self._closed else ''}>"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
