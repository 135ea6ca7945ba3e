"""Rock-paper-scissors (janken): a Lobby starts Games between Players.

Exhaustive simulation shows that, whatever order the network delivers the
messages in, every game ends the same way: one outcome. It also shows why the
checker deduplicates worlds: the number of delivery orderings explodes with the
number of games played at once, the number of distinct worlds much less.

The seed's lobby numbered games in arrival order (``len(state) + 1``): with two
games started at once, which pair plays "game 1" depends on which request
arrives first, so there are two outcomes. Naming a game after its players
removes the dependency. ``NumberingLobby`` keeps the seed's behaviour; swap it
in with ``Simulation(Janken, implementations={Lobby: NumberingLobby()})``.

    python examples/janken.py
"""

from __future__ import annotations

import sys
from typing import Literal, Union

import attrs

from pachyderm_typed import Ecosystem, Entity, Envelope, Outbox, ReplyTo
from pachyderm_typed.simulation import Simulation

Hand = Literal["rock", "paper", "scissors"]
BEATS: dict[Hand, Hand] = {"rock": "scissors", "scissors": "paper", "paper": "rock"}
STRATEGY: dict[str, Hand] = {"alice": "paper", "bob": "rock", "carol": "scissors", "dave": "rock"}


@attrs.frozen
class StartGame:
    first: ReplyTo[Invite]
    second: ReplyTo[Invite]


@attrs.frozen
class Invite:
    game: ReplyTo[Move]


@attrs.frozen
class Move:
    player: ReplyTo[WaitingForOpponent]
    hand: Hand


@attrs.frozen
class WaitingForOpponent: ...


@attrs.frozen
class Waiting:
    player: ReplyTo[WaitingForOpponent]
    hand: Hand


@attrs.frozen
class Draw:
    players: frozenset[ReplyTo[WaitingForOpponent]]


@attrs.frozen
class Won:
    winner: ReplyTo[WaitingForOpponent]
    loser: ReplyTo[WaitingForOpponent]


GameState = Union[Waiting, Draw, Won, None]


class Lobby(Entity[str, StartGame, frozenset[str]]):
    """Starts a game named after its players and invites both; its state is the games it started."""

    def init(self, entity_id: str) -> frozenset[str]:
        return frozenset()

    def activate(self, message: StartGame, state: frozenset[str]) -> tuple[Outbox, frozenset[str]]:
        game_id = self.name_game(message, state)
        invite = Invite(Game.address(game_id))
        return [message.first.post(invite), message.second.post(invite)], state | {game_id}

    def name_game(self, message: StartGame, state: frozenset[str]) -> str:
        return f"{message.first.id} v {message.second.id}"


class NumberingLobby(Lobby):
    """The seed's lobby: games numbered in arrival order, so ids depend on delivery order."""

    def name_game(self, message: StartGame, state: frozenset[str]) -> str:
        return f"game {len(state) + 1}"


class Game(Entity[str, Move, GameState]):
    """Waits for the first move, then resolves on the second."""

    def activate(self, message: Move, state: GameState) -> tuple[Outbox, GameState]:
        if state is None:
            return [message.player.post(WaitingForOpponent())], Waiting(message.player, message.hand)
        if isinstance(state, Waiting):
            return [], resolve(state.player, state.hand, message.player, message.hand)
        return [], state  # the game is over: late moves change nothing


def resolve(a: ReplyTo[WaitingForOpponent], hand_a: Hand, b: ReplyTo[WaitingForOpponent], hand_b: Hand) -> GameState:
    # Order-free results (a frozenset, winner/loser) keep the outcome independent of who moved first.
    if hand_a == hand_b:
        return Draw(frozenset({a, b}))
    return Won(a, b) if BEATS[hand_a] == hand_b else Won(b, a)


class Player(Entity[str, Union[Invite, WaitingForOpponent], str]):
    """Plays its fixed hand when invited; its state is its name."""

    def init(self, entity_id: str) -> str:
        return entity_id

    def activate(self, message: Invite | WaitingForOpponent, state: str) -> tuple[Outbox, str]:
        if isinstance(message, Invite):
            return [message.game.post(Move(Player.address(state), STRATEGY[state]))], state
        return [], state


class Janken(Ecosystem[Lobby | Game | Player]): ...


PAIRS = [("alice", "bob"), ("carol", "dave"), ("alice", "carol")]


def games(count: int) -> list[Envelope[Lobby, frozenset[str]]]:
    """``count`` StartGame requests sent to the lobby at once."""
    return [Lobby.post("lobby", StartGame(Player.address(a), Player.address(b))) for a, b in PAIRS[:count]]


def main() -> None:
    sim = Simulation(Janken)
    one = sim.exhaust(games(1))
    print(one.summary())
    (outcome,) = one.outcomes
    print("the only outcome:", outcome.describe())
    print("a shortest ordering that reaches it:")
    print(outcome.trace)
    print()
    print(f"{'games':>5}  {'orderings':>14}  {'distinct worlds':>15}  {'transitions':>11}  outcomes  (numbering lobby)")
    numbering = Simulation(Janken, implementations={Lobby: NumberingLobby()})
    for count in range(1, len(PAIRS) + 1):
        found = sim.exhaust(games(count))
        seed_like = numbering.exhaust(games(count))
        print(
            f"{count:>5}  {found.orderings or 0:>14,}  {found.worlds:>15,}  {found.transitions:>11,}  "
            f"{len(found.outcomes):>8}  ({len(seed_like.outcomes)})"
        )


if __name__ == "__main__":
    main()
    sys.exit(0)
