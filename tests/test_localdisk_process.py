"""LocalDisk across real processes: clean restarts, kill -9, crash loops, locks, the CLI, dbm on 3.13."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pachyderm_typed import AlreadyOpenError
from pachyderm_typed.ecosystems import LocalDisk
from tests.entities import App, Counter, Increment
from tests.helpers_localdisk.workload import Fan, Log, Relay, Work

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers_localdisk.child", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def expect_line(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    if got != line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child printed {got!r} instead of {line!r}; stderr:\n{err}")


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_state_survives_a_clean_restart_in_a_new_process(tmp_path: Path) -> None:
    path = tmp_path / "counter.db"
    script = ROOT / "examples" / "counter_disk.py"
    outputs = [
        subprocess.run([sys.executable, str(script), str(path)], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    assert "my_counter is at 1" in outputs[0]
    assert "my_counter is at 2" in outputs[1]
    # The script ran as __main__; importing the same module finds the same records.
    from examples.counter_disk import App as ExampleApp
    from examples.counter_disk import Counter as ExampleCounter

    with LocalDisk(ExampleApp, path) as world:
        assert world.state(ExampleCounter.address("my_counter")) == 2


def test_state_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    proc = start("count", str(path), "37")
    expect_line(proc, "done")
    kill9(proc)
    assert (tmp_path / "k.db-wal").exists()  # no clean close happened
    with LocalDisk(App, path) as world:
        assert world.state(Counter.address("c")) == 37
        assert world.send_sync(Counter.post("c", Increment())) == 38


def test_pending_messages_survive_a_crash_and_arrive_in_order(tmp_path: Path) -> None:
    path = tmp_path / "burst.db"
    proc = start("burst", str(path), "3000")
    expect_line(proc, "sent")
    proc.communicate()  # the child exits without closing: whatever was pending stays pending
    with LocalDisk(Work, path) as world:
        assert world.state(Fan.address("f")) == 1
        wait_for(lambda: len(world.state(Log.address("burst"))) >= 3000, "the pending burst")
        assert world.state(Log.address("burst")) == tuple(range(3000))


def _acks(path: Path) -> dict[str, list[int]]:
    acked: dict[str, list[int]] = {"S": [], "A": [], "R": []}
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n"):  # a line cut by the kill is not an ack
                tag, number = line.split()
                acked[tag].append(int(number))
    return acked


def _check_exactly_once(world: LocalDisk[Any], acked: dict[str, list[int]]) -> None:
    relay = Relay.address("r")
    wait_for(
        lambda: len(world.state(Log.address("relayed-a"))) == world.state(relay)
        and len(world.state(Log.address("relayed-b"))) == world.state(relay),
        "forwarded messages to arrive after reopening",
    )
    for log, tag in (("sync", "S"), ("async", "A"), ("relayed-a", "R"), ("relayed-b", "R")):
        entries = world.state(Log.address(log))
        assert len(set(entries)) == len(entries), f"{log}: a message was applied twice"
        assert list(entries) == sorted(entries), f"{log}: FIFO order broken"
        missing = set(acked[tag]) - set(entries)
        assert not missing, f"{log}: acknowledged messages lost: {sorted(missing)[:10]}"


def test_crash_loop_kill_9_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    acks = tmp_path / "acks.txt"
    seed = int(os.environ.get("PACHYDERM_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    kills = 0
    for round_no in range(1, 13):
        proc = start("load", str(path), str(round_no), str(acks))
        expect_line(proc, "ready")
        time.sleep(rng.uniform(0.0, 0.3))
        kill9(proc)
        kills += 1
        with LocalDisk(Work, path) as world:
            _check_exactly_once(world, _acks(acks))
    acked = _acks(acks)
    assert kills >= 10
    assert all(acked.values()), f"some sender never got an ack (seed {seed}): {[len(v) for v in acked.values()]}"


def test_a_forked_child_cannot_use_or_harm_the_file_its_parent_has_open(tmp_path: Path) -> None:
    """A child forked while a LocalDisk is open gets clear errors and, exiting normally,
    leaves the parent's file alone: SQLite closing the inherited connection would delete
    the write-ahead log under the parent, and a crash would then lose its later commits."""
    path = tmp_path / "forked.db"
    proc = start("fork", str(path), "20")
    assert proc.stdout is not None
    lines = []
    watchdog = threading.Timer(3 * WAIT, proc.kill)
    watchdog.start()
    try:
        while not (lines and lines[-1].startswith("acked")):
            line = proc.stdout.readline()
            if not line:
                proc.kill()
                pytest.fail(f"the forking process ended early: {lines}\n{proc.communicate()[1]}")
            lines.append(line.strip())
    finally:
        watchdog.cancel()
    child = {line.split(":")[0]: line for line in lines if line.startswith("child ")}
    for name in ("send_sync", "state", "dead_letters", "asend_sync", "memory"):
        assert "ClosedError" in child[f"child {name}"], child
        assert f"belongs to process {proc.pid}, and this process" in child[f"child {name}"]
    assert f"AlreadyOpenError: {path} is already open by process {proc.pid}" in child["child reopen"]
    assert child["child fresh InMemory"] == "child fresh InMemory: 1"  # a world opened after forking works
    assert lines.count("child exit 0") == 2
    assert "child dropped the world" in lines
    assert lines[-1] == "acked 40"
    kill9(proc)
    with LocalDisk(App, path) as world:
        assert world.state(Counter.address("c")) == 40


def test_a_forked_child_cannot_reopen_the_file_it_inherited_open(tmp_path: Path) -> None:
    path = tmp_path / "inherited.db"
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers_localdisk.child", "fork-reopen", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"child: StorageError: cannot open {path} in this process: it is a fork of a process that had "
        "the file open when it forked. Open it in a process that did not inherit it open, such as one "
        "started with multiprocessing's 'spawn' or 'forkserver' method",
        "child exit 0",
        "counter 3",
    ]


def test_ctrl_c_in_the_main_thread_loses_strands_and_doubles_nothing(tmp_path: Path) -> None:
    """SIGINT raises KeyboardInterrupt in the main thread wherever it is. Other callers'
    work must not suffer: no caller left waiting forever, no commit that landed reported
    as refused ("nothing was changed"), nothing applied twice, nothing acknowledged lost."""
    path, out = tmp_path / "interrupted.db", tmp_path / "outcomes.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers_localdisk.child", "interrupted", str(path), "2", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90,  # a stranded caller hangs the child
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["interrupts"] > 100  # the signals landed while calls were under way
    with LocalDisk(Work, path) as world:
        for log, outcomes in report["outcomes"].items():
            entries = world.state(Log.address(log))
            assert len(set(entries)) == len(entries), f"{log}: a call was applied twice"
            applied = set(entries)
            for n, outcome in outcomes.items():
                if outcome == "acknowledged":
                    assert int(n) in applied, f"{log}: acknowledged call {n} lost"
                elif outcome == "refused":
                    assert int(n) not in applied, f"{log}: call {n} refused as 'nothing was changed' but applied"
            assert applied <= {int(n) for n in outcomes}


def test_a_sigterm_handler_that_closes_the_world_mid_read_does_not_deadlock(tmp_path: Path) -> None:
    """The handler runs in the main thread, which may be inside state() holding the engine's
    locks: close() must not wait for them there. The process exits and the file is closed."""
    path = tmp_path / "term.db"
    proc = start("sigterm", str(path))
    expect_line(proc, "ready")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=WAIT) == 0
    finally:
        proc.kill()
        proc.communicate()
    assert not Path(f"{path}-wal").exists()  # closed cleanly: SQLite folded the log into the file
    with LocalDisk(App, path) as world:
        assert world.state(Counter.address("c")) == 1


def test_a_signal_handler_that_calls_in_mid_read_gets_an_error_not_a_hang(tmp_path: Path) -> None:
    """A handler's send_sync that lands inside a state() read (which holds the engine's locks)
    would wait for that read forever: it is refused with ReentrantCallError instead. Landing
    anywhere else, it is answered. The file then holds exactly the answered increments."""
    path = tmp_path / "handler.db"
    proc = start("handler", str(path), "2")
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    answered, refused = report["answered"], report["refused"]
    assert refused > 0, "no handler landed inside a read: the test did not test anything"
    # Each answered once. Handlers nest (a signal can land in a handler waiting for its
    # call), so the inner one may record its later state first.
    assert sorted(answered) == list(range(2, 2 + len(answered)))
    assert report["final"] == 1 + len(answered)
    with LocalDisk(App, path) as world:
        assert world.state(Counter.address("c")) == 1 + len(answered)


def test_a_second_process_gets_a_clear_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    proc = start("hold", str(path))
    try:
        expect_line(proc, "open")
        with pytest.raises(AlreadyOpenError, match=rf"{path}.*already open by process {proc.pid}"):
            LocalDisk(Work, path)
    finally:
        kill9(proc)
    with LocalDisk(Work, path) as world:  # the kernel dropped the dead holder's lock
        assert world.state(Relay.address("r")) == 0
    # And the other way round: this process holds it, a child cannot open it.
    with LocalDisk(Work, path):
        child = start("hold", str(path))
        _, err = child.communicate(timeout=WAIT)
        assert child.returncode != 0
        assert "AlreadyOpenError" in err and str(path) in err and "in this process" not in err


def _find_python_313() -> str | None:
    candidates = [shutil.which(f"python3.{minor}") for minor in range(13, 20)]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv_root.is_dir():
        candidates += [str(p / "bin" / "python3") for p in sorted(pyenv_root.iterdir(), reverse=True)]
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, dbm.sqlite3; print(sys.version_info >= (3, 13))"],
            capture_output=True, text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def test_the_file_is_a_dbm_file_python_313_can_read(tmp_path: Path) -> None:
    python = _find_python_313()
    if python is None:
        pytest.skip("no Python 3.13+ interpreter with dbm.sqlite3 found (pyenv or PATH)")
    path = tmp_path / "dbm.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Counter.post("seen by dbm", Increment(by=5)))
    script = (
        "import dbm, json, sys\n"
        "with dbm.open(sys.argv[1], 'r') as db:\n"
        "    print(dbm.whichdb(sys.argv[1]))\n"
        "    print(json.loads(db[b'state:Counter\\x00\"seen by dbm\"'])['s'])\n"
        "    print(json.loads(db['meta:format'])['format'])\n"
    )
    result = subprocess.run([python, "-c", script, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["dbm.sqlite3", "5", "pachyderm-typed/localdisk"]


# -- the inspect CLI ---------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pachyderm_typed", *args], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )


def test_cli_lists_kinds_and_counts_and_prints_an_entity(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    with LocalDisk(App, path) as world:
        for name in ("a", "b", "c"):
            world.send_sync(Counter.post(name, Increment(by=len(name) + 1)))
        from tests.entities import Picky, Work as PickyWork

        world.send(Picky.post("p", PickyWork(1)))  # fails: a dead letter
    summary = cli("inspect", str(path))
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert any(line.split() == ["Counter", "3"] for line in lines)
    assert "pending messages: 0" in lines
    assert "dead letters: 1" in lines
    entity = cli("inspect", str(path), "Counter", "b")
    assert entity.returncode == 0, entity.stderr
    assert json.loads(entity.stdout) == 2


def test_cli_errors_are_clear_and_exit_non_zero(tmp_path: Path) -> None:
    missing = cli("inspect", str(tmp_path / "nope.db"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 10)
    corrupt = cli("inspect", str(garbage))
    assert corrupt.returncode == 1 and "not an SQLite database" in corrupt.stderr
    assert garbage.read_bytes() == b"this is not a database at all" * 10
    path = tmp_path / "locked.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Counter.post("x", Increment()))
        locked = cli("inspect", str(path))
        assert locked.returncode == 1 and "already open by process" in locked.stderr and str(path) in locked.stderr
    unknown = cli("inspect", str(path), "Nobody", "x")
    assert unknown.returncode == 1 and "no stored entity of kind 'Nobody'" in unknown.stderr
    usage = cli("inspect")
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_cli_reads_a_file_left_by_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    proc = start("count", str(path), "5")
    expect_line(proc, "done")
    kill9(proc)
    before = path.read_bytes()
    entity = cli("inspect", str(path), "Counter", "c")
    assert entity.returncode == 0, entity.stderr
    assert json.loads(entity.stdout) == 5
    assert path.read_bytes() == before  # read-only: the WAL is left for the next opener to replay


def test_cli_hands_a_postgres_dsn_to_the_postgres_ecosystem_or_says_it_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from pachyderm_typed import cli as cli_module

    assert cli_module.is_postgres_dsn("postgresql://u@h/db")
    assert cli_module.is_postgres_dsn("host=localhost dbname=app")
    assert not cli_module.is_postgres_dsn("app.db")
    # A None entry makes the import fail exactly as a missing module or driver would.
    monkeypatch.setitem(sys.modules, "pachyderm_typed.ecosystems._postgres", None)
    out, err = io.StringIO(), io.StringIO()
    assert cli_module.main(["inspect", "postgresql://u@h/db"], out, err) == 1
    assert "postgres support not installed" in err.getvalue()
