"""LocalDisk fault matrix: real child processes, real SIGKILL, real files, a real full disk.

Each row runs a child process (tests/helpers_faults/child.py, or the LocalDisk process
helpers where they fit), kills it with SIGKILL at the moment the row is about, then
reopens the file in this process and checks that every acknowledged call is there,
nothing was applied twice, and every forwarded message arrives exactly once.

Random choices come from one seed, printed; replay with PACHYDERM_FAULT_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from pachyderm_typed import ActivationError, UpgradeError
from pachyderm_typed._dbmfile import PENDING, DbmFile, state_key
from pachyderm_typed.ecosystems import LocalDisk
from tests.helpers_faults.workload import (
    HUBS,
    SINKS,
    V1,
    V2,
    Blob,
    Bump,
    Count,
    Faults,
    Hub,
    Put,
    Seed,
    Seeder,
    Sink,
    Tally,
    VersionedV1,
    VersionedV2,
)
from tests.helpers_localdisk.workload import Log, Work
from tests.test_localdisk import raw_rows

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0
REFUSALS = int(os.environ.get("PACHYDERM_FAULT_REFUSALS", 64))


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("PACHYDERM_FAULT_SEED", random.randrange(1 << 30)))
    print(f"PACHYDERM_FAULT_SEED={seed}")  # shown by pytest when the test fails
    return random.Random(seed)


class Child:
    """A child process whose stdout lines are collected by a thread as they come."""

    def __init__(self, module: str, *args: str, hook: str = "", stderr: Path | None = None) -> None:
        env = dict(os.environ, PACHYDERM_FAULT_HOOK=hook)
        self._stderr = open(stderr or os.devnull, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        self.lines: list[str] = []
        self._armed: str | None = None  # kill from the reader thread at the next such line
        self._armed_left = 0  # ... at the how-many-th next one
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._armed is not None and line.startswith(self._armed):
                self._armed_left -= 1
                if not self._armed_left:
                    os.kill(self.proc.pid, signal.SIGKILL)  # here: no thread hand-off between line and kill
                    self._armed = None
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<eof>")
            self._changed.notify_all()

    def wait_for(self, prefix: str, after: int = 0) -> tuple[int, str]:
        """The first line from index ``after`` on that starts with ``prefix``: (index, line)."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while True:
                for index in range(after, len(self.lines)):
                    if self.lines[index].startswith(prefix):
                        return index, self.lines[index]
                if "<eof>" in self.lines:
                    self.proc.wait()
                    pytest.fail(f"the child exited ({self.proc.returncode}) before printing {prefix!r}: {self.lines[-5:]}")
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail(f"the child printed no {prefix!r} within {WAIT} s; last lines {self.lines[-5:]}")
                self._changed.wait(0.1)

    def sigkill_at(self, prefix: str, nth: int = 1) -> None:
        """SIGKILL the child as soon as it prints the ``nth`` next line starting with ``prefix``."""
        self._armed_left = nth
        self._armed = prefix
        if self.proc.wait(WAIT) != -signal.SIGKILL:
            pytest.fail(f"the child exited ({self.proc.returncode}) without printing {prefix!r}")
        self._reader.join()
        self._stderr.close()

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL, f"the child had already exited ({self.proc.returncode})"
        self._reader.join()  # every line it printed before the kill is in self.lines now
        self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children started by a test; any still running at the end are killed."""
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT} s waiting for {what}")
        time.sleep(0.01)


def read_acks(path: Path) -> dict[str, int]:
    """Acknowledged calls per sender: how many (each sender's acks are 0, 1, ..., n-1)."""
    acked: dict[str, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n"):  # a line cut by the kill is not an ack
                sender, seq = line.split()
                acked.setdefault(sender, []).append(int(seq))
    for sender, seqs in acked.items():
        assert seqs == list(range(len(seqs))), f"{sender}: acks out of order in the ack file: {seqs[:20]}"
    return {sender: len(seqs) for sender, seqs in acked.items()}


def hub_of(sender: str) -> str:
    return f"h{int(sender.split('.')[1]) % HUBS}"


def audit(world: LocalDisk[Any], acked: dict[str, int]) -> int:
    """Check a reopened Faults file against the acks; return the calls it applied.

    Every acknowledged call is applied, at most the one call in flight per sender
    beyond it, none twice; every note a hub forwarded reaches its sink exactly once.
    """
    hubs: dict[str, Tally] = {f"h{h}": world.state(Hub.address(f"h{h}")) for h in range(HUBS)}

    def sinks() -> dict[int, Tally]:
        return {s: world.state(Sink.address(f"s{s}")) for s in range(SINKS)}

    def delivered() -> bool:
        got = sinks()
        return all(
            sum(got[s].mark(hub.name)[0] for s in range(SINKS)) >= hub.forwarded for hub in hubs.values()
        )

    wait_for(delivered, "the forwarded notes left pending by the kill to be delivered")
    for name, hub in hubs.items():
        assert hub.anomalies == 0, f"hub {name} applied a note twice or out of order"
        for sender, (count, last) in hub.marks.items():
            assert last == count - 1, f"hub {name}: {sender} applied {count} notes but the last was {last}: a gap"
            assert hub_of(sender) == name
            n = acked.get(sender, 0)
            assert count <= n + 1, f"{sender}: {count} applied, {n} acknowledged: more than the one call in flight"
    for sender, n in acked.items():
        count, _ = hubs[hub_of(sender)].mark(sender)
        assert count >= n, f"{sender}: {n} calls acknowledged but only {count} applied: acknowledged calls lost"
    for s, sink in sinks().items():
        assert sink.anomalies == 0, f"sink s{s} received a forwarded note twice or out of order"
        for hub in hubs.values():
            expected = range(s, hub.forwarded, SINKS)
            want = (len(expected), expected[-1] if expected else -1)
            assert sink.mark(hub.name) == want, (
                f"sink s{s} got {sink.mark(hub.name)} (count, last) from {hub.name}, which forwarded "
                f"{hub.forwarded}: expected {want}"
            )
    return sum(count for hub in hubs.values() for count, _ in hub.marks.values())


def callers(
    children: list[Child], path: Path, round_no: str, acks: Path, *,
    threads: int, tasks: int, fanout: int, pad: int, hook: str = "",
) -> Child:
    child = Child(
        "tests.helpers_faults.child", "callers", str(path), round_no, str(acks),
        str(threads), str(tasks), str(fanout), str(pad), hook=hook, stderr=path.with_name(f"stderr-{round_no}.txt"),
    )
    children.append(child)
    child.wait_for("ready")
    return child


# -- SIGKILL during a commit ---------------------------------------------------------------


def test_sigkill_at_random_moments_of_big_commits(tmp_path: Path, rng: random.Random, children: list[Child]) -> None:
    """Real timing: commits of ~64 KB each, killed as a commit starts, 12 times.

    The child prints "committing N" right before each real SQL COMMIT and "committed N"
    right after it; after a random time the test kills the child the moment it reads
    the next "committing" line, while an fsync'd commit of that size is running. The
    last line the child printed tells where the kill landed.
    """
    path, acks = tmp_path / "commits.db", tmp_path / "acks.txt"
    inside = 0
    for round_no in range(12):
        child = callers(children, path, f"r{round_no}", acks, threads=4, tasks=4, fanout=64, pad=1000, hook="report")
        time.sleep(rng.uniform(0.0, 0.3))
        child.sigkill_at("committing")
        hooks = [line for line in child.lines if line.startswith("commit")]
        inside += hooks[-1].startswith("committing ")
        with LocalDisk(Faults, path) as world:
            audit(world, read_acks(acks))
    acked = read_acks(acks)
    assert sum(acked.values()) > 0, "no call was ever acknowledged: the test exercised nothing"
    print(f"{inside} of 12 kills landed between a COMMIT's start and its return; {sum(acked.values())} calls acked")


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_inside_the_commit_of_a_known_call(
    tmp_path: Path, when: str, children: list[Child]
) -> None:
    """Deterministic: the child pauses in the commit that applies call p.0#3, the test kills it.

    ``before``: the transaction is written but the SQL COMMIT not yet run; its 3,000
    outgoing rows (3 MB) are more than SQLite's page cache holds, so SQLite has already
    spilled part of it into the WAL, uncommitted (the child counts those frames). After
    the kill the call is absent, the three before it present. ``after``: COMMIT returned
    (durable) but the caller was never answered: the call is present exactly once and
    its 3,000 forwarded notes are delivered exactly once after reopening.
    """
    path, acks = tmp_path / "paused.db", tmp_path / "acks.txt"
    child = callers(children, path, "p", acks, threads=1, tasks=0, fanout=3000, pad=1000, hook=f"{when}:p.0:3")
    _, line = child.wait_for("paused")
    child.sigkill()
    frames = int(line.split()[-1])
    if when == "before":
        assert frames > 0, f"SQLite kept the whole transaction in memory, so the WAL was never touched: {line}"
    else:
        assert frames == 0, line
    acked = read_acks(acks)
    assert acked == {"p.0": 3}, f"the child acknowledged {acked} before pausing in the commit of call 3"
    with LocalDisk(Faults, path) as world:
        audit(world, acked)
        hub = world.state(Hub.address(hub_of("p.0")))
        assert hub.mark("p.0") == ((3, 2) if when == "before" else (4, 3))
        assert hub.forwarded == 3000 * hub.mark("p.0")[0]
    print(line)


# -- SIGKILL during group commit with many callers ----------------------------------------------


def test_sigkill_during_group_commit_of_many_callers(
    tmp_path: Path, rng: random.Random, children: list[Child]
) -> None:
    """16 threads and 16 asyncio tasks share commits; killed at a random moment, 6 times."""
    path, acks = tmp_path / "group.db", tmp_path / "acks.txt"
    commits = calls = 0
    for round_no in range(6):
        child = callers(children, path, f"g{round_no}", acks, threads=16, tasks=16, fanout=2, pad=0, hook="report")
        time.sleep(rng.uniform(0.1, 0.5))
        child.sigkill()
        commits += sum(line.startswith("committed") for line in child.lines)
        with LocalDisk(Faults, path) as world:
            calls = audit(world, read_acks(acks))
    acked = read_acks(acks)
    assert len(acked) > 16, f"too few callers were ever acknowledged to mean anything: {acked}"
    print(f"{calls} calls applied in {commits} commits (caller and forwarding batches together)")


# -- SIGKILL during recovery of pending messages ------------------------------------------------


def _pending_and_log(path: Path) -> tuple[list[int], list[int]]:
    """(pending entries, the log's entries) read without delivering anything, as the CLI reads."""
    store = DbmFile(path, readonly=True)
    try:
        pending = [json.loads(data)["m"]["n"] for _, data in store.scan(PENDING)]
        raw = store.get(state_key("Log", b'"burst"'))
    finally:
        store.close()
    return pending, [] if raw is None else json.loads(raw)["s"]


def test_sigkill_during_recovery_of_pending_messages(
    tmp_path: Path, rng: random.Random, children: list[Child]
) -> None:
    """5,000 messages left pending; reopening delivers them; that is killed 6 times mid-way.

    Each reopening child prints "committing" before each commit of its recovery
    batches (512 messages each) and is killed at its 1st or 2nd, so every kill lands
    while recovery is under way. After every kill the file must hold a prefix 0..k-1
    of the messages applied, in order, and exactly the rest still pending: nothing
    lost, nothing applied twice.
    """
    path = tmp_path / "recovery.db"
    burst = Child("tests.helpers_localdisk.child", "burst", str(path), "5000")
    children.append(burst)
    burst.wait_for("sent")  # then it exits without closing: the messages are left pending
    assert burst.proc.wait(WAIT) == 0
    pending, applied = _pending_and_log(path)
    assert pending and pending + applied == list(range(5000)), "the burst did not leave pending messages"
    progress = [len(applied)]
    for _ in range(6):
        child = Child("tests.helpers_faults.child", "reopen", str(path), hook="report")  # recovery only
        children.append(child)
        child.wait_for("open")
        child.sigkill_at("committing", nth=rng.choice([1, 2]))
        pending, applied = _pending_and_log(path)
        assert pending, "recovery had finished when the kill landed: it did not test a kill mid-recovery"
        assert applied == list(range(len(applied))), f"after a kill the log is not a prefix: {applied[-10:]}"
        assert pending == list(range(len(applied), 5000)), (
            f"after a kill, {len(applied)} applied but the pending ones are not exactly the rest"
        )
        progress.append(len(applied))
    print(f"messages applied when each kill landed: {progress}")
    with LocalDisk(Work, path) as world:
        wait_for(lambda: len(world.state(Log.address("burst"))) >= 5000, "recovery to finish")
        assert world.state(Log.address("burst")) == tuple(range(5000))
    assert _pending_and_log(path)[0] == []


# -- SIGKILL during an upgrade of old records --------------------------------------------------


def _versioned(rows: dict[bytes, bytes], count: int) -> dict[int, Any]:
    return {i: json.loads(rows[state_key("Versioned", f'"v{i}"'.encode())]) for i in range(count)}


def test_sigkill_while_upgrading_old_records(tmp_path: Path, rng: random.Random, children: list[Child]) -> None:
    """v1 code stores 3,000 states; v2 code (state_version 2 + upgrade) bumps them, killed
    mid-way in one of its commits."""
    path, acks, count = tmp_path / "upgrade.db", tmp_path / "acks.txt", 3000
    with LocalDisk(V1, path) as v1:
        v1.send_sync(Seeder.post("seeder", Seed(count)))  # entity v{i} gets the value i
        wait_for(lambda: v1.state(VersionedV1.address(f"v{count - 1}")) == count - 1, "the v1 records")
    assert all(r == {"v": 1, "s": i} for i, r in _versioned(raw_rows(path), count).items())

    # 3,000 calls from 4 threads take at least 750 commits: killing at one of the first 700
    # lands mid-way whatever the disk's speed.
    child = Child("tests.helpers_faults.child", "upgrade", str(path), str(acks), str(count), "4", hook="report")
    children.append(child)
    child.wait_for("ready")
    child.sigkill_at("committing", nth=rng.randint(20, 700))
    assert "finished" not in child.lines, "the upgrade finished before the kill: nothing was interrupted"

    with LocalDisk(V2, path):
        pass  # a clean open and close checkpoints the WAL, so plain sqlite3 sees everything
    acked = {int(sender[1:]): n for sender, n in read_acks_upgrade(acks).items()}
    records = _versioned(raw_rows(path), count)
    upgraded = {i for i, r in records.items() if r["v"] == 2}
    for i, record in records.items():
        assert record in ({"v": 1, "s": i}, {"v": 2, "s": {"count": i + 1, "note": "from v1"}}), (
            f"v{i}: stored {record}: neither the v1 value nor the v1 value upgraded and bumped once"
        )
    assert set(acked) <= upgraded, f"acknowledged bumps missing: {sorted(set(acked) - upgraded)[:10]}"
    assert all(n == i + 1 for i, n in acked.items())
    print(f"{len(upgraded)} of {count} records upgraded when the kill landed ({len(acked)} acked)")

    with LocalDisk(V2, path) as v2:
        for i in range(count):
            want = Count(i + 1, "from v1") if i in upgraded else Count(i, "from v1")
            assert v2.state(VersionedV2.address(f"v{i}")) == want
        old = min(set(range(count)) - upgraded)
        assert v2.send_sync(VersionedV2.post(f"v{old}", Bump())) == Count(old + 1, "from v1")

    # The v1 code meets a record written by v2: a clear error, and not one byte changes.
    newer = min(upgraded)
    before = raw_rows(path)
    with LocalDisk(V1, path) as v1:
        with pytest.raises(UpgradeError, match=r"state_version 2, but this code knows VersionedV1 only up to version 1"):
            v1.state(VersionedV1.address(f"v{newer}"))
        with pytest.raises(ActivationError) as caught:
            v1.send_sync(VersionedV1.post(f"v{newer}", Bump()))
        assert isinstance(caught.value.__cause__, UpgradeError)
    assert raw_rows(path) == before


def read_acks_upgrade(path: Path) -> dict[str, int]:
    """Ack lines "v{i} COUNT" of the upgrade child: entity -> the count it acknowledged."""
    return {
        line.split()[0]: int(line.split()[1])
        for line in path.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    }


# -- disk full --------------------------------------------------------------------------------
#
# What SQLite does (3.40, WAL mode): the commit's write() of WAL frames fails; on a full
# tmpfs (ENOSPC) it reports SQLITE_FULL "database or disk is full", past RLIMIT_FSIZE
# (EFBIG, SIGXFSZ ignored) SQLITE_IOERR_WRITE "disk I/O error". Either way it rolls the
# transaction back itself and the WAL keeps only whole committed transactions. Smaller
# commits may still fit in the space left; once space is freed (or the limit lifted)
# the same connection commits again.


@attrs.frozen
class FullDisk:
    path: Path  # the LocalDisk file, on the small disk
    fsize: int  # RLIMIT_FSIZE for the child (0: none)
    free: Callable[[], None]  # make room again (the child lifts its own limit)
    says: tuple[str, ...]  # what the refusal must say


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a small tmpfs at ``where``; None if done, else why it cannot be."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    where.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                capture_output=True, text=True)
    except OSError as exc:
        return f"cannot run mount: {exc}"
    if result.returncode != 0:
        return f"mount -t tmpfs failed: {result.stderr.strip() or result.returncode}"
    return None


@pytest.fixture(params=["tmpfs", "rlimit"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    """tmpfs: an 8 MiB tmpfs holding a 6 MiB filler file (deleted to free space: SQLite
    needs room for a 4 MB WAL, its checkpoint threshold, besides the database).
    rlimit: RLIMIT_FSIZE of 1 MiB in the child, lifted by the child when told."""
    if request.param == "rlimit":
        (tmp_path / "data").mkdir()
        yield FullDisk(tmp_path / "data" / "limit.db", 1 << 20, lambda: None,
                       ("disk I/O error", "file size limit", "free space"))
        return
    where = tmp_path / "small"
    reason = _mount_tmpfs(where, "8m")
    if reason:
        pytest.skip(f"cannot arrange a full disk with a tmpfs: {reason} (the RLIMIT_FSIZE variant still runs)")
    try:
        filler = where / "filler"
        filler.write_bytes(b"\0" * (6 << 20))
        yield FullDisk(where / "full.db", 0, filler.unlink, ("database or disk is full", "free some disk space"))
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _check_blobs(path: Path, acked: list[str], pad: int) -> None:
    """A new process opens the file: every acknowledged write is there, each reported exactly once."""
    with LocalDisk(Faults, path) as world:
        for key in acked:
            assert world.state(Blob.address(key)) == f"{key}:" + "x" * pad, f"acknowledged write {key} lost"
        sink = Sink.address("s0")
        wait_for(lambda: len(world.state(sink).marks) >= len(acked), "the pending reports to be delivered")
        tally = world.state(sink)
        assert tally.anomalies == 0, "a write was applied twice"
        assert tally.marks == {key: (1, 0) for key in acked}, "a refused write was applied, or one reported twice"
        assert world.send_sync(Blob.post("after", Put("after", "works"))) == "works"


def test_disk_full(full_disk: FullDisk, children: list[Child]) -> None:
    """One writer until a commit is refused; the refusal is clear, nothing of it is applied,
    the same open ecosystem works again once there is room, and so does a new process."""
    path, pad = full_disk.path, 8000
    child = Child("tests.helpers_faults.child", "fill", str(path), str(pad), str(full_disk.fsize),
                  stderr=path.parent.parent / "fill-stderr.txt")
    children.append(child)
    _, refused = child.wait_for("refused")
    _, refused_at, error_type, quoted = refused.split(maxsplit=3)
    number, text = int(refused_at), json.loads(quoted)
    assert error_type == "StorageError", f"the refused call raised {error_type}, not a StorageError: {text}"
    assert all(part in text for part in full_disk.says), f"the refusal does not say {full_disk.says}: {text}"
    assert str(path) in text and "nothing was changed" in text, text
    assert number > 0, "the very first write was refused: the disk was too small to test anything"
    full_disk.free()
    child.say("freed")
    assert child.wait_for("state refused")[1] == 'state refused ""', "the refused write was applied in memory"
    assert child.wait_for("state previous")[1] == "state previous true", "the last acknowledged write is unreadable"
    child.wait_for("closed")
    assert child.proc.wait(WAIT) == 0
    assert not [line for line in child.lines if line.startswith("still refused")], child.lines[-3:]
    acked = [int(line.split()[1]) for line in child.lines if line.startswith("ack ")]
    assert acked == list(range(number + 3)), "the writes after freeing space were not acknowledged in order"
    _check_blobs(path, [f"b{i}" for i in acked], pad)
    print(f"refused after {number} writes: {text}")


def test_disk_full_with_many_callers(full_disk: FullDisk, children: list[Child]) -> None:
    """8 threads and 8 asyncio tasks keep writing (and retrying refused writes) through
    the full disk; after space is freed every caller goes on, none hangs, and each write
    is applied exactly once."""
    path, pad, callers_ = full_disk.path, 2000, 16
    child = Child("tests.helpers_faults.child", "fill-many", str(path), str(pad), str(full_disk.fsize), "8", "8",
                  stderr=path.parent.parent / "fill-many-stderr.txt")
    children.append(child)
    child.wait_for("ready")
    index = 0
    for _ in range(REFUSALS):  # the callers run into the full disk over and over
        index, _ = child.wait_for("refused", after=index + 1)
    full_disk.free()
    child.say("freed")
    mark = len(child.lines)
    for caller in range(callers_):
        child.wait_for(f"ack {caller} ", after=mark)  # each caller writes again: none hangs
    child.say("stop")
    _, closed = child.wait_for("closed")
    assert json.loads(closed.split(maxsplit=1)[1]) == [], f"a caller got an error other than StorageError: {closed}"
    assert child.proc.wait(WAIT) == 0
    refusals = [line for line in child.lines if line.startswith("refused")]
    for line in refusals:
        assert all(part in line for part in full_disk.says), f"a refusal does not say {full_disk.says}: {line}"
    acked = [f"b{line.split()[1]}.{line.split()[2]}" for line in child.lines if line.startswith("ack ")]
    _check_blobs(path, acked, pad)
    print(f"{len(acked)} writes acknowledged, {len(refusals)} refused and retried")
