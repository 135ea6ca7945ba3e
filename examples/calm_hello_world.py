"""CALM, worked: a client sends "hello," " world" "!" to a server through a proxy.

The seed's exercise: derive TCP. A client splits its text into chunks and sends
them through a proxy; the server shows what it received.

* ``AppendingServer`` appends each chunk as it arrives. On the FIFO network the
  real ecosystems give (FIFO per (sender, receiver)) that works, but only by
  luck of the topology: under reordering it has 6 outcomes, one per order of
  the three chunks; with two proxies it breaks even on FIFO (FIFO per pair of
  entities is not FIFO end to end); a lost chunk shows "hello,!", which no
  reliable run ever shows; a duplicated chunk shows "hello,hello, world!".
* ``StreamServer`` does what TCP does: chunks carry sequence numbers, the
  server keeps the *set* of chunks it has (set union is monotone: order and
  duplicates cannot matter) and shows the contiguous prefix. Every CALM check
  holds: one outcome under every order, loss only ever shows a prefix the
  reliable system also shows, duplicates change nothing.

    python examples/calm_hello_world.py
"""

from __future__ import annotations

import sys

import attrs

from pachyderm_typed import Ecosystem, Entity, Envelope, Outbox, ReplyTo
from pachyderm_typed.simulation import CalmResult, Network, Simulation, check_calm, check_deterministic

WORDS = ("hello,", " world", "!")


@attrs.frozen
class Chunk:
    seq: int
    text: str


@attrs.frozen
class Forward:
    chunk: Chunk
    to: ReplyTo[Chunk]


@attrs.frozen
class Say:
    words: tuple[str, ...]
    via: tuple[ReplyTo[Forward], ...]  # chunk i goes through proxy i % len(via)
    to: ReplyTo[Chunk]


class Client(Entity[str, Say, None]):
    def activate(self, message: Say, state: None) -> tuple[Outbox, None]:
        proxies = message.via
        return [
            proxies[seq % len(proxies)].post(Forward(Chunk(seq, word), message.to))
            for seq, word in enumerate(message.words)
        ], None


class Proxy(Entity[str, Forward, None]):
    def activate(self, message: Forward, state: None) -> tuple[Outbox, None]:
        return [message.to.post(message.chunk)], None


class AppendingServer(Entity[str, Chunk, str]):
    """Not confluent: the text depends on arrival order, and on how many copies arrive."""

    def init(self, entity_id: str) -> str:
        return ""

    def activate(self, message: Chunk, state: str) -> tuple[Outbox, str]:
        return [], state + message.text


@attrs.frozen
class Stream:
    """The chunks received so far; ``text`` is the contiguous prefix, what a reader sees."""

    chunks: frozenset[Chunk] = frozenset()

    @property
    def text(self) -> str:
        by_seq = {chunk.seq: chunk.text for chunk in self.chunks}
        shown: list[str] = []
        while len(shown) in by_seq:
            shown.append(by_seq[len(shown)])
        return "".join(shown)


class StreamServer(Entity[str, Chunk, Stream]):
    """Confluent: set union is monotone, so neither order nor duplicates matter."""

    def init(self, entity_id: str) -> Stream:
        return Stream()

    def activate(self, message: Chunk, state: Stream) -> tuple[Outbox, Stream]:
        return [], Stream(state.chunks | {message})


class Naive(Ecosystem[Client | Proxy | AppendingServer]): ...


class Confluent(Ecosystem[Client | Proxy | StreamServer]): ...


def say(to: ReplyTo[Chunk], proxies: int = 1) -> list[Envelope[Client, None]]:
    via = tuple(Proxy.address(f"proxy-{n}") for n in range(proxies))
    return [Client.post("client", Say(WORDS, via, to))]


def show(result: CalmResult) -> None:
    """The verdict, and the shortest counterexample when there is one."""
    print(f"   {'holds' if result.holds else 'FAILS'}: {result.name}\n     {result.explanation}")
    if result.counterexamples:
        print(result.counterexamples[-1].format("     "))


def main() -> None:
    naive = Simulation(Naive)
    server = AppendingServer.address("server")

    print("1. Appending server, one proxy, FIFO per (sender, receiver), as the real ecosystems deliver:")
    show(check_deterministic(naive, say(server), network=Network.fifo()))

    print("\n2. The same under a reordering network: which orderings break it?")
    found = naive.exhaust(say(server))
    print(f"   {len(found.outcomes)} outcomes: " + ", ".join(repr(o.state(server)) for o in found.outcomes))
    show(check_deterministic(naive, say(server)))

    print("\n3. Two proxies, still FIFO per (sender, receiver): FIFO per pair is not FIFO end to end:")
    found = naive.exhaust(say(server, proxies=2), network=Network.fifo())
    print(f"   {len(found.outcomes)} outcomes: " + ", ".join(repr(o.state(server)) for o in found.outcomes))

    print("\n4. Lost and duplicated chunks, against the FIFO baseline:")
    for result in check_calm(naive, say(server))[1:]:
        show(result)

    confluent = Simulation(Confluent)
    stream = StreamServer.address("server")
    print("\n5. The stream server, two proxies, observing the text a reader sees: every check holds")
    for result in check_calm(confluent, say(stream, proxies=2), observe=lambda w: w.state(stream).text):
        show(result)


if __name__ == "__main__":
    main()
    sys.exit(0)
