"""The PostgreSQL layout of one ``Postgres`` ecosystem: tables, migrations, queries, lock keys.

Each ecosystem lives in its own PostgreSQL schema (its *namespace*), so several
ecosystems share one database without seeing each other. Tables:

``meta``          ``schema_version`` of the layout
``entities``      one row per entity ever activated: its state record and a per-entity
                  ``version`` (the number of committed activations that changed it)
``pending``       messages produced by outboxes and not yet processed, in ``seq`` order
``dead_letters``  messages whose activation failed with nobody waiting for the result
``follows``       who follows which entity (one row per subscription, any node)
``history``       every committed state of a followed entity, kept until all of its
                  followers have seen it

Ids can be large (a megabyte is fine), so indexes key entities by ``sha256(id)``
(PostgreSQL's btree entries are limited to a third of a page); lookups also compare
the id itself.

Records are the codec's JSON bytes stored as ``bytea``, not ``jsonb``: the codec
keeps lone surrogates (ids made from undecodable bytes) with ``surrogatepass``,
which PostgreSQL text would reject, and the database never needs to look inside
a record, so parsing it into ``jsonb`` on every write would be pure cost.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from pachyderm_typed.errors import StorageError

SCHEMA_VERSION = 1

# Short enough that "<namespace>__follow" stays within PostgreSQL's 63-byte identifiers.
_NAMESPACE = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_RESERVED = ("public", "information_schema")

# Each step brings the layout from the previous version to its own; steps are
# idempotent so that a half-applied step (impossible in one transaction, but cheap
# to guarantee) is safe to run again. The schema itself is created by ensure_schema.
_MIGRATIONS: dict[int, tuple[LiteralString, ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
        # fillfactor leaves room on each page so that state updates stay HOT (no index writes).
        """CREATE TABLE IF NOT EXISTS {s}.entities (
            kind text NOT NULL, id bytea NOT NULL, version bigint NOT NULL, state bytea NOT NULL)
            WITH (fillfactor = 80)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS entities_key ON {s}.entities (kind, sha256(id))",
        """CREATE TABLE IF NOT EXISTS {s}.pending (
            seq bigserial PRIMARY KEY, lock_key bigint NOT NULL,
            kind text NOT NULL, id bytea NOT NULL, body bytea NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS pending_by_lock_key ON {s}.pending (lock_key, seq)",
        """CREATE TABLE IF NOT EXISTS {s}.dead_letters (
            id bigserial PRIMARY KEY, kind text NOT NULL, entity_id bytea NOT NULL,
            body bytea NOT NULL, reason text NOT NULL, created timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE IF NOT EXISTS {s}.follows (
            token uuid PRIMARY KEY, node uuid NOT NULL, kind text NOT NULL, id bytea NOT NULL,
            seen bigint NOT NULL, heartbeat timestamptz NOT NULL DEFAULT now())""",
        "CREATE INDEX IF NOT EXISTS follows_by_entity ON {s}.follows (kind, sha256(id))",
        """CREATE TABLE IF NOT EXISTS {s}.history (
            kind text NOT NULL, id bytea NOT NULL, version bigint NOT NULL, state bytea NOT NULL)""",
        "CREATE UNIQUE INDEX IF NOT EXISTS history_key ON {s}.history (kind, sha256(id), version)",
    ),
}


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is a usable schema name, else raise ``ValueError``."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not a valid PostgreSQL schema name for an ecosystem: use 1 to 48 "
            "lowercase letters, digits and underscores, starting with a letter or underscore"
        )
    if namespace.startswith("pg_") or namespace in _RESERVED:
        raise ValueError(f"namespace {namespace!r} is reserved by PostgreSQL: choose another name")
    return namespace


def lock_key(namespace: str, kind: str, entity_id: bytes) -> int:
    """The advisory-lock key of one entity: a keyed 64-bit hash, as PostgreSQL's signed bigint.

    Keyed by namespace, so ecosystems sharing a database never contend. Two entities
    that collide merely share a lock (whoever holds it processes both), which is safe.
    """
    kind_bytes = kind.encode("utf-8")
    digest = hashlib.blake2b(
        len(kind_bytes).to_bytes(4, "big") + kind_bytes + entity_id,
        digest_size=8,
        key=namespace.encode("ascii"),
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def schema_lock_key(namespace: str) -> int:
    return lock_key(namespace, "", b"pachyderm-typed schema")


def channels(namespace: str) -> tuple[str, str]:
    """NOTIFY channels: new pending work, and committed states of followed entities."""
    return f"{namespace}__work", f"{namespace}__follow"


Connection = psycopg.Connection[tuple[Any, ...]]


def ensure_schema(conn: Connection, namespace: str) -> None:
    """Create or migrate the namespace's tables; safe when several nodes start at once.

    An advisory lock serialises concurrent starters (``CREATE ... IF NOT EXISTS``
    alone races on the catalog). Runs in its own transaction.
    """
    schema = sql.Identifier(namespace)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema_lock_key(namespace),))
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = 'meta'", (namespace,)
        ).fetchone()
        current = 0
        if exists:
            row = conn.execute(
                sql.SQL("SELECT value FROM {s}.meta WHERE key = 'schema_version'").format(s=schema)
            ).fetchone()
            current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"the PostgreSQL namespace {namespace!r} has schema version {current}, but this "
                f"pachyderm-typed knows only up to version {SCHEMA_VERSION}: it was created by newer "
                "code; upgrade pachyderm-typed on this node (nothing was changed)"
            )
        if current == SCHEMA_VERSION:
            return
        # Only when missing: CREATE SCHEMA needs CREATE on the whole database even with IF NOT
        # EXISTS, and a role given just its own schema (least privilege) has no such right.
        if not conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (namespace,)).fetchone():
            conn.execute(sql.SQL("CREATE SCHEMA {s}").format(s=schema))
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(sql.SQL(statement).format(s=schema))
        conn.execute(
            sql.SQL(
                "INSERT INTO {s}.meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ).format(s=schema),
            (str(SCHEMA_VERSION),),
        )


def drop_schema(conn: Connection, namespace: str) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema_lock_key(namespace),))
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE").format(s=sql.Identifier(namespace)))


class Queries:
    """Every statement the engine runs, rendered once for one namespace.

    Arrays of bytea are sent in binary (``%b``): escaping them as text cost more than the query.
    """

    def __init__(self, namespace: str) -> None:
        schema = sql.Identifier(namespace)

        def q(text: LiteralString) -> bytes:
            return sql.SQL(text).format(s=schema).as_bytes(None)

        self.lock = q("SELECT pg_advisory_xact_lock(%s)")
        # The oldest pending messages of declared kinds, one row per entity key, each
        # try-locked: a key held by another node's transaction is skipped, never awaited.
        self.claim = q(
            """WITH w AS MATERIALIZED (
                   SELECT lock_key, seq FROM {s}.pending
                   WHERE seq > %s AND kind = ANY(%b::text[]) AND lock_key <> ALL(%s::bigint[])
                   ORDER BY seq LIMIT %s),
               c AS MATERIALIZED (
                   SELECT lock_key, min(seq) AS first FROM w GROUP BY lock_key ORDER BY first LIMIT %s)
               SELECT c.lock_key, pg_try_advisory_xact_lock(c.lock_key),
                      (SELECT max(seq) FROM w), (SELECT count(*) FROM w)
               FROM c ORDER BY c.first"""
        )
        # Per key through the (lock_key, seq) index, whatever the plan: a scan of the whole
        # queue in seq order would cost O(backlog) per batch.
        # Run only after the locks are held: READ COMMITTED gives this statement a snapshot
        # newer than any commit by the previous holder, so consumed messages are gone and
        # states are the latest. Entity rows first (part 0), then messages in seq order.
        self.read = q(
            """WITH m AS MATERIALIZED (
                   SELECT p.seq, p.kind, p.id, p.body FROM unnest(%(keys)s::bigint[]) AS k(key)
                   CROSS JOIN LATERAL (
                       SELECT seq, kind, id, body FROM {s}.pending WHERE lock_key = k.key
                       ORDER BY seq LIMIT %(limit)s) p
                   ORDER BY p.seq LIMIT %(limit)s),
               t AS (SELECT kind, id FROM m UNION SELECT * FROM unnest(%(kinds)b::text[], %(ids)b::bytea[]))
               SELECT 0 AS part, NULL::bigint AS seq, t.kind, t.id, e.state, e.version,
                      EXISTS (SELECT 1 FROM {s}.follows f
                              WHERE f.kind = t.kind AND sha256(f.id) = sha256(t.id) AND f.id = t.id)
               FROM t LEFT JOIN {s}.entities e
                   ON e.kind = t.kind AND sha256(e.id) = sha256(t.id) AND e.id = t.id
               UNION ALL
               SELECT 1, seq, kind, id, body, NULL, NULL FROM m
               ORDER BY 1, 2"""
        )
        self.delete_pending = q("DELETE FROM {s}.pending WHERE seq = ANY(%s::bigint[])")
        self.upsert_entities = q(
            """INSERT INTO {s}.entities (kind, id, version, state)
               SELECT * FROM unnest(%b::text[], %b::bytea[], %s::bigint[], %b::bytea[])
               ON CONFLICT (kind, sha256(id)) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state"""
        )
        # ORDER BY the ordinality: seq must follow outbox order (FIFO per sender and receiver).
        self.insert_pending = q(
            """INSERT INTO {s}.pending (lock_key, kind, id, body)
               SELECT k, kd, i, b FROM unnest(%s::bigint[], %b::text[], %b::bytea[], %b::bytea[])
                   WITH ORDINALITY AS o(k, kd, i, b, n)
               ORDER BY n"""
        )
        self.insert_history = q(
            """INSERT INTO {s}.history (kind, id, version, state)
               SELECT * FROM unnest(%b::text[], %b::bytea[], %s::bigint[], %b::bytea[])"""
        )
        self.insert_dead = q(
            """INSERT INTO {s}.dead_letters (kind, entity_id, body, reason)
               SELECT kd, i, b, r FROM unnest(%b::text[], %b::bytea[], %b::bytea[], %b::text[])
                   WITH ORDINALITY AS o(kd, i, b, r, n)
               ORDER BY n"""
        )
        self.notify = b"SELECT pg_notify(%s, %s)"
        self.state = q(
            "SELECT version, state FROM {s}.entities WHERE kind = %(kind)s AND sha256(id) = sha256(%(id)s) AND id = %(id)s"
        )
        self.dead_list = q("SELECT id, body, reason FROM {s}.dead_letters WHERE kind = ANY(%b::text[]) ORDER BY id")
        self.dead_take = q("DELETE FROM {s}.dead_letters WHERE id = %s RETURNING id")
        self.follow_insert = q(
            "INSERT INTO {s}.follows (token, node, kind, id, seen) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (token) DO UPDATE SET seen = EXCLUDED.seen, heartbeat = now()"
        )
        self.follow_delete = q("DELETE FROM {s}.follows WHERE token = ANY(%s::uuid[])")
        self.follow_heartbeat = q(
            """UPDATE {s}.follows f SET heartbeat = now(), seen = s.seen
               FROM unnest(%s::uuid[], %s::bigint[]) AS s(token, seen) WHERE f.token = s.token"""
        )
        self.follow_expire = q("DELETE FROM {s}.follows WHERE heartbeat < now() - %s * interval '1 second'")
        # States every follower has seen (or that nobody follows any more) are dropped.
        self.history_prune = q(
            """DELETE FROM {s}.history h WHERE NOT EXISTS (
                   SELECT 1 FROM {s}.follows f
                   WHERE f.kind = h.kind AND sha256(f.id) = sha256(h.id) AND f.id = h.id AND f.seen < h.version)"""
        )
        self.history_prune_entity = q(
            """DELETE FROM {s}.history h
               WHERE h.kind = %(kind)s AND sha256(h.id) = sha256(%(id)s) AND h.id = %(id)s AND NOT EXISTS (
                   SELECT 1 FROM {s}.follows f
                   WHERE f.kind = h.kind AND sha256(f.id) = sha256(h.id) AND f.id = h.id AND f.seen < h.version)"""
        )
        self.history_read = q(
            """SELECT h.kind, h.id, h.version, h.state
               FROM unnest(%b::text[], %b::bytea[], %s::bigint[]) AS w(kind, id, seen)
               JOIN {s}.history h
                   ON h.kind = w.kind AND sha256(h.id) = sha256(w.id) AND h.id = w.id AND h.version > w.seen
               ORDER BY h.kind, h.id, h.version"""
        )
