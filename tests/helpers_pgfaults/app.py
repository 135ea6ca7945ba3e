"""Versioned entities for the upgrade fault test: v1 and v2 code of the same kinds.

``Wallet`` stored by v1 code is ``{"balance": units}``; v2 stores ``{"cents": ...}`` at
``state_version`` 2 and upgrades v1 records as it activates them. ``Payroll`` fans out one
``Pay`` to each of ``wallets`` wallets, so pending work can be left in the database.
"""

from __future__ import annotations

import attrs

from pachyderm_typed import Ecosystem, Entity, Outbox


@attrs.frozen
class Pay:
    amount: int  # units (a unit is 100 cents)


@attrs.frozen
class PayAll:
    wallets: int
    amount: int


@attrs.frozen
class WalletV1:
    balance: int


@attrs.frozen
class WalletV2:
    cents: int


class Wallet1(Entity[str, Pay, WalletV1]):
    kind = "Wallet"

    def init(self, entity_id: str) -> WalletV1:
        return WalletV1(0)

    def activate(self, message: Pay, state: WalletV1) -> tuple[Outbox, WalletV1]:
        return [], WalletV1(state.balance + message.amount)


class Wallet2(Entity[str, Pay, WalletV2]):
    kind = "Wallet"
    state_version = 2
    upgrades = {1: lambda data: {"cents": data["balance"] * 100}}

    def init(self, entity_id: str) -> WalletV2:
        return WalletV2(0)

    def activate(self, message: Pay, state: WalletV2) -> tuple[Outbox, WalletV2]:
        return [], WalletV2(state.cents + 100 * message.amount)


class Payroll1(Entity[str, PayAll, int]):
    kind = "Payroll"

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: PayAll, state: int) -> tuple[Outbox, int]:
        return [Wallet1.post(f"w{i}", Pay(message.amount)) for i in range(message.wallets)], state + 1


class Payroll2(Entity[str, PayAll, int]):
    kind = "Payroll"

    def init(self, entity_id: str) -> int:
        return 0

    def activate(self, message: PayAll, state: int) -> tuple[Outbox, int]:
        return [Wallet2.post(f"w{i}", Pay(message.amount)) for i in range(message.wallets)], state + 1


class WalletApp1(Ecosystem[Wallet1 | Payroll1]): ...


class WalletApp2(Ecosystem[Wallet2 | Payroll2]): ...
