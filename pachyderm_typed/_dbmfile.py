"""The LocalDisk file: a dbm file (the ``dbm.sqlite3`` layout) written through ``sqlite3``.

The file is one SQLite table, ``Dict(key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)``,
exactly as Python 3.13's ``dbm.sqlite3`` creates it, so ``dbm.open(path, "r")``
reads it there. This module writes it with ``sqlite3`` directly, so it works on
3.11 and commits many writes in one transaction.

Keys (bytes; values are UTF-8 JSON from the codec):

``meta:format``
    ``{"format": "pachyderm-typed/localdisk", "version": 1}``, checked at open.
``state:<kind>\\x00<id as canonical JSON>``
    ``{"v": state_version, "s": state}``.
``pending:<20-digit sequence>``
    ``{"kind": ..., "id": ..., "m": message}``: accepted, not yet consumed. The
    sequence only grows, so key order is delivery (FIFO) order across reopening.
``dead:<20-digit sequence>``
    a pending record plus ``"reason"``.

The file is used by one process at a time: an ``fcntl.flock`` on the sidecar
``PATH.lock`` (held while open) gives a second opener a clear error, and SQLite's
exclusive locking mode keeps foreign SQLite clients out while it is open.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pachyderm_typed._fork import forsake_in_forked_children, released
from pachyderm_typed.errors import AlreadyOpenError, StorageError

FORMAT_NAME = "pachyderm-typed/localdisk"
FORMAT_VERSION = 1

META_FORMAT = b"meta:format"
STATE = b"state:"
PENDING = b"pending:"
DEAD = b"dead:"
KIND_END = b"\x00"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUILD_TABLE = "CREATE TABLE IF NOT EXISTS Dict (key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)"


#: writes of up to this many rows (and no deletes) go to SQLite as one multi-row statement
ONE_STATEMENT_ROWS = 128


@functools.lru_cache(maxsize=ONE_STATEMENT_ROWS)
def put_statement(count: int, sqlite_version: tuple[int, ...] = sqlite3.sqlite_version_info) -> str:
    """The statement that stores ``count`` (key, value) rows, new keys or known ones.

    An upsert rewrites a known key's row in place. REPLACE (what SQLite before 3.24
    offers) deletes the row and inserts it again under a new rowid, which also rewrites
    its index entry: more pages per commit.
    """
    rows = ",".join(["(?, ?)"] * count)
    if sqlite_version >= (3, 24, 0):
        return f"INSERT INTO Dict (key, value) VALUES {rows} ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    return f"REPLACE INTO Dict (key, value) VALUES {rows}"


_GET = "SELECT value FROM Dict WHERE key = ?"
_PUT = put_statement(1)
_DELETE = "DELETE FROM Dict WHERE key = ?"
_PAGE = "SELECT key, value FROM Dict WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
_COUNT = "SELECT COUNT(*) FROM Dict WHERE key >= ? AND key < ?"
_LAST = "SELECT key FROM Dict WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT 1"
_FIRST = "SELECT key FROM Dict WHERE key >= ? AND key < ? ORDER BY key LIMIT 1"


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def state_key(kind: str, encoded_id: bytes) -> bytes:
    return STATE + kind.encode("utf-8", "surrogatepass") + KIND_END + encoded_id


def kind_prefix(kind: str) -> bytes:
    return STATE + kind.encode("utf-8", "surrogatepass") + KIND_END


def seq_key(prefix: bytes, seq: int) -> bytes:
    return prefix + b"%020d" % seq


def key_seq(key: bytes) -> int:
    return int(key[key.index(b":") + 1:])


#: files this process inherited open from the process it was forked from (see DbmFile._forsake)
_inherited: set[Path] = set()


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class FileLock:
    """An exclusive ``flock`` on ``PATH.lock`` for as long as the file is open.

    ``flock`` belongs to the open file description, so a second open in the same
    process conflicts too, and the kernel drops it when the process dies (kill -9).
    """

    def __init__(self, path: Path) -> None:
        self.path = lock_path(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AlreadyOpenError(
                    f"{path} is already open{holder}: a LocalDisk file is used by one process at a time, "
                    "and once per process; close the other one first"
                ) from None
            raise StorageError(f"cannot lock {self.path}: {exc.strerror}") from exc
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def _holder(self) -> str:
        assert self._fd is not None
        try:
            pid = int(os.pread(self._fd, 32, 0).decode().strip())
        except (OSError, ValueError):
            return ""
        return " in this process" if pid == os.getpid() else f" by process {pid}"

    def forsake(self) -> None:
        """In a forked child: close the inherited descriptor, keeping the lock for the parent.

        Unlocking would unlock the parent too (the lock is on the shared open file
        description); keeping the descriptor would keep the lock after the parent died.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None:
            # The lock file stays: deleting it would let two openers lock different inodes.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def locked_by_other(path: Path) -> str | None:
    """If a running LocalDisk holds ``path``, a description of the holder; else None."""
    try:
        lock = FileLock(path)
    except AlreadyOpenError as exc:
        return str(exc)
    except StorageError:
        return None
    lock.release()
    return None


def _check_place(path: Path) -> None:
    """Refuse a path that cannot be a LocalDisk file."""
    if not path.parent.is_dir():
        raise StorageError(f"cannot open {path}: the directory {path.parent} does not exist; create it first")
    if path.exists() and not path.is_file():
        raise StorageError(f"{path} is not a regular file: LocalDisk needs a file path")


def _check_header(path: Path) -> None:
    """Reject files that are not SQLite, and SQLite files cut short, before SQLite touches them."""
    with open(path, "rb") as handle:
        header = handle.read(100)
    if not header:
        return  # an empty file is an empty database (``dbm.open(path, "c")`` leaves one)
    if not header.startswith(_SQLITE_MAGIC) or len(header) < 100:
        raise StorageError(
            f"{path} is not a LocalDisk file (not an SQLite database): check the path; "
            "nothing was changed"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid = header[24:28] == header[92:96] and pages > 0
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return  # the header may lag a WAL that SQLite will replay; trust SQLite then
    size = path.stat().st_size
    if valid and size < pages * page_size:
        raise StorageError(
            f"{path} is truncated: its header records {pages * page_size} bytes, the file has {size}; "
            "restore it from a backup (nothing was changed)"
        )


def storage_error(path: Path, doing: str, exc: BaseException) -> StorageError:
    reason = str(exc)
    advice = ""
    if isinstance(exc, sqlite3.DatabaseError):
        if "not a database" in reason:
            advice = ": the file is not an SQLite database; check the path"
        elif "malformed" in reason or "corrupt" in reason:
            advice = ": the file is damaged; restore it from a backup"
        elif "locked" in reason or "busy" in reason:
            advice = ": another program holds the SQLite file; close it"
        elif "full" in reason:
            advice = ": free some disk space"
        elif "disk I/O error" in reason:
            # SQLite reports EFBIG (a file size limit) and EIO alike as SQLITE_IOERR: name the usual causes.
            advice = ": the system refused a read or write; check free space, the file size limit (ulimit -f) and the disk"
    return StorageError(f"{path}: {doing} failed ({reason}){advice}; nothing was changed")


class DbmFile:
    """One LocalDisk file, opened for this process's exclusive use.

    Every method raises ``StorageError`` (never a raw ``sqlite3`` error) naming
    the path. Calls are serialised by a lock of its own: the ecosystem's
    committer writes while other threads may read states on a cache miss.
    A child forked while it is open leaves it alone (``_forsake``).
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False) -> None:
        self.path = Path(os.fspath(path)).absolute()
        self.readonly = readonly
        self._use = threading.Lock()
        self._forsaken = False
        _check_place(self.path)  # before the lock file is created beside it
        self._lock = FileLock(self.path)
        try:
            self.conn = self._connect(create)
            forsake_in_forked_children(self)
            self.format = self._check_format()
            if not readonly:
                self._enable_wal()  # only now: switching a foreign file to WAL would rewrite its header
        except BaseException:
            released(self)
            conn = getattr(self, "conn", None)
            if conn is not None:
                conn.close()
            self._lock.release()
            raise

    def _connect(self, create: bool) -> sqlite3.Connection:
        path = self.path
        if path.resolve() in _inherited:
            # SQLite sees the inherited connection, which this process may never close, as
            # still holding the file: it would refuse with "database is locked".
            raise StorageError(
                f"cannot open {path} in this process: it is a fork of a process that had the file open "
                "when it forked. Open it in a process that did not inherit it open, such as one "
                "started with multiprocessing's 'spawn' or 'forkserver' method"
            )
        if path.exists():
            _check_header(path)
        elif not create or self.readonly:
            raise StorageError(f"{path} does not exist: check the path")
        else:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise StorageError(f"cannot create {path}: {exc.strerror}") from exc
        try:
            if self.readonly:
                conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False, cached_statements=2 * ONE_STATEMENT_ROWS
                )
        except sqlite3.Error as exc:
            raise storage_error(path, "opening the file", exc) from exc
        try:
            if not self.readonly:
                # Exclusive locking before WAL: no -shm file, and foreign SQLite clients stay out.
                conn.execute("PRAGMA locking_mode = EXCLUSIVE")
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise storage_error(path, "opening the file", exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _enable_wal(self) -> None:
        try:
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.Error as exc:
            raise storage_error(self.path, "switching to WAL mode", exc) from exc
        if str(mode).lower() != "wal":
            raise StorageError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")

    def _check_format(self) -> dict[str, Any]:
        path = self.path
        try:
            tables = {name: sql for name, sql in self.conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
            )}
            if not tables and not self.readonly:
                meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
                self._enable_wal()
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(_BUILD_TABLE)
                self.conn.execute(_PUT, (META_FORMAT, json.dumps(meta).encode()))
                self.conn.execute("COMMIT")
                return meta
            if not tables:
                raise StorageError(f"{path} is an empty SQLite database, not a LocalDisk file")
            if set(tables) != {"Dict"}:
                raise StorageError(
                    f"{path} is an SQLite database but not a LocalDisk (dbm) file: it has tables "
                    f"{sorted(tables)}; check the path (nothing was changed)"
                )
            raw = self.get(META_FORMAT)
            if raw is None:
                if self.conn.execute("SELECT 1 FROM Dict LIMIT 1").fetchone() is None and not self.readonly:
                    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
                    self.write([(META_FORMAT, json.dumps(meta).encode())], ())
                    return meta
                raise StorageError(
                    f"{path} is a dbm file that pachyderm-typed did not write (no meta:format record); "
                    "check the path (nothing was changed)"
                )
        except sqlite3.Error as exc:
            raise storage_error(path, "reading the file's format", exc) from exc
        try:
            meta = json.loads(raw)
            name, version = meta["format"], meta["version"]
        except (ValueError, TypeError, KeyError) as exc:
            raise StorageError(f"{path}: the meta:format record is corrupt ({raw[:80]!r})") from exc
        if name != FORMAT_NAME:
            raise StorageError(f"{path} holds {name!r} data, not a LocalDisk file; check the path")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StorageError(
                f"{path} has LocalDisk format version {version!r}, newer than this pachyderm-typed "
                f"understands ({FORMAT_VERSION}): upgrade pachyderm-typed (nothing was changed)"
            )
        return dict(meta)

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        try:
            with self._use:
                row = self.conn.execute(_GET, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise storage_error(self.path, f"reading {key[:80]!r}", exc) from exc
        return None if row is None else bytes(row[0])

    def scan(self, prefix: bytes, start: bytes | None = None, limit: int = 1000) -> Iterator[tuple[bytes, bytes]]:
        """Records whose key starts with ``prefix``, in key order (from ``start``).

        Read in pages of ``limit`` rows, so the lock is never held while the caller iterates.
        """
        low, high = start or prefix, prefix_end(prefix)
        try:
            while True:
                with self._use:
                    rows = self.conn.execute(_PAGE, (low, high, limit)).fetchall()
                for key, value in rows:
                    yield bytes(key), bytes(value)
                if len(rows) < limit:
                    return
                low = bytes(rows[-1][0]) + b"\x00"  # the next key after the last one read
        except sqlite3.Error as exc:
            raise storage_error(self.path, f"reading the {prefix.decode()!r} records", exc) from exc

    def count(self, prefix: bytes) -> int:
        try:
            with self._use:
                return int(self.conn.execute(_COUNT, (prefix, prefix_end(prefix))).fetchone()[0])
        except sqlite3.Error as exc:
            raise storage_error(self.path, f"counting the {prefix.decode()!r} records", exc) from exc

    def last_key(self, prefix: bytes) -> bytes | None:
        try:
            with self._use:
                row = self.conn.execute(_LAST, (prefix, prefix_end(prefix))).fetchone()
        except sqlite3.Error as exc:
            raise storage_error(self.path, f"reading the {prefix.decode()!r} records", exc) from exc
        return None if row is None else bytes(row[0])

    def kinds(self) -> Iterator[tuple[str, int]]:
        """``(kind, stored states)`` for each kind, by skipping from kind to kind (no full scan)."""
        low, high = STATE, prefix_end(STATE)
        try:
            while True:
                with self._use:
                    row = self.conn.execute(_FIRST, (low, high)).fetchone()
                if row is None:
                    return
                key = bytes(row[0])
                end = key.find(KIND_END, len(STATE))
                if end < 0:
                    raise StorageError(f"{self.path}: the state key {key[:80]!r} is corrupt")
                prefix = key[: end + 1]
                yield prefix[len(STATE):-1].decode("utf-8", "surrogatepass"), self.count(prefix)
                low = prefix_end(prefix)
        except sqlite3.Error as exc:
            raise storage_error(self.path, "listing the stored kinds", exc) from exc

    # -- writes --------------------------------------------------------------------------

    def write(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes]) -> None:
        """Apply every delete then every put in one durable (fsync'd) transaction."""
        conn = self.conn
        with self._use:
            if not deletes and 0 < len(puts) <= ONE_STATEMENT_ROWS:
                # One statement is its own transaction: SQLite is entered once, so the GIL is
                # taken back once, not after each of BEGIN, every row and COMMIT. Under load
                # from other threads each of those costs a wait for the GIL.
                try:
                    conn.execute(put_statement(len(puts)), [part for row in puts for part in row])
                except sqlite3.Error as exc:
                    raise storage_error(self.path, "committing", exc) from exc
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
                if deletes:
                    conn.executemany(_DELETE, [(key,) for key in deletes])
                if puts:
                    conn.executemany(_PUT, puts)
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise storage_error(self.path, "committing", exc) from exc
                raise

    def _forsake(self) -> None:
        """In a child forked while the file was open: never touch it again, not even to close it.

        Closing the connection, which a child does when it exits and frees it, makes
        SQLite checkpoint the write-ahead log and delete it, under the parent still
        writing to it: the parent's later commits would then be lost in a crash. So
        the child keeps an extra reference that is never given back.
        """
        self._forsaken = True
        _inherited.add(self.path.resolve())
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(self.conn))
        self._lock.forsake()

    def close(self) -> None:
        if self._forsaken:
            return
        released(self)
        try:
            with self._use:
                self.conn.close()  # checkpoints the WAL into the file and removes it
        finally:
            self._lock.release()
