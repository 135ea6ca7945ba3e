"""Bank transfers between accounts: money is never created or lost, even across restarts.

A Transfer entity withdraws from the source account, then deposits into the target.
Accounts refuse overdrafts, and both steps carry the transfer's id, so an account
applies each step at most once even if a message were ever delivered twice.

Run: python examples/bank_transfer.py [PATH]   (LocalDisk at PATH; in memory without one)
"""

from __future__ import annotations

import sys

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox, ReplyTo, World


@attrs.frozen
class Open:
    balance: int


@attrs.frozen
class Withdraw:
    transfer: str
    amount: int
    reply_to: ReplyTo[Withdrawn | Refused]


@attrs.frozen
class Deposit:
    transfer: str
    amount: int
    reply_to: ReplyTo[Deposited]


@attrs.frozen
class Account:
    opened: bool = False
    balance: int = 0
    applied: frozenset[str] = frozenset()


class Bank(Entity[str, Open | Withdraw | Deposit, Account]):
    def init(self, entity_id: str) -> Account:
        return Account()

    def activate(self, message: Open | Withdraw | Deposit, state: Account) -> tuple[Outbox, Account]:
        match message:
            case Open(balance=balance):
                if state.opened:
                    return [], state  # opening twice changes nothing
                return [], attrs.evolve(state, opened=True, balance=balance)
            case Withdraw(transfer=transfer, amount=amount, reply_to=reply_to):
                if transfer in state.applied:
                    return [reply_to.post(Withdrawn())], state
                if amount > state.balance:
                    return [reply_to.post(Refused(f"balance {state.balance} < {amount}"))], state
                applied = state.applied | {transfer}
                return [reply_to.post(Withdrawn())], attrs.evolve(state, balance=state.balance - amount, applied=applied)
            case Deposit(transfer=transfer, amount=amount, reply_to=reply_to):
                if transfer in state.applied:
                    return [reply_to.post(Deposited())], state
                applied = state.applied | {transfer}
                return [reply_to.post(Deposited())], attrs.evolve(state, balance=state.balance + amount, applied=applied)


@attrs.frozen
class Start:
    source: str
    target: str
    amount: int


@attrs.frozen
class Withdrawn: ...


@attrs.frozen
class Refused:
    reason: str


@attrs.frozen
class Deposited: ...


@attrs.frozen
class TransferState:
    status: str = "new"  # new -> withdrawing -> depositing -> done, or refused
    plan: Start | None = None


class Transfer(Entity[str, Start | Withdrawn | Refused | Deposited, TransferState]):
    def init(self, entity_id: str) -> TransferState:
        return TransferState()

    def activate(
        self, message: Start | Withdrawn | Refused | Deposited, state: TransferState
    ) -> tuple[Outbox, TransferState]:
        match message:
            case Start() if state.status == "new":
                me = Transfer.address(self._id(message))
                withdraw = Withdraw(self._id(message), message.amount, reply_to=me)
                return [Bank.post(message.source, withdraw)], TransferState("withdrawing", message)
            case Withdrawn() if state.status == "withdrawing" and state.plan is not None:
                plan = state.plan
                deposit = Deposit(self._id(plan), plan.amount, reply_to=Transfer.address(self._id(plan)))
                return [Bank.post(plan.target, deposit)], attrs.evolve(state, status="depositing")
            case Deposited() if state.status == "depositing":
                return [], attrs.evolve(state, status="done")
            case Refused(reason=reason) if state.status == "withdrawing":
                return [], attrs.evolve(state, status=f"refused: {reason}")
            case _:
                return [], state  # a repeated message: already handled

    @staticmethod
    def _id(plan: Start) -> str:
        return f"{plan.source}->{plan.target}:{plan.amount}"


class BankApp(Ecosystem[Bank | Transfer]): ...


def open_world(argv: list[str]) -> World[Bank | Transfer]:
    if len(argv) > 1:
        from pachyderm_typed.ecosystems import LocalDisk

        return LocalDisk(BankApp, argv[1])
    from pachyderm_typed.ecosystems import InMemory

    return InMemory(BankApp)


def main() -> None:
    with open_world(sys.argv) as world:
        for name in ("ann", "bob", "cy"):
            world.send_sync(Bank.post(name, Open(100)))
        plans = [Start("ann", "bob", 30), Start("bob", "cy", 120), Start("cy", "ann", 50), Start("ann", "cy", 80)]
        followers = [world.follow(Transfer.address(Transfer._id(plan))) for plan in plans]
        for plan in plans:
            world.send(Transfer.post(Transfer._id(plan), plan))
        for plan, follower in zip(plans, followers):
            state = follower.state
            while state.status in ("new", "withdrawing", "depositing"):
                state = follower.next(timeout=10)
            print(f"{Transfer._id(plan):<16} {state.status}")
            follower.close()
        balances = {name: world.state(Bank.address(name)).balance for name in ("ann", "bob", "cy")}
        print("balances:", balances, "total:", sum(balances.values()))


if __name__ == "__main__":
    main()
