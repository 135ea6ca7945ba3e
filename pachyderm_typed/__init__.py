"""pachyderm-typed: immortal, statically typed entities. An elephant never forgets.

The simplest working thing::

    class Counter(Entity[str, Increment, int]):
        def init(self, entity_id: str) -> int:
            return 0

        def activate(self, message: Increment, state: int) -> tuple[Outbox, int]:
            return [], state + message.by

    class App(Ecosystem[Counter]): ...

    with LocalDisk(App, "app.db") as world:
        world.send_sync(Counter.post("c", Increment()))
"""

from __future__ import annotations

import logging

from pachyderm_typed._address import Address, Envelope, Outbox, ReplyTo
from pachyderm_typed._ecosystem import Ecosystem
from pachyderm_typed._entity import Entity
from pachyderm_typed._subscription import Subscription
from pachyderm_typed._world import DeadLetter, World
from pachyderm_typed.errors import (
    ActivationError,
    AlreadyOpenError,
    ClosedError,
    CodecError,
    DatabaseUnavailableError,
    DeclarationError,
    MessageTypeError,
    PachydermError,
    ReentrantCallError,
    SendInsideActivationError,
    StorageError,
    UndeclaredEntityError,
    UpgradeError,
)

# The library never configures logging; applications decide where records go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ActivationError",
    "Address",
    "AlreadyOpenError",
    "ClosedError",
    "CodecError",
    "DatabaseUnavailableError",
    "DeadLetter",
    "DeclarationError",
    "Ecosystem",
    "Entity",
    "Envelope",
    "MessageTypeError",
    "Outbox",
    "PachydermError",
    "ReentrantCallError",
    "ReplyTo",
    "SendInsideActivationError",
    "StorageError",
    "Subscription",
    "UndeclaredEntityError",
    "UpgradeError",
    "World",
]
