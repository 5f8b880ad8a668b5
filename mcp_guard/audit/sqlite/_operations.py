"""SQL steps of the SQLite audit store, and the translation of SQLite errors.

These are blocking functions on a plain `sqlite3` connection. `store.SqliteAuditStore`
runs each group of them in one worker thread hand-off, inside `translate_errors`, so no
sqlite3 exception leaves this package. The store owns the connections, the lock and the
state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from mcp_guard.audit import schema
from mcp_guard.audit.chain import GENESIS, ChainLink, anchor_mac
from mcp_guard.audit.records import CallOutcome, canonical_utc
from mcp_guard.audit.store import CallRecord, PruneResult, StoredRow
from mcp_guard.errors import AuditCorrupted, AuditUnavailable

SHUTDOWN_DETAIL = "the gateway stopped before the call finished; latency_ms counts up to the next start"
UNFINISHED_CALLS = """
SELECT i.call_id, i.time FROM audit_rows AS i
WHERE i.kind = 'intent'
  AND NOT EXISTS (SELECT 1 FROM audit_rows AS o WHERE o.call_id = i.call_id AND o.kind = 'outcome')
ORDER BY i.id
"""
_OLDEST_UNFINISHED_INTENT = """
SELECT MIN(i.id) FROM audit_rows AS i
WHERE i.kind = 'intent'
  AND NOT EXISTS (SELECT 1 FROM audit_rows AS o WHERE o.call_id = i.call_id AND o.kind = 'outcome')
"""
# SQLite primary result codes (the prefix of `sqlite_errorname`) and what they mean to an operator.
_REASONS = (
    ("SQLITE_READONLY", "the database is read-only"),
    ("SQLITE_BUSY", "the database is locked by another connection"),
    ("SQLITE_LOCKED", "the database is locked by another connection"),
    ("SQLITE_FULL", "the disk is full"),
    ("SQLITE_CANTOPEN", "the database file cannot be opened"),
    ("SQLITE_IOERR", "a disk I/O error occurred"),
    ("SQLITE_CORRUPT", "the database file is corrupt"),
    ("SQLITE_NOTADB", "the file is not an SQLite database"),
    ("SQLITE_PERM", "permission denied"),
)

logger = structlog.get_logger(__name__)


@contextmanager
def translate_errors(path: Path) -> Iterator[None]:
    """Turn any SQLite error into `AuditUnavailable` naming the file and the kind of failure."""
    try:
        yield
    except sqlite3.Error as exc:
        raise AuditUnavailable(f"{path}: {sqlite_reason(exc)}") from exc


def sqlite_reason(exc: sqlite3.Error) -> str:
    """Describe an SQLite error by its result code; the message could quote statement values."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    for prefix, text in _REASONS:
        if name.startswith(prefix):
            return f"{text} [{name}]"
    return f"SQLite error [{name}]"


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Run the block in a write transaction, rolled back on any exception."""
    # IMMEDIATE takes the write lock up front, so the tail read inside cannot go stale.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                logger.warning("audit_rollback_failed", reason=sqlite_reason(exc))
        raise


def configure_writer(db: sqlite3.Connection, busy_timeout_ms: int, *, power_safe: bool = False) -> None:
    """Set WAL mode, the fsync level, the lock wait, zeroing of deleted content and the cache size.

    In WAL mode, `synchronous = NORMAL` keeps every committed transaction across a crash of
    the process, because the WAL is written before the commit returns. A power cut can lose
    the last ones. `FULL` also fsyncs the WAL on each commit.
    """
    db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    rows = _fetchall(db, "PRAGMA journal_mode = WAL")
    mode = rows[0][0]
    if mode != "wal":
        raise AuditUnavailable(f"cannot switch the audit database to WAL mode (it stays in {mode!r} mode)")
    db.execute(f"PRAGMA synchronous = {'FULL' if power_safe else 'NORMAL'}")
    db.execute("PRAGMA secure_delete = ON")
    # 512 KiB of page cache instead of SQLite's default 2 MiB: appends touch few pages, and the
    # gateway's memory is counted against a budget.
    db.execute("PRAGMA cache_size = -512")


def _fetchall(db: sqlite3.Connection, query: str, parameters: Sequence[object] = ()) -> list[Any]:
    return db.execute(query, parameters).fetchall()


def read_tail(db: sqlite3.Connection) -> ChainLink:
    """Return the newest row's link, else the anchor, else genesis."""
    rows = _fetchall(db, "SELECT id, row_hash FROM audit_rows ORDER BY id DESC LIMIT 1")
    if rows:
        return ChainLink(rows[0][0], rows[0][1])
    anchor, _ = read_anchor(db)
    return anchor or GENESIS


def read_anchor(db: sqlite3.Connection) -> tuple[ChainLink | None, str | None]:
    """Return the pruning anchor and its stored MAC, or (None, None) if never pruned."""
    rows = _fetchall(db, "SELECT name, value FROM audit_meta WHERE name LIKE 'anchor_%'")
    values = {name: value for name, value in rows}
    if not values:
        return None, None
    try:
        return ChainLink(int(values["anchor_row_id"]), values["anchor_hash"]), values.get("anchor_mac")
    except (KeyError, ValueError):
        # An incomplete anchor fails its MAC check, which reports it as edited.
        return ChainLink(0, ""), None


def fetch_row(db: sqlite3.Connection, row_id: int) -> tuple[Any, ...] | None:
    """Return one row as `schema.SELECT_ROWS` lists it, or None."""
    rows = _fetchall(db, f"{schema.SELECT_ROWS} WHERE id = ?", [row_id])
    return tuple(rows[0]) if rows else None


def stored_kinds(db: sqlite3.Connection, call_ids: set[str]) -> set[tuple[str, str]]:
    """Return the (call id, kind) pairs already stored for these calls."""
    ids = sorted(call_ids)
    placeholders = ", ".join("?" * len(ids))
    query = f"SELECT call_id, kind FROM audit_rows WHERE call_id IN ({placeholders})"
    return {(call_id, kind) for call_id, kind in _fetchall(db, query, ids)}


def delete_prefix(
    db: sqlite3.Connection, key: bytes, older_than: timedelta | None, max_rows: int | None
) -> PruneResult:
    """Delete the oldest rows within the limits and store the last one deleted as the anchor."""
    cutoff = _prune_cutoff(db, older_than, max_rows)
    if cutoff is None:
        return PruneResult(0, None)
    rows = _fetchall(
        db, "SELECT id, row_hash FROM audit_rows WHERE id <= ? ORDER BY id DESC LIMIT 1", [cutoff]
    )
    if not rows:
        return PruneResult(0, None)
    anchor = ChainLink(rows[0][0], rows[0][1])
    cursor = db.execute("DELETE FROM audit_rows WHERE id <= ?", [anchor.row_id])
    db.executemany(
        "INSERT OR REPLACE INTO audit_meta (name, value) VALUES (?, ?)",
        [
            ("anchor_row_id", str(anchor.row_id)),
            ("anchor_hash", anchor.hash),
            ("anchor_mac", anchor_mac(key, anchor)),
        ],
    )
    return PruneResult(cursor.rowcount, anchor.row_id)


def _prune_cutoff(db: sqlite3.Connection, older_than: timedelta | None, max_rows: int | None) -> int | None:
    cutoffs: list[int] = []
    if older_than is not None:
        threshold = canonical_utc(datetime.now(UTC) - older_than)
        first_kept = _scalar(db, "SELECT MIN(id) FROM audit_rows WHERE time >= ?", [threshold])
        if first_kept is None:
            first_kept = _scalar(db, "SELECT MAX(id) + 1 FROM audit_rows")
        if first_kept is not None:
            cutoffs.append(first_kept - 1)
    if max_rows is not None:
        query = "SELECT id FROM audit_rows ORDER BY id DESC LIMIT 1 OFFSET ?"
        newest_deleted = _scalar(db, query, [max_rows])
        if newest_deleted is not None:
            cutoffs.append(newest_deleted)
    if not cutoffs:
        return None
    # The intent of a call still running is kept, so its outcome can still be recorded.
    oldest_unfinished = _scalar(db, _OLDEST_UNFINISHED_INTENT)
    if oldest_unfinished is not None:
        return min(max(cutoffs), int(oldest_unfinished) - 1)
    return max(cutoffs)


def _scalar(db: sqlite3.Connection, query: str, parameters: Sequence[object] = ()) -> Any:
    rows = _fetchall(db, query, parameters)
    return rows[0][0] if rows else None


def close_quietly(connection: sqlite3.Connection) -> None:
    """Close a connection, logging rather than raising an SQLite error."""
    try:
        connection.close()
    except sqlite3.Error as exc:
        logger.warning("audit_connection_close_failed", reason=sqlite_reason(exc))


def shutdown_outcome(call_id: str, started: str, now: datetime) -> CallOutcome:
    """Return the outcome recorded for a call that a stopped gateway left without one."""
    latency = (now - datetime.fromisoformat(started)).total_seconds() * 1000
    return CallOutcome(
        call_id=call_id,
        time=canonical_utc(now),
        outcome="gateway_shutdown",
        latency_ms=max(latency, 0.0),
        detail=SHUTDOWN_DETAIL,
    )


def call_record(row: Sequence[Any]) -> CallRecord:
    """Decode a `schema.SELECT_CALLS` row.

    Raises:
        AuditCorrupted: The row contains values no record can have, so it was edited.
    """
    try:
        intent, outcome, intent_row_id, outcome_row_id = schema.records_from_call_row(row)
    except (ValidationError, ValueError) as exc:
        raise AuditCorrupted(row[0], f"the row contains invalid values ({type(exc).__name__})") from None
    return CallRecord(intent, outcome, intent_row_id, outcome_row_id)


def stored_row(row: Sequence[Any]) -> StoredRow:
    """Decode a `schema.SELECT_ROWS` row.

    Raises:
        AuditCorrupted: The row contains values no record can have, so it was edited.
    """
    fields, _, _ = schema.split_row(row)
    try:
        record = schema.record_from_fields(fields)
    except (ValidationError, ValueError) as exc:
        raise AuditCorrupted(
            fields["id"], f"the row contains invalid values ({type(exc).__name__})"
        ) from None
    return StoredRow(fields["id"], fields["kind"], record)


def database_files(path: Path) -> tuple[Path, Path, Path]:
    """Return the database file and the -wal and -shm files SQLite keeps beside it."""
    return (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
