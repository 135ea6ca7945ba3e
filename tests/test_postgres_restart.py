"""The PostgreSQL server stops and starts during a run: callers get a clear error while it
is down, and nodes (workers, followers) reconnect by themselves when it is back.

Needs the rights to stop the local cluster (root and ``pg_ctlcluster``, as on these
machines); skipped otherwise. The server is always started again, even on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from pachyderm_typed import DatabaseUnavailableError
from pachyderm_typed.ecosystems import Postgres
from tests.entities import App, Counter, Forward, Forwarder, Increment
from tests.helpers_postgres.support import DSN, namespace, requires_postgres

__all__ = ["namespace"]  # the fixture

pytestmark = requires_postgres


def _local_cluster() -> tuple[str, str] | str:
    """(version, name) of the cluster serving the test DSN's port, or why it cannot be controlled."""
    if "127.0.0.1" not in DSN and "localhost" not in DSN:
        return f"the test database {DSN} is not on this machine"
    if os.geteuid() != 0:
        return "stopping the PostgreSQL server needs root"
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "pg_ctlcluster is not installed"
    port = DSN.rsplit(":", 1)[-1].split("/")[0] if DSN.count(":") >= 2 else "5432"
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == port:
            return fields[0], fields[1]
    return f"no local cluster listens on port {port}"


def _ctl(cluster: tuple[str, str], action: str) -> None:
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster[0], cluster[1], action, *(["-m", "fast"] if action == "stop" else [])],
        check=True, capture_output=True, timeout=60,
    )


@pytest.fixture
def cluster() -> Iterator[tuple[str, str]]:
    found = _local_cluster()
    if isinstance(found, str):
        pytest.skip(found)
    yield found
    # Whatever happened, leave the server running for everyone else.
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", found[0], found[1], "start"],
                   capture_output=True, timeout=60, check=False)


def _retry(call: object, timeout: float = 30.0) -> object:
    """Call until the database answers again (bounded)."""
    assert callable(call)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except DatabaseUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_server_restart_gives_clear_errors_then_everything_recovers(
    namespace: str, cluster: tuple[str, str]
) -> None:
    with Postgres(App, DSN, namespace=namespace) as node, \
            Postgres(App, DSN, namespace=namespace, workers=0) as watcher:
        assert node.send_sync(Counter.post("c", Increment())) == 1
        updates = watcher.follow(Counter.address("c"))
        _ctl(cluster, "stop")
        try:
            with pytest.raises(DatabaseUnavailableError, match="PostgreSQL at 127.0.0.1:.*nothing was applied|"
                               "cannot connect to PostgreSQL at 127.0.0.1") as caught:
                node.send_sync(Counter.post("c", Increment()))
            assert caught.value.applied is False
            with pytest.raises(DatabaseUnavailableError):
                node.send(Counter.post("c", Increment()))
            with pytest.raises(DatabaseUnavailableError):
                watcher.state(Counter.address("c"))
        finally:
            _ctl(cluster, "start")
        # Back: callers go on (stale pooled connections are replaced), the worker and the
        # follower's listener reconnect by themselves.
        assert _retry(lambda: node.send_sync(Counter.post("c", Increment()))) == 2
        node.send(Forwarder.post("f", Forward("c", 10)))  # reaches c through node's worker
        assert updates.next(timeout=30) == 2
        assert updates.next(timeout=30) == 12
        assert watcher.state(Counter.address("c")) == 12
        updates.close()
