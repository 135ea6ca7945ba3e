"""Security: stored data is only ever data, SQL is parameterised, files are private,
ecosystems sharing a database are isolated, and hostile records get clear errors.

The trust model these tests back is in docs/faults_postgres.md: whoever can write the
LocalDisk file or the database can change any entity's state and inject messages, but
cannot make the library run code.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tokenize
from pathlib import Path

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pachyderm_typed
from pachyderm_typed import (
    CodecError,
    DeclarationError,
    Ecosystem,
    Entity,
    Outbox,
    StorageError,
)
from pachyderm_typed.ecosystems import LocalDisk, Postgres
from pachyderm_typed.ecosystems._pg_schema import lock_key
from pachyderm_typed.ecosystems._postgres import inspect_postgres
from tests.entities import (
    App,
    Burst,
    Counter,
    Fanout,
    Forward,
    Forwarder,
    Gate,
    Increment,
    Picky,
    Ping,
    PingPong,
    Recorder,
    Unlock,
    Work,
)
from tests.helpers_pgfaults.support import connect, count_rows, library_log, query, snapshot, wait_until
from tests.helpers_postgres.support import DSN, ROOT, namespace, new_namespace, requires_postgres
from tests.test_localdisk import raw_put, raw_rows

__all__ = ["namespace"]  # the fixture

PACKAGE = Path(pachyderm_typed.__file__).parent


class _Payload:
    """Unpickling this runs ``exec``: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _live_payload(tmp_path: Path, marker: Path) -> bytes:
    """A pickle that runs code when loaded; checked to be live on a throwaway marker first."""
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))  # noqa: S301 - proves the payload works
    assert proof.exists()
    return pickle.dumps(_Payload(marker))


def _code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


# -- stored data is never unpickled or evaluated ---------------------------------------------------


def test_localdisk_never_unpickles_or_evaluates_what_it_reads(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _live_payload(tmp_path, marker)
    path = tmp_path / "app.db"
    with LocalDisk(App, path) as world:
        world.send_sync(Counter.post("ok", Increment()))
    planted = {
        b'state:Counter\x00"pickled"': payload,
        b'state:Counter\x00"code"': _code(marker).encode(),
        b'state:Counter\x00"code-in-json"': json.dumps({"v": 1, "s": _code(marker)}).encode(),
        b'state:PingPong\x00"code-as-str"': json.dumps({"v": 1, "s": _code(marker)}).encode(),
    }
    for key, value in planted.items():
        raw_put(path, key, value)
    with LocalDisk(App, path) as world:
        for entity_id in ("pickled", "code", "code-in-json"):
            with pytest.raises(CodecError, match=rf"stored state of Counter\('{entity_id}'\) .*(corrupt|does not fit int)"):
                world.state(Counter.address(entity_id))
        assert world.state(PingPong.address("code-as-str")) == _code(marker)  # a str state: just text
        assert world.send_sync(Counter.post("ok", Increment())) == 2
    rows = raw_rows(path)
    assert all(rows[key] == value for key, value in planted.items())

    raw_put(path, b"pending:00000000000000000099", payload)
    with pytest.raises(StorageError, match="pending:00000000000000000099"):
        LocalDisk(App, path)
    assert raw_rows(path)[b"pending:00000000000000000099"] == payload
    whole = tmp_path / "whole.db"
    whole.write_bytes(payload)
    with pytest.raises(StorageError, match="not a LocalDisk file"):
        LocalDisk(App, whole)
    assert whole.read_bytes() == payload
    assert not marker.exists()


def _id(entity_id: str) -> bytes:
    return json.dumps(entity_id).encode()


def _put_state(ns: str, kind: str, entity_id: str, data: bytes, version: int = 1) -> None:
    query("INSERT INTO {s}.entities (kind, id, version, state) VALUES (%s, %s, %s, %s) "
          "ON CONFLICT (kind, sha256(id)) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state",
          ns, [kind, _id(entity_id), version, data])


def _put_pending(ns: str, kind: str, entity_id: str, body: bytes) -> int:
    row = query("INSERT INTO {s}.pending (lock_key, kind, id, body) VALUES (%s, %s, %s, %s) RETURNING seq",
                ns, [lock_key(ns, kind, _id(entity_id)), kind, _id(entity_id), body])
    return int(row[0][0])


def _state_row(ns: str, kind: str, entity_id: str) -> tuple[int, bytes]:
    (row,) = query("SELECT version, state FROM {s}.entities WHERE kind = %s AND id = %s", ns, [kind, _id(entity_id)])
    return row[0], bytes(row[1])


@requires_postgres
def test_postgres_never_unpickles_or_evaluates_what_it_reads(namespace: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _live_payload(tmp_path, marker)
    Postgres(App, DSN, namespace=namespace).close()
    _put_state(namespace, "Counter", "pickled", payload)
    _put_state(namespace, "Counter", "code", _code(marker).encode())
    _put_state(namespace, "PingPong", "code-as-str", json.dumps({"v": 1, "s": _code(marker)}).encode())
    _put_pending(namespace, "Counter", "victim", payload)
    before = snapshot(namespace)
    with library_log() as log, Postgres(App, DSN, namespace=namespace) as world:
        for entity_id in ("pickled", "code"):
            with pytest.raises(CodecError, match=rf"stored state of Counter\('{entity_id}'\) is corrupt"):
                world.state(Counter.address(entity_id))
            with pytest.raises(CodecError, match="is corrupt"):
                world.send_sync(Counter.post(entity_id, Increment()))
        assert world.state(PingPong.address("code-as-str")) == _code(marker)
        with pytest.raises(StorageError, match=r"earlier message for Counter\('victim'\) cannot be processed.*"
                                               "stored message is corrupt"):
            world.send_sync(Counter.post("victim", Increment()))
        wait_until(lambda: any("cannot process the pending messages of Counter" in m for m in log),
                   "the worker to meet the pickled message")
        assert world.send_sync(Counter.post("ok", Increment())) == 1
        assert world.dead_letters() == []
    after = snapshot(namespace)
    assert after["pending"] == before["pending"]  # left alone, not dead-lettered
    assert [row for row in after["entities"] if row[1] != _id("ok")] == before["entities"]
    assert not marker.exists()


# Modules that use pickle, and why: the parallel model checker sends states and messages
# between its own forked worker processes over pipes. Nothing stored is ever unpickled.
_IPC_ONLY = {"simulation/_parallel.py": {"pickle"}}


def test_the_library_source_never_unpickles_or_evaluates() -> None:
    """A grep over the library's code (not its comments or docstrings)."""
    banned = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "eval", "exec", "compile", "__import__"}
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        previous = ""
        for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
            # ``re.compile`` and other attributes named like a builtin are fine.
            if token.type == tokenize.NAME and token.string in banned and previous != ".":
                found.setdefault(path.relative_to(PACKAGE).as_posix(), set()).add(token.string)
            if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                previous = token.string
    assert found == _IPC_ONLY
    ipc = (PACKAGE / "simulation" / "_parallel.py").read_text(encoding="utf-8")
    assert not any(word in ipc for word in ("open(", "sqlite3", "psycopg", "_codec", "_dbmfile"))


# -- SQL is parameterised ------------------------------------------------------------------------


@attrs.frozen
class Note:
    text: str


class Evil(Entity[str, Note, tuple[str, ...]]):
    """A kind name, ids and texts made of SQL; forwards each note to an Echo (a pending row)."""

    kind = "Evil'); DROP TABLE {canary}; --\\ $1 %s %(id)s \"x\""

    def init(self, entity_id: str) -> tuple[str, ...]:
        return ()

    def activate(self, message: Note, state: tuple[str, ...]) -> tuple[Outbox, tuple[str, ...]]:
        if message.text.startswith("fail"):
            raise ValueError(message.text)
        return [Echo.post(message.text, message)], (*state, message.text)


class Echo(Entity[str, Note, tuple[str, ...]]):
    kind = "Echo\"; DELETE FROM pending; --"

    def init(self, entity_id: str) -> tuple[str, ...]:
        return ()

    def activate(self, message: Note, state: tuple[str, ...]) -> tuple[Outbox, tuple[str, ...]]:
        if "fail" in message.text:
            raise ValueError(message.text)
        return [], (*state, message.text)


class EvilApp(Ecosystem[Evil | Echo]): ...


INJECTIONS = [
    "'); DROP TABLE {canary}; --",
    "\"; DROP SCHEMA {ns} CASCADE; --",
    "' OR '1'='1",
    "\\'; DELETE FROM {ns}.entities; --\\",
    "$1 $2 %s %(id)s %b {s} {}",
    "E'\\047' || chr(39) -- ",
    "Robert'); DROP TABLE Students;--",
    "\\x00\\\\ \\",
]


@requires_postgres
def test_sql_in_kinds_ids_and_messages_is_only_data(namespace: str) -> None:
    canary = f"{namespace}.canary"
    texts = [text.replace("{canary}", canary).replace("{ns}", namespace) for text in INJECTIONS]
    with Postgres(EvilApp, DSN, namespace=namespace) as world:
        query("CREATE TABLE {s}.canary (x int); INSERT INTO {s}.canary VALUES (1)", namespace)
        with world.follow(Evil.address(texts[0])) as updates:
            for text in texts:
                assert world.send_sync(Evil.post(text, Note(text))) == (text,)
                world.send(Evil.post(texts[0], Note(text)))
            assert [updates.next(timeout=20) for _ in range(len(texts) + 1)][-1] == (texts[0], *texts)
        wait_until(lambda: count_rows(namespace, "pending") == 0, "the worker to deliver the echoes")
        for text in texts[1:]:
            assert world.state(Evil.address(text)) == (text,)
        for text in texts:
            assert world.state(Echo.address(text)) == (text, text)  # one echo from each Evil that saw it
        world.send(Echo.post(texts[1], Note("fail " + texts[2])))
        (letter,) = world.dead_letters()
        assert texts[2] in letter.reason and letter.envelope == Echo.post(texts[1], Note("fail " + texts[2]))
        world.retry(letter)
        assert len(world.dead_letters()) == 1  # failed again, listed again
    assert query("SELECT x FROM {s}.canary", namespace) == [(1,)]
    kinds = dict(query("SELECT kind, count(*) FROM {s}.entities GROUP BY kind", namespace))
    assert kinds == {Evil.kind: len(texts), Echo.kind: len(texts)}
    out = io.StringIO()
    assert inspect_postgres(DSN, ["--namespace", namespace, Evil.kind, texts[3]], out) == 0
    assert json.loads(out.getvalue())["state"] == [texts[3]]


@requires_postgres
def test_kind_names_postgres_cannot_store_are_refused_when_the_ecosystem_is_built(namespace: str) -> None:
    for kind in ("nul\x00kind", "lone\udcffsurrogate"):

        class Odd(Entity[str, Note, int]):
            def init(self, entity_id: str) -> int:
                return 0

            def activate(self, message: Note, state: int) -> tuple[Outbox, int]:
                return [], state + 1

        Odd.kind = kind
        with pytest.raises(DeclarationError, match=r"Odd.kind .* PostgreSQL cannot store"):
            Postgres(Ecosystem[Odd], DSN, namespace=namespace)


@requires_postgres
@pytest.mark.parametrize("text", ["fail\x00with NUL", "fail\udcffwith a lone surrogate"])
def test_a_failure_quoting_text_postgres_cannot_store_is_still_dead_lettered(namespace: str, text: str) -> None:
    """The reason of a dead letter quotes the exception, which may quote a caller's data."""
    with Postgres(EvilApp, DSN, namespace=namespace) as world:
        world.send(Echo.post("direct", Note(text)))  # fails in a caller's transaction
        world.send(Evil.post("relay", Note(text)))  # likewise
        # ... and in a worker's batch, next to a message that must go through:
        world.send(Evil.post("x", Note("relay " + text)))
        world.send(Evil.post("y", Note("ok")))
        wait_until(lambda: count_rows(namespace, "pending") == 0, "the worker to get past the message")
        letters = world.dead_letters()
        assert [letter.envelope.address for letter in letters] == [
            Echo.address("direct"), Evil.address("relay"), Echo.address("relay " + text)]
        assert all(letter.reason.startswith("ValueError: ") and "fail" in letter.reason for letter in letters)
        assert world.state(Echo.address("ok")) == ("ok",)
        world.retry(letters[0])  # and the stored letter is whole: it fails again, as it should
        assert len(world.dead_letters()) == 3


@requires_postgres
def test_unsafe_namespace_names_are_refused_and_nothing_is_created() -> None:
    bad_names = ('x"; DROP SCHEMA public CASCADE; --', "ns'", "a b", "Ns", "ns;", "ns\n", "ns\x00", "ｎｓ",
                 "pg_temp", "information_schema", "n" * 49, "", "1ns")
    existing = {name for (name,) in query("SELECT nspname FROM pg_namespace", "unused")} & set(bad_names)
    for bad in bad_names:
        with pytest.raises(ValueError, match="namespace"):
            Postgres(App, DSN, namespace=bad)
        with pytest.raises(ValueError, match="namespace"):
            Postgres.drop_namespace(DSN, bad)
        assert inspect_postgres(DSN, ["--namespace", bad], io.StringIO()) == 2
    assert {name for (name,) in query("SELECT nspname FROM pg_namespace", "unused")} & set(bad_names) == existing


# -- files are private ---------------------------------------------------------------------------

_MODES = """
import json, os, stat, sys
os.umask(0)  # as permissive as it gets: only the library's own modes protect the files
from pachyderm_typed.ecosystems import LocalDisk
from tests.entities import App, Counter, Increment
folder = sys.argv[1]
def modes():
    return {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in sorted(os.listdir(folder))}
with LocalDisk(App, os.path.join(folder, "app.db")) as world:
    world.send_sync(Counter.post("c", Increment()))
    open_modes = modes()
print(json.dumps([open_modes, modes()]))
"""


def test_localdisk_files_are_private_even_with_umask_0(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _MODES, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    while_open, closed = json.loads(result.stdout)
    assert {"app.db", "app.db.lock", "app.db-wal"} <= set(while_open)
    assert set(while_open.values()) == {0o600} and set(closed.values()) == {0o600}


# -- ecosystems are isolated ---------------------------------------------------------------------


@requires_postgres
def test_namespaces_sharing_a_database_see_only_their_own_data(namespace: str) -> None:
    other = new_namespace()
    try:
        with Postgres(App, DSN, namespace=namespace, workers=0) as one, \
                Postgres(App, DSN, namespace=other, workers=1) as two:
            one.send_sync(Counter.post("c", Increment(by=100)))
            one.send(Picky.post("p", Work(1)))  # a dead letter in one
            one.send(Fanout.post("f", Burst("r", 3)))  # 3 pending in one, which has no workers
            with two.follow(Counter.address("c")) as updates:
                assert updates.state == 0
                one.send_sync(Counter.post("c", Increment()))
                assert two.send_sync(Counter.post("c", Increment())) == 1
                assert updates.next(timeout=20) == 1  # one's commits never reach two's followers
            two.send(Fanout.post("f", Burst("r", 2)))
            wait_until(lambda: count_rows(other, "pending") == 0, "two's worker")
            # two's worker ran, and never took one's pending messages
            assert count_rows(namespace, "pending") == 3
            assert len(two.state(Recorder.address("r"))) == 2 and one.state(Recorder.address("r")) == ()
            assert two.dead_letters() == [] and len(one.dead_letters()) == 1
            assert two.state(Picky.address("p")) == Gate() and one.state(Counter.address("c")) == 101
        for ns, counters, pending, dead in ((namespace, "1", "3", "1"), (other, "1", "0", "0")):
            out = io.StringIO()
            assert inspect_postgres(DSN, ["--namespace", ns], out) == 0
            lines = {line.split()[0]: line.split()[1:] for line in out.getvalue().splitlines()[2:] if line.strip()}
            assert lines["Counter"][0] == counters
            assert lines["total"][1:] == [pending, dead]
    finally:
        Postgres.drop_namespace(DSN, other)


@requires_postgres
def test_a_role_given_only_its_schema_runs_the_ecosystem_and_cannot_reach_another(namespace: str) -> None:
    """Least privilege: the role owns its namespace's schema and has no CREATE on the database."""
    role, other = f"pgsec_{namespace}", new_namespace()
    try:
        with connect() as admin:
            try:
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            except psycopg.errors.InsufficientPrivilege:
                pytest.skip(f"the test DSN {DSN} cannot create roles")
            admin.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(sql.Identifier(namespace), sql.Identifier(role)))
            row = admin.execute("SELECT has_database_privilege(%s, current_database(), 'CREATE')", (role,)).fetchone()
            assert row == (False,)
        Postgres(App, DSN, namespace=other).close()  # another ecosystem, created by another role
        as_role = make_conninfo(DSN, user=role)
        try:
            psycopg.connect(as_role, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            pytest.skip(f"cannot log in as a new role without a password here: {exc}")
        with Postgres(App, as_role, namespace=namespace) as world:
            world.send(Forwarder.post("f", Forward("c", 2)))  # through its worker too
            wait_until(lambda: world.state(Counter.address("c")) == 2, "the role's worker")
        with pytest.raises(StorageError, match=f"namespace '{other}'.*permission denied for schema {other}"):
            Postgres(App, as_role, namespace=other)
    finally:
        with connect() as admin:
            for schema in (namespace, other):
                admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_localdisk_files_at_different_paths_see_only_their_own_data(tmp_path: Path) -> None:
    with LocalDisk(App, tmp_path / "one.db") as one, LocalDisk(App, tmp_path / "two.db") as two:
        one.send_sync(Counter.post("c", Increment(by=100)))
        one.send(Picky.post("p", Work(1)))
        assert two.state(Counter.address("c")) == 0 and two.dead_letters() == []
        assert two.send_sync(Counter.post("c", Increment())) == 1
        assert one.state(Counter.address("c")) == 100 and len(one.dead_letters()) == 1


# -- bad records in the database -----------------------------------------------------------------


@requires_postgres
def test_truncated_and_foreign_state_records_are_clear_errors_and_left_alone(namespace: str) -> None:
    with Postgres(App, DSN, namespace=namespace, workers=0) as world:
        world.send_sync(Counter.post("truncated", Increment(by=41)))
    full = _state_row(namespace, "Counter", "truncated")[1]
    _put_state(namespace, "Counter", "truncated", full[:-3], version=1)
    _put_state(namespace, "PingPong", "tagged", b'{"v":1,"s":{"_type":"Ghost","x":1}}', version=1)
    _put_state(namespace, "Ghost", "g", b'{"v":1,"s":"a kind nobody declares"}')  # e.g. from newer code
    before = snapshot(namespace)
    with Postgres(App, DSN, namespace=namespace) as world:
        with pytest.raises(CodecError, match=r"stored state of Counter\('truncated'\) is corrupt"):
            world.state(Counter.address("truncated"))
        with pytest.raises(CodecError, match=r"Counter\('truncated'\) is corrupt"):
            world.send_sync(Counter.post("truncated", Increment()))
        with pytest.raises(CodecError, match=r"Counter\('truncated'\) is corrupt"):
            world.send(Counter.post("truncated", Increment()))
        with pytest.raises(CodecError, match=r"PingPong\('tagged'\).*does not fit"):
            world.state(PingPong.address("tagged"))
        assert snapshot(namespace) == before
        world.send(Forwarder.post("f", Forward("ok", 2)))  # through the worker
        wait_until(lambda: count_rows(namespace, "pending") == 0, "the worker")
        assert world.state(Counter.address("ok")) == 2 and world.dead_letters() == []
    out = io.StringIO()
    assert inspect_postgres(DSN, ["--namespace", namespace], out) == 0
    assert any(line.split()[:2] == ["Ghost", "1"] for line in out.getvalue().splitlines())
    moved = {("Forwarder", _id("f")), ("Counter", _id("ok"))}
    assert [row for row in snapshot(namespace)["entities"] if row[:2] not in moved] == before["entities"]


def _ping() -> Ping:
    return Ping(reply_to=PingPong.address("nobody"))


@requires_postgres
def test_every_single_bit_flip_of_a_state_record_is_an_error_or_a_valid_state(namespace: str) -> None:
    """Records are JSON without a checksum of their own, so a flip that still spells a valid state
    reads as that state (guarding the disk is the database's job: PostgreSQL data checksums).
    Every other flip is a clear StorageError naming the entity, and nothing is overwritten."""
    with Postgres(App, DSN, namespace=namespace, workers=0) as world:
        world.send(Picky.post("p", Work(0)))  # a dead letter
        world.send_sync(Picky.post("g", Unlock()))
        world.send_sync(Picky.post("g", Work(7)))
        version, good = _state_row(namespace, "Picky", "g")
        detected = valid = 0
        raw = connect()
        raw.execute("SET synchronous_commit = off")  # 300 planted records need no fsync each
        table = sql.SQL("{s}.entities").format(s=sql.Identifier(namespace))
        put = sql.SQL("UPDATE {t} SET state = %s WHERE kind = 'Picky' AND id = %s").format(t=table)
        get = sql.SQL("SELECT version, state FROM {t} WHERE kind = 'Picky' AND id = %s").format(t=table)
        for bit in range(len(good) * 8):
            flipped = bytearray(good)
            flipped[bit // 8] ^= 1 << (bit % 8)
            raw.execute(put, (bytes(flipped), _id("g")))
            try:
                state = world.state(Picky.address("g"))
            except StorageError as exc:
                detected += 1
                assert "Picky('g')" in str(exc)
                if bit % 8 == 7:  # the record is ASCII: a high bit is never valid UTF-8 here
                    assert "corrupt" in str(exc)
                if detected % 4 == 1:  # writing through a sample of them (each is a transaction)
                    with pytest.raises(StorageError):
                        world.send_sync(Picky.post("g", Work(1)))
                    assert raw.execute(get, (_id("g"),)).fetchone() == (version, bytes(flipped))
            else:
                valid += 1
                assert isinstance(state, Gate)
                assert bit % 8 != 7
        raw.close()
        assert detected > valid > 0
        print(f"{len(good) * 8} single-bit flips of {good!r}: {detected} detected, {valid} valid states")
        _put_state(namespace, "Picky", "g", good, version)
        assert world.send_sync(Picky.post("g", Work(1))) == Gate(open=True, total=8)
        assert world.dead_letters()[0].envelope == Picky.post("p", Work(0))


@requires_postgres
def test_pending_messages_naming_unknown_kinds_are_clear_errors_and_left_alone(namespace: str) -> None:
    Postgres(App, DSN, namespace=namespace).close()
    ghost_kind = _put_pending(namespace, "Ghost", "g", b'{"kind":"Ghost","id":"g","m":{}}')  # for newer nodes
    ghost_body = _put_pending(namespace, "Counter", "c", b'{"kind":"Ghost","id":"c","m":{"by":1}}')
    ghost_tag = _put_pending(namespace, "PingPong", "p", b'{"kind":"PingPong","id":"p","m":{"_type":"Ghost"}}')
    before = snapshot(namespace)
    with library_log() as log, Postgres(App, DSN, namespace=namespace) as world:
        with pytest.raises(StorageError, match=r"earlier message for Counter\('c'\) cannot be processed.*"
                                               r"names entity kind 'Ghost', which App does not declare"):
            world.send_sync(Counter.post("c", Increment()))
        with pytest.raises(StorageError, match=r"earlier message for PingPong\('p'\).*tagged 'Ghost'"):
            world.send(PingPong.post("p", _ping()))
        wait_until(lambda: sum("cannot process the pending messages" in m for m in log) >= 2, "the worker")
        assert world.send_sync(Counter.post("other", Increment())) == 1
        assert world.dead_letters() == []
    assert snapshot(namespace)["pending"] == before["pending"]
    assert {row[0] for row in before["pending"]} == {ghost_kind, ghost_body, ghost_tag}
