"""InMemory: entity-to-entity hops per second and send_sync latency, with ratios to anchors.

Anchors, measured in the same run:
  * bare loop: pop an envelope, call ``activate`` directly, store the state, queue
    the outbox (the limit: what any runtime must do at least);
  * Pykka: two actors bouncing a message (hops), and ``ask`` round trips (latency).

Run: .venv/bin/python bench/bench_inmemory.py [--hops N] [--calls N]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox
from pachyderm_typed.ecosystems import InMemory

from bench_localdisk import threads_rate  # its durable=False: the same thread callers on InMemory
from counter import Counter, Increment  # bench/counter.py


@attrs.frozen
class Hop:
    remaining: int


class Relay(Entity[int, Hop, tuple[int, int]]):
    """Two relays (ids 0 and 1) bounce a hop back and forth; the last goes to the sink."""

    def init(self, entity_id: int) -> tuple[int, int]:
        return (entity_id, 0)

    def activate(self, message: Hop, state: tuple[int, int]) -> tuple[Outbox, tuple[int, int]]:
        me, count = state
        if message.remaining == 0:
            return [Sink.post(0, Hop(0))], (me, count + 1)
        return [Relay.post(1 - me, Hop(message.remaining - 1))], (me, count + 1)


class Sink(Entity[int, Hop, int]):
    def init(self, entity_id: int) -> int:
        return 0

    def activate(self, message: Hop, state: int) -> tuple[Outbox, int]:
        return [], state + 1


class Bench(Ecosystem[Relay | Sink]): ...


class Counters(Ecosystem[Counter]): ...


def best_of(runs: int, measure: Callable[[], float]) -> float:
    return max(measure() for _ in range(runs))


def bare_loop_hops(hops: int) -> float:
    relay, sink = Relay(), Sink()
    impls: dict[type, Any] = {Relay: relay, Sink: sink}
    states: dict[Any, Any] = {}
    queue: deque[Any] = deque([Relay.post(0, Hop(hops))])
    start = time.perf_counter()
    while queue:
        envelope = queue.popleft()
        address = envelope.address
        impl = impls[address.entity]
        state = states.get(address)
        if state is None:
            state = impl.init(address.id)
        outbox, states[address] = impl.activate(envelope.message, state)
        queue.extend(outbox)
    elapsed = time.perf_counter() - start
    assert states[Sink.address(0)] == 1
    return (hops + 2) / elapsed


def pachyderm_hops(hops: int) -> float:
    with InMemory(Bench) as world, world.follow(Sink.address(0)) as sink:
        start = time.perf_counter()
        world.send(Relay.post(0, Hop(hops)))
        assert sink.next(timeout=600) == 1
        elapsed = time.perf_counter() - start
    return (hops + 2) / elapsed


def pykka_hops(hops: int) -> float:
    import pykka

    done = threading.Event()

    class Bouncer(pykka.ThreadingActor):
        def __init__(self) -> None:
            super().__init__()
            self.partner: Any = None
            self.count = 0

        def on_receive(self, message: Any) -> None:
            if message == "partner":
                return
            self.count += 1
            if message == 0:
                done.set()
            else:
                self.partner.tell(message - 1)

    first, second = Bouncer.start(), Bouncer.start()
    first.proxy().partner = second
    second.proxy().partner = first
    first.proxy().partner.get()
    second.proxy().partner.get()
    start = time.perf_counter()
    first.tell(hops)
    done.wait(600)
    elapsed = time.perf_counter() - start
    pykka.ActorRegistry.stop_all()
    return (hops + 1) / elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def pachyderm_send_sync_latency(calls: int) -> list[float]:
    samples: list[float] = []
    with InMemory(Counters) as world:
        envelope = Counter.post("latency", Increment())

        def run() -> None:
            for _ in range(calls):
                start = time.perf_counter()
                world.send_sync(envelope)
                samples.append(time.perf_counter() - start)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert world.state(Counter.address("latency")) == calls
    return samples


def pykka_ask_latency(calls: int) -> list[float]:
    import pykka

    class Count(pykka.ThreadingActor):
        def __init__(self) -> None:
            super().__init__()
            self.value = 0

        def on_receive(self, message: Any) -> int:
            self.value += 1
            return self.value

    actor = Count.start()
    samples: list[float] = []

    def run() -> None:
        for _ in range(calls):
            start = time.perf_counter()
            actor.ask("inc")
            samples.append(time.perf_counter() - start)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    actor.stop()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=200_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="best of N for throughput")
    args = parser.parse_args()

    bare = best_of(args.runs, lambda: bare_loop_hops(args.hops))
    ours = best_of(args.runs, lambda: pachyderm_hops(args.hops))
    pykka_rate = best_of(args.runs, lambda: pykka_hops(min(args.hops, 50_000)))
    print(f"InMemory hops ({args.hops:,} hops, best of {args.runs})")
    print(f"  {'':<26}{'hops/s':>12}{'ratio':>10}")
    print(f"  {'bare activate loop':<26}{bare:>12,.0f}{1.0:>10.2f}   (the limit)")
    print(f"  {'pachyderm InMemory':<26}{ours:>12,.0f}{ours / bare:>10.2f}   x bare loop (target >= 0.5)")
    print(f"  {'pykka ping-pong':<26}{pykka_rate:>12,.0f}{pykka_rate / bare:>10.2f}")
    print(f"  pachyderm / pykka: {ours / pykka_rate:.1f} x (target >= 20)")

    ours_lat = pachyderm_send_sync_latency(args.calls)
    pykka_lat = pykka_ask_latency(args.calls)
    med, p99 = statistics.median(ours_lat) * 1e6, percentile(ours_lat, 0.99) * 1e6
    pmed, pp99 = statistics.median(pykka_lat) * 1e6, percentile(pykka_lat, 0.99) * 1e6
    print(f"\nsend_sync round trip from a plain thread ({args.calls:,} calls)")
    print(f"  {'':<26}{'median us':>12}{'p99 us':>10}")
    print(f"  {'pachyderm send_sync':<26}{med:>12.2f}{p99:>10.2f}   (target median <= 10 us)")
    print(f"  {'pykka ask':<26}{pmed:>12.2f}{pp99:>10.2f}")
    print(f"  pykka ask / send_sync median: {pmed / med:.1f} x")

    # Threads share the GIL, so more of them cannot make more calls; they should not make
    # many fewer either (each call a context switch: see World._flush).
    print(f"\nsend_sync from several plain threads, each to its own counter (best of {args.runs}, 1 s each)")
    print(f"  {'threads':<26}{'calls/s':>12}{'ratio':>10}")
    single = 0.0
    for threads in (1, 2, 8, 16):
        rate = best_of(args.runs, lambda: threads_rate(Path(), threads, 1.0, durable=False).per_second)
        single = single or rate
        print(f"  {threads:<26}{rate:>12,.0f}{rate / single:>10.2f}   x 1 thread")


if __name__ == "__main__":
    main()
