"""The behaviour every ecosystem shares, run on each (see conftest.make_world)."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pachyderm_typed import (
    ActivationError,
    ClosedError,
    Ecosystem,
    Entity,
    Outbox,
    MessageTypeError,
    ReentrantCallError,
    SendInsideActivationError,
    UndeclaredEntityError,
    World,
)
from pachyderm_typed import _world
from pachyderm_typed._address import make_envelope
from pachyderm_typed.ecosystems import InMemory, LocalDisk
from pachyderm_typed._world import Batch, ThreadCall
from tests import entities as ents
from tests.conftest import MakeWorld
from tests.guards import hangs_fail, on_thread_or_fail
from tests.entities import (
    App,
    Burst,
    Counter,
    Fanout,
    Forward,
    Forwarder,
    Hooked,
    Increment,
    Picky,
    Ping,
    PingPong,
    Poke,
    Record,
    Recorder,
    Unlock,
    Work,
)

WAIT = 20.0  # seconds a test waits for a cascade before it fails


def test_send_sync_returns_each_new_state(make_world: MakeWorld) -> None:
    world = make_world(App)
    assert world.send_sync(Counter.post("c", Increment())) == 1
    assert world.send_sync(Counter.post("c", Increment(by=5))) == 6
    assert world.send_sync(Counter.post("other", Increment())) == 1
    assert world.state(Counter.address("c")) == 6


def test_state_of_a_new_entity_is_init_and_reading_it_creates_nothing(make_world: MakeWorld) -> None:
    world = make_world(App)
    assert world.state(Counter.address("never")) == 0
    assert world.state(PingPong.address("nobody")) is None  # default init
    assert world.send_sync(Counter.post("never", Increment())) == 1


def test_ping_pong_replies_through_the_reply_address(make_world: MakeWorld) -> None:
    world = make_world(App)
    with world.follow(PingPong.address("alice")) as alice:
        assert alice.state is None
        assert world.send_sync(PingPong.post("bob", Ping(reply_to=PingPong.address("alice")))) == "pinged"
        assert alice.next(timeout=WAIT) == "ponged"
        assert alice.state == "ponged"
    assert world.state(PingPong.address("alice")) == "ponged"


def test_follow_sees_the_current_state_then_every_later_state_in_order(make_world: MakeWorld) -> None:
    world = make_world(App)
    world.send_sync(Counter.post("f", Increment(by=10)))
    with world.follow(Counter.address("f")) as updates:
        assert updates.state == 10
        for _ in range(5):
            world.send(Counter.post("f", Increment()))
        assert [updates.next(timeout=WAIT) for _ in range(5)] == [11, 12, 13, 14, 15]


def test_messages_from_one_sender_arrive_in_order(make_world: MakeWorld) -> None:
    world = make_world(App)
    for n in range(30):
        world.send(Recorder.post("log", Record("outside", n)))
    assert [r.n for r in world.state(Recorder.address("log"))] == list(range(30))


def test_an_outbox_is_delivered_in_order(make_world: MakeWorld) -> None:
    world = make_world(App)
    with world.follow(Recorder.address("fan")) as log:
        world.send_sync(Fanout.post("f", Burst("fan", 25)))
        states = [log.next(timeout=WAIT) for _ in range(25)]
    assert [r.n for r in states[-1]] == list(range(25))


def test_forwarded_messages_reach_their_target(make_world: MakeWorld) -> None:
    world = make_world(App)
    with world.follow(Counter.address("target")) as target:
        for _ in range(10):
            world.send(Forwarder.post("fw", Forward("target", 2)))
        seen = [target.next(timeout=WAIT) for _ in range(10)]
    assert seen == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert world.state(Forwarder.address("fw")) == 10


def test_a_failed_send_sync_raises_and_the_entity_keeps_its_state(make_world: MakeWorld) -> None:
    world = make_world(App)
    world.send_sync(Picky.post("p", Unlock()))
    world.send_sync(Picky.post("p", Work(3)))
    world.send_sync(Picky.post("p", Work(4)))
    with pytest.raises(ActivationError) as caught:
        world.send_sync(Picky.post("locked", Work(7)))
    error = caught.value
    assert error.address == Picky.address("locked")
    assert error.message == Work(7)
    assert error.state == ents.Gate()
    assert isinstance(error.__cause__, ValueError)
    assert "gate closed, cannot take 7" in str(error)
    assert world.dead_letters() == []  # the caller got the error
    assert world.state(Picky.address("locked")) == ents.Gate()
    assert world.send_sync(Picky.post("locked", Unlock())) == ents.Gate(open=True)
    assert world.state(Picky.address("p")) == ents.Gate(open=True, total=7)


def test_activation_error_lists_what_the_entity_received_before(make_world: MakeWorld) -> None:
    world = make_world(App)
    world.send_sync(Picky.post("other", Unlock()))
    world.send(Picky.post("h", Work(5)))  # fails too: becomes a dead letter
    world.send_sync(Picky.post("other", Work(1)))
    with pytest.raises(ActivationError) as caught:
        world.send_sync(Picky.post("h", Work(6)))
    assert list(caught.value.history) == [Work(5)]
    assert "Work(value=5)" in str(caught.value)


def test_a_failed_send_becomes_a_dead_letter_that_can_be_retried(make_world: MakeWorld) -> None:
    world = make_world(App)
    world.send(Picky.post("d", Work(5)))
    letters = world.dead_letters()
    assert [letter.envelope for letter in letters] == [Picky.post("d", Work(5))]
    assert "gate closed" in letters[0].reason
    world.send_sync(Picky.post("d", Unlock()))
    world.retry(letters[0])
    assert world.dead_letters() == []
    assert world.state(Picky.address("d")) == ents.Gate(open=True, total=5)


def test_dead_letters_can_be_discarded(make_world: MakeWorld) -> None:
    world = make_world(App)
    world.send(Picky.post("x", Work(1)))
    world.send(Picky.post("x", Work(2)))
    first, second = world.dead_letters()
    world.discard(first)
    assert world.dead_letters() == [second]
    with pytest.raises(LookupError):
        world.discard(first)


def test_untyped_callers_get_clear_errors_and_nothing_changes(make_world: MakeWorld) -> None:
    world = make_world(App)
    world.send_sync(Counter.post("u", Increment()))
    bad: Any = Counter.post("u", "increment")  # type: ignore[arg-type]
    with pytest.raises(MessageTypeError, match="Counter accepts messages of type Increment"):
        world.send_sync(bad)
    with pytest.raises(MessageTypeError, match="Counter ids are str"):
        world.send(Counter.post(42, Increment()))  # type: ignore[arg-type]

    class Stranger(Counter):
        kind = "Stranger"

    with pytest.raises(UndeclaredEntityError, match="Stranger is not declared in App"):
        world.send(Stranger.post("u", Increment()))
    with pytest.raises(UndeclaredEntityError):
        world.follow(Stranger.address("u"))
    with pytest.raises(TypeError, match="expected an Envelope"):
        world.send(("u", Increment()))  # type: ignore[arg-type]
    assert world.state(Counter.address("u")) == 1
    assert world.dead_letters() == []


def test_send_inside_activate_is_reported(make_world: MakeWorld) -> None:
    world = make_world(App)
    ents.HOOK.append(lambda: world.send(Counter.post("side", Increment())))
    try:
        with pytest.raises(ActivationError) as caught:
            world.send_sync(Hooked.post("h", Poke()))
    finally:
        ents.HOOK.clear()
    assert isinstance(caught.value.__cause__, SendInsideActivationError)
    assert "outbox" in str(caught.value.__cause__)
    assert world.state(Hooked.address("h")) == 0
    assert world.state(Counter.address("side")) == 0


def poke_recording(world: World[Any], outcomes: list[BaseException]) -> Callable[[], None]:
    """A caller that pokes Hooked "h" (running ents.HOOK) and records what that raised."""

    def call() -> None:
        try:
            world.send_sync(Hooked.post("h", Poke()))
        except BaseException as exc:
            outcomes.append(exc)

    return call


@pytest.mark.parametrize("operation", ["state", "follow", "dead_letters", "close"])
def test_any_other_call_on_the_ecosystem_inside_activate_is_refused(make_world: MakeWorld, operation: str) -> None:
    """Reads and close() from activate: in memory and on disk the activation runs under the
    engine's locks, and these calls waited for them forever. (close() is tried from a plain
    thread only: see below.)"""
    world = make_world(App)
    calls: dict[str, Callable[[], object]] = {
        "state": lambda: world.state(Counter.address("c")),
        "follow": lambda: world.follow(Counter.address("c")),
        "dead_letters": world.dead_letters,
        "close": world.close,
    }
    ents.HOOK.append(calls[operation])
    caught: list[BaseException] = []
    call = poke_recording(world, caught)
    try:
        on_thread_or_fail(make_world, world, call, f"{operation}() from activate()", WAIT)
        if operation != "close":
            # In the main thread a close() from entity code cannot be told from a signal
            # handler's that landed there (a graceful shutdown), which must close the world.
            with hangs_fail():
                call()
    finally:
        ents.HOOK.clear()
    for error in caught:
        assert isinstance(error, ActivationError) and isinstance(error.__cause__, SendInsideActivationError), error
        assert f"{operation}() was called from inside activate()" in str(error.__cause__)
    assert len(caught) == (1 if operation == "close" else 2)
    assert not world.closed
    assert world.send_sync(Hooked.post("h", Poke())) == 1  # the entity kept its state


INIT_HOOK: list[Callable[[], object]] = []


class Meddler(Entity[str, Increment, int]):
    """Its init runs INIT_HOOK: a test makes it call the ecosystem."""

    def init(self, entity_id: str) -> int:
        for hook in INIT_HOOK:
            hook()
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state + message.by


class MeddlerApp(Ecosystem[Meddler | Counter]): ...


def test_an_init_that_calls_the_ecosystem_is_refused_wherever_it_runs(make_world: MakeWorld) -> None:
    """init runs in activations, and in state() and follow() reads that may hold the engine's
    locks: a call from it there waited for them forever, in any thread."""
    world = make_world(MeddlerApp)
    INIT_HOOK.append(lambda: world.send_sync(Counter.post("side", Increment())))
    outcomes: dict[str, Exception | None] = {}

    def attempts() -> None:
        for name, attempt in (
            ("state", lambda: world.state(Meddler.address("a"))),
            ("follow", lambda: world.follow(Meddler.address("b"))),
            ("send_sync", lambda: world.send_sync(Meddler.post("c", Increment()))),
        ):
            try:
                attempt()
                outcomes[name] = None
            except Exception as exc:
                outcomes[name] = exc

    try:
        with hangs_fail():
            attempts()  # the main thread
        in_main = dict(outcomes)
        outcomes.clear()
        on_thread_or_fail(make_world, world, attempts, "a call from init()", WAIT)
    finally:
        INIT_HOOK.clear()
    for seen in (in_main, outcomes):
        assert isinstance(seen["state"], SendInsideActivationError), seen
        assert "init()" in str(seen["state"])
        assert isinstance(seen["follow"], SendInsideActivationError), seen
        failed = seen["send_sync"]
        assert isinstance(failed, ActivationError) and isinstance(failed.__cause__, SendInsideActivationError)
    assert world.state(Counter.address("side")) == 0
    assert world.send_sync(Meddler.post("c", Increment())) == 1


class Fussy(Entity[str, Increment, int]):
    """Its init refuses ids it has no record of, as one that looks its id up somewhere might."""

    def init(self, entity_id: str) -> int:
        if entity_id.startswith("unknown"):
            raise LookupError(f"no record of {entity_id}")
        return 0

    def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
        return [], state + message.by


class FussyApp(Ecosystem[Fussy]): ...


def test_an_init_that_raises_fails_that_message_alone(make_world: MakeWorld) -> None:
    """From any caller, and for a message nobody waits for: the engine's threads carry on."""
    world = make_world(FussyApp)
    with hangs_fail():
        with pytest.raises(ActivationError, match=r"init\('unknown-1'\) raised LookupError: no record") as caught:
            world.send_sync(Fussy.post("unknown-1", Increment()))
        assert isinstance(caught.value.__cause__, LookupError)
        with pytest.raises(ActivationError, match=r"init\('unknown-2'\) raised LookupError"):
            asyncio.run(world.asend_sync(Fussy.post("unknown-2", Increment())))
        world.send(Fussy.post("unknown-3", Increment()))
        assert [letter.envelope for letter in world.dead_letters()] == [Fussy.post("unknown-3", Increment())]
        assert world.send_sync(Fussy.post("known", Increment(by=2))) == 2
        assert asyncio.run(world.asend_sync(Fussy.post("known", Increment()))) == 3


def test_an_activate_that_calls_sys_exit_fails_that_message_alone(make_world: MakeWorld) -> None:
    """SystemExit raised in an engine thread (or a caller's) would end that thread and leave
    callers waiting. In the main thread it ends the program, as anywhere there."""
    world = make_world(App)
    ents.HOOK.append(lambda: sys.exit(3))
    outcomes: list[BaseException] = []
    call = poke_recording(world, outcomes)
    try:
        on_thread_or_fail(make_world, world, call, "a send_sync whose activation called sys.exit()", WAIT)
        with hangs_fail():
            with pytest.raises(ActivationError, match="SystemExit: 3"):
                asyncio.run(world.asend_sync(Hooked.post("h", Poke())))
            call()  # the main thread
    finally:
        ents.HOOK.clear()
    in_thread, in_main = outcomes
    assert isinstance(in_thread, ActivationError) and "SystemExit: 3" in str(in_thread)
    if isinstance(world, LocalDisk):  # its main thread hands the activation to the worker
        assert isinstance(in_main, ActivationError) and "SystemExit: 3" in str(in_main)
    else:  # the main thread ran the activation itself
        assert isinstance(in_main, SystemExit) and in_main.code == 3
    with hangs_fail():
        assert world.send_sync(Hooked.post("h", Poke())) == 1
        assert asyncio.run(world.asend_sync(Hooked.post("h", Poke()))) == 2


def test_an_invalid_outbox_fails_the_activation(make_world: MakeWorld) -> None:
    world = make_world(App)
    wrong = make_envelope(Counter.address("c"), "not an Increment")
    ents.HOOK.append(lambda: None)
    original = Hooked.activate

    def bad_activate(self: Hooked, message: Poke, state: int) -> Any:
        return [wrong], state + 1

    Hooked.activate = bad_activate  # type: ignore[method-assign]
    try:
        with pytest.raises(ActivationError, match="outbox is invalid"):
            world.send_sync(Hooked.post("o", Poke()))
    finally:
        Hooked.activate = original  # type: ignore[method-assign]
        ents.HOOK.clear()
    assert world.state(Hooked.address("o")) == 0
    assert world.state(Counter.address("c")) == 0


def test_concurrent_threads_each_see_their_own_result(make_world: MakeWorld) -> None:
    world = make_world(App)
    results: list[list[int]] = [[] for _ in range(8)]

    def run(slot: int) -> None:
        for _ in range(40):
            results[slot].append(world.send_sync(Counter.post("shared", Increment())))

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(value for slot in results for value in slot)
    assert every == list(range(1, 321))  # each increment applied once, each caller saw its own
    for slot in results:
        assert slot == sorted(slot)
    assert world.state(Counter.address("shared")) == 320


def _processed_and_waiting(world: World[Any], thread: threading.Thread) -> None:
    """Wait until ``thread``'s send_sync has processed its message and waits for a commit."""
    deadline = time.monotonic() + 20
    while not world._has_work():
        assert thread.is_alive() and time.monotonic() < deadline, "the caller never processed its message"
        time.sleep(0.001)


def _waiting_in(thread: threading.Thread) -> str:
    """The innermost frame of ``thread``, once it is blocked (its name and function)."""
    deadline = time.monotonic() + 20
    while True:
        frame = sys._current_frames()[thread.ident]  # type: ignore[index]
        name = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"
        if frame.f_code.co_name in ("wait", "_flush") or time.monotonic() > deadline:
            return name
        time.sleep(0.001)


def test_a_caller_that_finds_the_commit_lock_held_waits_for_its_answer_not_the_lock() -> None:
    """In memory, a caller never blocks on the commit lock: a blocked waiter is handed the lock
    when it is released, before it has the GIL back, and every next call queues behind the
    last one (a convoy). The holder commits the batches others left once it lets go."""
    world = InMemory(App)
    answered: list[int] = []
    caller = threading.Thread(target=lambda: answered.append(world.send_sync(Counter.post("held", Increment()))))
    with world._committing():  # as a state() read holds it
        caller.start()
        _processed_and_waiting(world, caller)
        assert _waiting_in(caller) == "_world.py:wait"
        assert not answered
    caller.join(timeout=20)
    assert answered == [1]
    world.close()


@pytest.mark.parametrize("kind", ["inmemory", "localdisk"])
def test_callers_left_to_a_commit_lock_holder_that_raises_are_answered(kind: str, tmp_path: Path) -> None:
    """A holder that leaves by an exception (a read that failed, Ctrl-C) still hands on the
    batches other callers processed meanwhile and left to it."""
    world: World[App] = InMemory(App) if kind == "inmemory" else LocalDisk(App, tmp_path / "held.db")
    answered: list[int] = []
    caller = threading.Thread(
        target=lambda: answered.append(world.send_sync(Counter.post("held", Increment()))), daemon=True
    )
    with pytest.raises(LookupError):
        with world._committing():
            caller.start()
            _processed_and_waiting(world, caller)
            raise LookupError("the holder fails")
    caller.join(timeout=20)
    assert answered == [1], "the caller was left waiting"
    assert world.state(Counter.address("held")) == 1
    world.close()


class _SignalOnThreadStart:
    """``threading`` as the engine sees it, except that creating a thread in the main thread
    first raises SIGUSR1 there: its handler runs while the engine starts its worker, holding
    the run lock."""

    def __getattr__(self, name: str) -> Any:
        return getattr(threading, name)

    @staticmethod
    def Thread(*args: Any, **kwargs: Any) -> threading.Thread:  # noqa: N802 (threading's name)
        if threading.current_thread() is threading.main_thread():
            signal.raise_signal(signal.SIGUSR1)
        return threading.Thread(*args, **kwargs)


@pytest.mark.parametrize("kind", ["inmemory", "localdisk"])
def test_a_signal_handler_landing_while_the_main_thread_starts_the_worker_is_refused(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main thread starts the worker on its first call that needs it, holding the run lock a
    moment. A signal handler that lands there and calls in is refused; it used to wait for that
    lock, which its own thread held, forever (seen in the InMemory signal-handler child)."""
    world: World[App] = InMemory(App) if kind == "inmemory" else LocalDisk(App, tmp_path / "start.db")
    seen: list[str] = []

    def handler(signum: int, frame: object) -> None:
        try:
            seen.append(f"answered {world.send_sync(Counter.post('h', Increment()))}")
        except ReentrantCallError:
            seen.append("refused")

    previous = signal.signal(signal.SIGUSR1, handler)
    monkeypatch.setattr(_world, "threading", _SignalOnThreadStart())
    try:
        with hangs_fail():
            # In memory the forwarded message is left to the worker; on disk the main thread's
            # own call is: either way this call starts the worker, from the main thread.
            assert world.send_sync(Forwarder.post("f", Forward("c"))) == 1
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGUSR1, previous)
    assert seen == ["refused"]
    deadline = time.monotonic() + 20
    while world.state(Counter.address("c")) != 1:  # the worker delivers the forwarded message
        assert time.monotonic() < deadline, "the forwarded message was never delivered"
        time.sleep(0.01)
    assert world.state(Counter.address("h")) == 0
    world.close()


@pytest.mark.parametrize("leaves", ["before its batch is published", "after its batch is published"])
def test_callers_answered_together_are_all_woken_when_one_leaves_early(leaves: str) -> None:
    # Callers answered by one batch wake one another in turn; one that stops waiting
    # (interrupted, say) must not strand the callers after it.
    world = InMemory(App)
    calls = [ThreadCall(Counter.post(name, Increment()), raises=True) for name in "abc"]
    batch = Batch()
    batch.done = [(call, n) for n, call in enumerate(calls, 1)]
    if leaves.startswith("before"):
        calls[0].leave()

    def wait_like_a_caller(call: ThreadCall) -> None:
        call.wait()
        call.leave()

    waiters = [threading.Thread(target=wait_like_a_caller, args=(call,), daemon=True) for call in calls[1:]]
    for waiter in waiters:
        waiter.start()
    world._publish(batch)
    if leaves.startswith("after"):
        calls[0].leave()
    for waiter in waiters:
        waiter.join(timeout=10)
    assert not any(waiter.is_alive() for waiter in waiters)
    assert [call.result for call in calls] == [1, 2, 3]
    world.close()


def test_async_twins(make_world: MakeWorld) -> None:
    world = make_world(App)

    async def main() -> list[int]:
        assert await world.asend_sync(Counter.post("a", Increment())) == 1
        seen: list[int] = []
        with world.follow(Counter.address("a")) as updates:
            await asyncio.gather(*(world.asend(Counter.post("a", Increment())) for _ in range(5)))
            async for state in updates:
                seen.append(state)
                if state == 6:
                    break
        with pytest.raises(ActivationError):
            await world.asend_sync(Picky.post("async", Work(1)))
        return seen

    assert asyncio.run(main()) == [2, 3, 4, 5, 6]


def test_async_senders_share_the_world_with_threads(make_world: MakeWorld) -> None:
    world = make_world(App)

    async def main() -> list[int]:
        return await asyncio.gather(*(world.asend_sync(Counter.post("mix", Increment())) for _ in range(50)))

    thread = threading.Thread(target=lambda: [world.send_sync(Counter.post("mix", Increment())) for _ in range(50)])
    thread.start()
    values = asyncio.run(main())
    thread.join()
    assert len(set(values)) == 50
    assert world.state(Counter.address("mix")) == 100


def test_a_cancelled_async_call_is_applied_once_or_not_at_all(make_world: MakeWorld) -> None:
    """Tasks cancelled at every stage of asend_sync/asend (by wait_for timeouts): the engine
    still answers everyone else, and each call counts once at most."""
    world = make_world(App)
    calls = 600

    async def main() -> tuple[list[int], int]:
        answered: list[int] = []
        cancelled = 0

        async def one(n: int) -> None:
            nonlocal cancelled
            envelope = Counter.post("k", Increment())
            call = world.asend_sync(envelope) if n % 3 else world.asend(envelope)
            try:
                result = await asyncio.wait_for(call, timeout=(0, 0.0002, 0.002, WAIT)[n % 4])
            except asyncio.TimeoutError:
                cancelled += 1
            else:
                if result is not None:
                    answered.append(result)

        await asyncio.gather(*(one(n) for n in range(calls)))
        return answered, cancelled

    with hangs_fail():
        answered, cancelled = asyncio.run(main())
        applied = world.state(Counter.address("k"))
        assert cancelled > 0 and len(answered) > 0
        assert len(set(answered)) == len(answered), "two calls were answered with the same new state"
        assert calls - cancelled <= applied <= calls  # every answered call counted, none twice
        assert world.send_sync(Counter.post("k", Increment())) == applied + 1
        assert asyncio.run(world.asend_sync(Counter.post("k", Increment()))) == applied + 2
    assert world.dead_letters() == []


def test_an_implementation_can_be_swapped_for_a_double(make_world: MakeWorld) -> None:
    class DoublingCounter(Counter):
        def activate(self, message: Increment, state: int) -> tuple[Any, int]:
            return [], state + 2 * message.by

    world = make_world(App, implementations={Counter: DoublingCounter()})
    assert world.send_sync(Counter.post("d", Increment(by=3))) == 6


def test_a_closed_world_refuses_work(make_world: MakeWorld) -> None:
    world = make_world(App)
    subscription = world.follow(Counter.address("z"))
    world.close()
    with pytest.raises(ClosedError):
        world.send(Counter.post("z", Increment()))
    with pytest.raises(ClosedError):
        world.send_sync(Counter.post("z", Increment()))
    assert list(subscription) == []  # iteration ends
    world.close()  # idempotent


def test_a_single_entity_declaration_works(make_world: MakeWorld) -> None:
    world = make_world(Ecosystem[Counter])
    assert world.send_sync(Counter.post("solo", Increment())) == 1
    with pytest.raises(UndeclaredEntityError):
        world.send(PingPong.post("x", ents.Pong()))
