"""The compact world representation and the memoised transition function.

Searching millions of worlds in Python is only affordable if a world is a few
small integers. So every value is interned once:

* each entity address gets a *slot* (0, 1, 2, ... in order of discovery);
* each distinct state of the entity in slot ``s`` gets a *state id*; id 0 is
  always ``init(id)``;
* each distinct ``(address, message)`` gets a *message id*.

A world is then ``(states, flight)``:

``states``
    a tuple of state ids indexed by slot. Slots past its end are at id 0
    (initial state) and it never ends with a 0, so equal worlds are equal tuples.
``flight``
    unordered networks: the multiset of messages in flight as a sorted tuple
    of *entries* (``message id << 3 | duplicates left``);
    ordered networks: a sorted tuple of channel queues ``(channel id, entry, ...)``,
    oldest entry first.

``activate`` is pure, so ``transition(mid, sid)`` runs the kernel once per
distinct (message, state) pair and then answers from a memo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

from pachyderm_typed._address import Address, Envelope, make_envelope
from pachyderm_typed._ecosystem import Declaration, EntitySpec
from pachyderm_typed._kernel import Kernel
from pachyderm_typed.errors import ActivationError
from pachyderm_typed.simulation._errors import UnhashableError
from pachyderm_typed.simulation._network import Network

States = tuple[int, ...]
Flight = tuple[Any, ...]  # sorted entries (int), or sorted queues (tuple[int, ...]) when ordered
WorldKey = tuple[States, Flight]
Transition = tuple[int, tuple[int, ...], Union[ActivationError, None]]  # (new sid, sent entries, error)
History = Callable[[Address[Any, Any, Any]], Sequence[object]]

DELIVER, DUPLICATE, DROP = 0, 1, 2
Action = tuple[int, int]  # (kind, entry)
OUTSIDE = -1  # sender slot of the envelopes given by the caller


def no_history(address: Address[Any, Any, Any]) -> Sequence[object]:
    return ()


def with_state(states: States, slot: int, sid: int) -> States:
    """``states`` with ``slot`` set to ``sid``, kept canonical (no trailing initial states)."""
    n = len(states)
    if slot < n - 1:
        return states[:slot] + (sid,) + states[slot + 1:]
    if slot == n - 1:
        if sid:
            return states[:slot] + (sid,)
        states = states[:slot]
        while states and not states[-1]:
            states = states[:-1]
        return states
    if not sid:
        return states
    return states + (0,) * (slot - n) + (sid,)


class Model:
    """Interning tables and memo for one declaration; shared by every search of one Simulation."""

    # One per Simulation, but its lists are read in the hot loop: slots keep attribute access fast.
    __slots__ = (
        "declaration", "kernel", "slot_of", "addresses", "specs", "state_ids", "state_values",
        "message_ids", "messages", "message_slot", "memo", "channels",
    )

    def __init__(self, declaration: Declaration, kernel: Kernel) -> None:
        self.declaration = declaration
        self.kernel = kernel
        self.slot_of: dict[Address[Any, Any, Any], int] = {}
        self.addresses: list[Address[Any, Any, Any]] = []
        self.specs: list[EntitySpec] = []
        self.state_ids: list[dict[object, int]] = []
        self.state_values: list[list[object]] = []
        self.message_ids: dict[tuple[Address[Any, Any, Any], object], int] = {}
        self.messages: list[tuple[Address[Any, Any, Any], object]] = []
        self.message_slot: list[int] = []
        self.memo: list[dict[int, Transition]] = []  # by message id: {state id: transition}
        self.channels: dict[tuple[int, int], int] = {}

    # -- interning --------------------------------------------------------------------

    def slot(self, address: Address[Any, Any, Any]) -> int:
        slot = self.slot_of.get(address)
        if slot is None:
            spec = self.declaration.spec_for(address.entity)
            initial = self.kernel.initial_state(spec, address)
            _check_hashable(initial, f"{address!r} has initial state")
            slot = len(self.addresses)
            self.slot_of[address] = slot
            self.addresses.append(address)
            self.specs.append(spec)
            self.state_ids.append({initial: 0})
            self.state_values.append([initial])
        return slot

    def state_id(self, slot: int, value: object) -> int:
        ids = self.state_ids[slot]
        try:
            sid = ids.get(value)
        except TypeError:
            _check_hashable(value, f"{self.addresses[slot]!r} has state")
            raise
        if sid is None:
            values = self.state_values[slot]
            sid = len(values)
            ids[value] = sid
            values.append(value)
        return sid

    def message_id(self, address: Address[Any, Any, Any], message: object) -> int:
        key = (address, message)
        try:
            mid = self.message_ids.get(key)
        except TypeError:
            _check_hashable(message, f"a message to {address!r} is")
            raise
        if mid is None:
            slot = self.slot(address)
            mid = len(self.messages)
            self.message_ids[key] = mid
            self.messages.append(key)
            self.message_slot.append(slot)
            self.memo.append({})
        return mid

    def channel(self, sender: int, receiver: int) -> int:
        key = (sender, receiver)
        cid = self.channels.get(key)
        if cid is None:
            cid = self.channels[key] = len(self.channels)
        return cid

    # -- transitions ------------------------------------------------------------------

    def transition(self, mid: int, sid: int, history: History = no_history) -> Transition:
        """Deliver message ``mid`` to its entity in state ``sid`` (memoised).

        A failed activation keeps the state and sends nothing, as in the real
        ecosystems; the error is the third element.
        """
        done = self.memo[mid].get(sid)
        if done is not None:
            return done
        address, message = self.messages[mid]
        slot = self.message_slot[mid]
        result: Transition
        try:
            outbox, new_state = self.kernel.activate(
                self.specs[slot], address, message, self.state_values[slot][sid], history
            )
        except ActivationError as error:
            result = (sid, (), error)
        else:
            sent = tuple(self.message_id(env.address, env.message) << 3 for env in outbox)
            result = (self.state_id(slot, new_state), sent, None)
        self.memo[mid][sid] = result
        return result

    def start(
        self, states: Mapping[Address[Any, Any, Any], object], envelopes: Sequence[Envelope[Any, Any]], network: Network
    ) -> WorldKey:
        """The world with ``states`` and ``envelopes`` in flight (sent by the outside, in order)."""
        encoded: States = ()
        for address, value in states.items():
            slot = self.slot(address)
            encoded = with_state(encoded, slot, self.state_id(slot, value))
        budget = network.duplicates
        entries = [self.message_id(env.address, env.message) << 3 | budget for env in envelopes]
        if not network.ordered:
            return encoded, tuple(sorted(entries))
        queues: dict[int, list[int]] = {}
        for entry in entries:
            queues.setdefault(self.channel(OUTSIDE, self.message_slot[entry >> 3]), []).append(entry)
        return encoded, _freeze(queues)

    def successors(self, world: WorldKey, network: Network, history: History = no_history) -> list[tuple[Action, WorldKey]]:
        """Every ``(action, next world)`` the network allows from ``world``, in a fixed order."""
        if network.ordered:
            return self._ordered_successors(world, network, history)
        states, flight = world
        budget = network.duplicates
        found: list[tuple[Action, WorldKey]] = []
        previous = -1
        for i, entry in enumerate(flight):
            if entry == previous:  # identical messages: identical successors
                continue
            previous = entry
            new_states, sent = self._deliver(states, entry, history)
            if budget:
                sent = tuple(e | budget for e in sent)
            rest = flight[:i] + flight[i + 1:]
            found.append(((DELIVER, entry), (new_states, tuple(sorted(rest + sent)))))
            if entry & 7:
                found.append(((DUPLICATE, entry), (new_states, tuple(sorted(rest + sent + (entry - 1,))))))
            if network.drops:
                found.append(((DROP, entry), (states, rest)))
        return found

    def _deliver(self, states: States, entry: int, history: History) -> tuple[States, tuple[int, ...]]:
        mid = entry >> 3
        slot = self.message_slot[mid]
        sid = states[slot] if slot < len(states) else 0
        new_sid, sent, _ = self.transition(mid, sid, history)
        return (states if new_sid == sid else with_state(states, slot, new_sid)), sent

    def _ordered_successors(
        self, world: WorldKey, network: Network, history: History
    ) -> list[tuple[Action, WorldKey]]:
        states, queues = world
        budget = network.duplicates
        found: list[tuple[Action, WorldKey]] = []
        for qi, queue in enumerate(queues):
            entry = queue[1]
            receiver = self.message_slot[entry >> 3]
            new_states, sent = self._deliver(states, entry, history)
            kinds = [(DELIVER, queue[2:])]
            if entry & 7:  # the copy stays at the head of its channel
                kinds.append((DUPLICATE, (entry - 1,) + queue[2:]))
            for kind, remaining in kinds:
                edited = {q[0]: list(q[1:]) for q in queues}
                edited[queue[0]] = list(remaining)
                for out in sent:
                    cid = self.channel(receiver, self.message_slot[out >> 3])
                    edited.setdefault(cid, []).append(out | budget)
                found.append(((kind, entry), (new_states, _freeze(edited))))
            if network.drops:
                previous = -1
                for position in range(1, len(queue)):
                    dropped = queue[position]
                    if dropped == previous:
                        continue
                    previous = dropped
                    shorter = queue[:position] + queue[position + 1:]
                    rest = queues[:qi] + ((shorter,) if len(shorter) > 1 else ()) + queues[qi + 1:]
                    found.append(((DROP, dropped), (states, rest)))
        return found

    # -- decoding ---------------------------------------------------------------------

    def state_of(self, states: States, address: Address[Any, Any, Any]) -> Any:
        slot = self.slot(address)
        return self.state_values[slot][states[slot] if slot < len(states) else 0]

    def decode_states(self, states: States) -> dict[Address[Any, Any, Any], object]:
        """The entities whose state is not their initial state."""
        values = self.state_values
        addresses = self.addresses
        return {addresses[slot]: values[slot][sid] for slot, sid in enumerate(states) if sid}

    def entries(self, flight: Flight, ordered: bool) -> list[int]:
        if not ordered:
            return list(flight)
        return [entry for queue in flight for entry in queue[1:]]

    def envelope(self, entry: int) -> Envelope[Any, Any]:
        address, message = self.messages[entry >> 3]
        return make_envelope(address, message)

    def decode_flight(self, flight: Flight, ordered: bool) -> tuple[Envelope[Any, Any], ...]:
        return tuple(self.envelope(entry) for entry in self.entries(flight, ordered))


def _freeze(queues: Mapping[int, Iterable[int]]) -> Flight:
    return tuple(sorted((cid, *entries) for cid, entries in queues.items() if entries))


def _check_hashable(value: object, what: str) -> None:
    try:
        hash(value)
    except TypeError:
        raise UnhashableError(
            f"{what} {value!r} of type {type(value).__qualname__}, which is not hashable: the checker "
            "recognises worlds it has seen by hashing states and messages. Use immutable values "
            "(tuples, frozensets, @attrs.frozen classes) for states and messages."
        ) from None
