"""Three node processes run one ecosystem: they share the work, and a follower on another
node (this test process, which runs no workers) sees every state they commit, in order."""

from __future__ import annotations

from pachyderm_typed.ecosystems import Postgres
from tests.helpers_postgres.app import Log, NodesApp, Spawner, Spread, Tally, Worker
from tests.helpers_postgres.support import DSN, Node, namespace, requires_postgres

__all__ = ["namespace"]  # the fixture

pytestmark = requires_postgres

JOBS = 150
RECORDS = 100


def test_three_nodes_share_work_and_a_follower_elsewhere_sees_every_state(namespace: str) -> None:
    with Postgres(NodesApp, DSN, namespace=namespace, workers=0) as here:
        # Small batches and slow jobs, so that one node cannot take everything at once.
        nodes = [Node(namespace, f"n{i}", "--workers", "1", "--batch-entities", "4") for i in range(3)]
        try:
            for node in nodes:
                node.wait_for("ready")
            with here.follow(Tally.address("tally")) as tally, here.follow(Log.address("log")) as log:
                assert tally.state == 0 and log.state == ()
                here.send(Spawner.post("spawner", Spread(workers=JOBS, records=RECORDS, slow_ms=3)))
                # Every state exactly once and in commit order, whichever node committed it.
                assert [tally.next(timeout=30) for _ in range(JOBS)] == list(range(1, JOBS + 1))
                logged = [log.next(timeout=30) for _ in range(RECORDS)]
                assert [len(state) for state in logged] == list(range(1, RECORDS + 1))
                assert logged[-1] == tuple(range(RECORDS))  # FIFO from the spawner, across nodes
            shares = [node.close() for node in nodes]
        finally:
            for node in nodes:
                node.kill_if_running()
        assert here.processed == 1  # only the spawner's message: the nodes did the rest
        assert sum(shares) == JOBS * 2 + RECORDS
        assert all(share > 0 for share in shares), f"work was not shared: {shares}"
        assert all(here.state(Worker.address(f"w{i}")) == 1 for i in range(JOBS))


def test_a_forked_child_cannot_use_the_node_its_parent_opened(namespace: str) -> None:
    """The child shares the parent's connections: using them from two processes would mix
    their conversations with the server. The child gets a clear error; the parent carries on."""
    import subprocess
    import sys

    from tests.entities import App, Counter
    from tests.helpers_postgres.support import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers_postgres.fork", DSN, namespace, "7"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    for name in ("send_sync", "state"):
        line = next(line for line in lines if line.startswith(f"child {name}:"))
        assert "ClosedError" in line and "is a fork of it" in line, line
    assert "child exit 0" in lines
    assert lines[-1] == "acked 14"
    with Postgres(App, DSN, namespace=namespace, workers=0) as world:
        assert world.state(Counter.address("c")) == 14  # the child's attempt changed nothing


def test_a_signal_handler_calling_for_the_entity_it_interrupted_gets_an_error_not_a_hang(namespace: str) -> None:
    """The main thread's call holds its entity's lock until the handler returns: the handler's
    call for that entity would wait forever, so it is refused; calls for others are served,
    unless the handler landed while the call ran its batch (entity code), where every call is
    refused as SendInsideActivationError."""
    import json
    import subprocess
    import sys

    from tests.entities import App, Counter
    from tests.helpers_postgres.support import ROOT

    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers_postgres.handler", DSN, namespace, "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    answered, refused, final = report["answered"], report["refused"], report["final"]
    assert refused["c"] > 0, "no handler landed inside a call: the test did not test anything"
    assert refused["d"] == 0 and answered["d"], "a call for another entity was refused"
    assert sorted(answered["d"]) == list(range(1, len(answered["d"]) + 1))
    assert final == {"c": report["calls"] + len(answered["c"]), "d": len(answered["d"])}
    with Postgres(App, DSN, namespace=namespace, workers=0) as world:
        assert world.state(Counter.address("c")) == final["c"]
