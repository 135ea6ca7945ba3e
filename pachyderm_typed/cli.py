"""``python -m pachyderm_typed``: look inside a store without the application's code.

    python -m pachyderm_typed inspect PATH            kinds with entity counts, pending, dead letters
    python -m pachyderm_typed inspect PATH KIND ID    that entity's stored state, as JSON

``PATH`` is a LocalDisk file, or a PostgreSQL DSN (``postgresql://...`` or
``host=... dbname=...``), which is handed to the Postgres ecosystem's
``inspect_postgres``. ``ID`` is matched as a string first, then as JSON (so
``42`` finds an int id 42 when no string id "42" exists; ``'["a", 1]'`` a tuple).

Exit status: 0 on success, 1 when the store cannot be read or the entity is not
there, 2 on a usage error.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from pachyderm_typed._codec import dump_json
from pachyderm_typed._dbmfile import DEAD, PENDING, DbmFile, kind_prefix, state_key
from pachyderm_typed.errors import StorageError

USAGE = """\
usage: python -m pachyderm_typed inspect PATH [KIND ID]
       python -m pachyderm_typed inspect DSN [--namespace NS] [KIND ID]

  inspect PATH            list the stored kinds with entity counts, and the pending
                          and dead-letter counts of a LocalDisk file
  inspect PATH KIND ID    print the stored state of one entity as JSON
  PATH may be a PostgreSQL DSN (postgresql://... or 'host=... dbname=...')
"""


def is_postgres_dsn(target: str) -> bool:
    return target.startswith(("postgres://", "postgresql://")) or "host=" in target or "dbname=" in target


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if not args or args[0] in ("-h", "--help", "help"):
        (out if args else err).write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command != "inspect":
        err.write(f"error: unknown command {command!r}\n{USAGE}")
        return 2
    if rest and is_postgres_dsn(rest[0]):
        return _inspect_postgres(rest[0], rest[1:], out, err)  # it parses its own options
    if len(rest) not in (1, 3):
        err.write(f"error: inspect takes PATH, or PATH KIND ID (got {len(rest)} arguments)\n{USAGE}")
        return 2
    target = rest[0]
    try:
        return inspect_localdisk(target, rest[1:], out, err)
    except StorageError as exc:
        err.write(f"error: {exc}\n")
        return 1


def _inspect_postgres(dsn: str, argv: list[str], out: TextIO, err: TextIO) -> int:
    try:
        # Imported only for a DSN: LocalDisk users need neither psycopg nor the Postgres code.
        module = importlib.import_module("pachyderm_typed.ecosystems._postgres")
        inspect_postgres: Callable[[str, list[str], TextIO], int] = module.inspect_postgres
    except (ImportError, AttributeError) as exc:
        err.write(
            "error: postgres support not installed: install pachyderm-typed[postgres] "
            f"(pip install 'pachyderm-typed[postgres]') to inspect {dsn!r} ({exc})\n"
        )
        return 1
    return inspect_postgres(dsn, argv, out)


def inspect_localdisk(path: str, argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    """The ``inspect`` command on a LocalDisk file. Opens it read-only; changes nothing."""
    if not Path(path).exists():
        err.write(f"error: {path} does not exist: check the path\n")
        return 1
    db = DbmFile(path, create=False, readonly=True)
    try:
        if not argv:
            return _summary(db, out)
        return _entity(db, argv[0], argv[1], out, err)
    finally:
        db.close()


def _summary(db: DbmFile, out: TextIO) -> int:
    kinds = list(db.kinds())
    out.write(f"{db.path}\n")
    out.write(f"format: {db.format.get('format')} version {db.format.get('version')}\n")
    if kinds:
        width = max(len("kind"), *(len(kind) for kind, _ in kinds))
        out.write(f"{'kind':<{width}}  entities\n")
        for kind, count in kinds:
            out.write(f"{kind:<{width}}  {count:>8}\n")
    else:
        out.write("no stored entities\n")
    out.write(f"pending messages: {db.count(PENDING)}\n")
    out.write(f"dead letters: {db.count(DEAD)}\n")
    return 0


def id_candidates(raw: str) -> list[bytes]:
    """Canonical encodings the id on the command line may stand for: the string, then JSON."""
    encode = dump_json
    candidates = [encode(raw)]
    try:
        parsed = json.loads(raw)
    except ValueError:
        return candidates
    as_json = encode(parsed)
    if as_json not in candidates:
        candidates.append(as_json)
    return candidates


def _entity(db: DbmFile, kind: str, raw_id: str, out: TextIO, err: TextIO) -> int:
    found: list[tuple[bytes, bytes]] = []
    for encoded in id_candidates(raw_id):
        data = db.get(state_key(kind, encoded))
        if data is not None:
            found.append((encoded, data))
    if not found:
        if db.count(kind_prefix(kind)) == 0:
            known = ", ".join(k for k, _ in db.kinds()) or "none"
            err.write(f"error: no stored entity of kind {kind!r} in {db.path} (stored kinds: {known})\n")
        else:
            err.write(
                f"error: {kind} {raw_id!r} has no stored state in {db.path} "
                "(it never committed a state, so it is at its init state)\n"
            )
        return 1
    if len(found) > 1:
        ids = " and ".join(encoded.decode("utf-8", "surrogatepass") for encoded, _ in found)
        err.write(f"error: {kind} has both ids {ids}: quote the id as JSON to choose (e.g. '\"{raw_id}\"')\n")
        return 1
    encoded, data = found[0]
    try:
        record = json.loads(data.decode("utf-8", "surrogatepass"))
        state, version = record["s"], record["v"]
    except (ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"{db.path}: the stored state of {kind} {raw_id!r} is corrupt ({exc})") from exc
    err.write(f"{kind} {encoded.decode('utf-8', 'surrogatepass')} (state_version {version}):\n")
    out.write(json.dumps(state, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    return 0
