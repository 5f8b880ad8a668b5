"""The pin database's tables, statements and row conversions, without touching a connection.

`store.PinStore` runs these statements; keeping the SQL here keeps the store
about connections, locking and error translation. Definitions are stored as
JSON with every non-ASCII character escaped, so a lone surrogate from the wire
still round-trips through SQLite's UTF-8 text. Times are ISO 8601 UTC.

    servers(server PRIMARY KEY, first_seen)
    tool_pins(server, tool, first_seen,
              approved_hash, approved_definition, approved_at, approved_by,
              pending_hash, pending_definition, pending_since, rejected_at,
              PRIMARY KEY (server, tool))

A row has an approved definition, a pending one, or both. `rejected_at` marks
the pending definition as rejected by an operator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mcp_guard.pinning.records import PinRecord
from mcp_guard.policy.definitions import pinned_fields

# Stored in `PRAGMA user_version`; raise it with every change to the tables below.
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS servers (
    server TEXT PRIMARY KEY,
    first_seen TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tool_pins (
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    approved_hash TEXT,
    approved_definition TEXT,
    approved_at TEXT,
    approved_by TEXT,
    pending_hash TEXT,
    pending_definition TEXT,
    pending_since TEXT,
    rejected_at TEXT,
    PRIMARY KEY (server, tool),
    CHECK ((approved_hash IS NULL) = (approved_definition IS NULL)),
    CHECK ((pending_hash IS NULL) = (pending_definition IS NULL)),
    CHECK (approved_hash IS NOT NULL OR pending_hash IS NOT NULL),
    CHECK (rejected_at IS NULL OR pending_hash IS NOT NULL)
) WITHOUT ROWID;
"""

SELECT_PINS = (
    "SELECT server, tool, first_seen, approved_hash, approved_definition, approved_at, approved_by,"
    " pending_hash, pending_definition, pending_since, rejected_at FROM tool_pins"
)
SELECT_APPROVED_HASH = "SELECT approved_hash FROM tool_pins WHERE server = ? AND tool = ?"
INSERT_SERVER = "INSERT INTO servers (server, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING"

# Parameters: server, tool, now, hash, definition, now, approved_by.
UPSERT_APPROVED = """
INSERT INTO tool_pins (server, tool, first_seen, approved_hash, approved_definition, approved_at, approved_by)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (server, tool) DO UPDATE SET
    approved_hash = excluded.approved_hash, approved_definition = excluded.approved_definition,
    approved_at = excluded.approved_at, approved_by = excluded.approved_by,
    pending_hash = NULL, pending_definition = NULL, pending_since = NULL, rejected_at = NULL
"""
# Parameters: server, tool, now, hash, definition, now.
UPSERT_PENDING = """
INSERT INTO tool_pins (server, tool, first_seen, pending_hash, pending_definition, pending_since)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (server, tool) DO UPDATE SET
    pending_hash = excluded.pending_hash, pending_definition = excluded.pending_definition,
    pending_since = excluded.pending_since, rejected_at = NULL
"""
# Parameters: server, tool.
DROP_PENDING = """
UPDATE tool_pins SET pending_hash = NULL, pending_definition = NULL, pending_since = NULL, rejected_at = NULL
WHERE server = ? AND tool = ?
"""
# Parameters: now, approved_by, server, tool.
APPROVE_PENDING = """
UPDATE tool_pins SET
    approved_hash = pending_hash, approved_definition = pending_definition, approved_at = ?, approved_by = ?,
    pending_hash = NULL, pending_definition = NULL, pending_since = NULL, rejected_at = NULL
WHERE server = ? AND tool = ?
"""
# Parameters: now, server, tool. A second rejection keeps the time of the first.
REJECT_PENDING = "UPDATE tool_pins SET rejected_at = COALESCE(rejected_at, ?) WHERE server = ? AND tool = ?"

RECOVERY_FIX = (
    "Restore it from a backup, or move it aside to start over (every tool is then trusted on first sight)."
)
# SQLite result codes (the prefix of `sqlite_errorname`), what each means and what to do.
SQLITE_PROBLEMS = (
    (
        "SQLITE_BUSY",
        "the database is locked by another process",
        "Retry, or stop the other mcp-guard process.",
    ),
    ("SQLITE_LOCKED", "the database is locked", "Retry, or stop the other mcp-guard process."),
    ("SQLITE_READONLY", "the database is read-only", "Make the file and its folder writable by this user."),
    (
        "SQLITE_CANTOPEN",
        "the file cannot be opened",
        "Check that the state directory is writable by this user.",
    ),
    ("SQLITE_PERM", "permission denied", "Check the owner and mode of the file and its folder."),
    ("SQLITE_FULL", "the disk is full", "Free disk space and retry."),
    ("SQLITE_IOERR", "a disk I/O error occurred", "Check the disk, then retry."),
    ("SQLITE_CORRUPT", "the file is corrupt", RECOVERY_FIX),
    ("SQLITE_NOTADB", "the file is not an SQLite database", RECOVERY_FIX),
)


def describe_sqlite_error(error_name: str) -> tuple[str, str]:
    """Return the problem and the fix for an SQLite error, given its `sqlite_errorname`."""
    for code, problem, fix in SQLITE_PROBLEMS:
        if error_name.startswith(code):
            return problem, fix
    return f"SQLite failed ({error_name})", "Check the file and the free disk space."


def record_from_row(row: tuple[Any, ...]) -> PinRecord:
    """Build a `PinRecord` from a row of `SELECT_PINS`."""
    server, tool, first_seen, approved_hash, approved, approved_at, approved_by, *pending_columns = row
    pending_hash, pending, pending_since, rejected_at = pending_columns
    return PinRecord(
        server=server,
        tool=tool,
        first_seen=datetime.fromisoformat(first_seen),
        approved_hash=approved_hash,
        approved_definition=None if approved is None else json.loads(approved),
        approved_at=_parse_time(approved_at),
        approved_by=approved_by,
        pending_hash=pending_hash,
        pending_definition=None if pending is None else json.loads(pending),
        pending_since=_parse_time(pending_since),
        rejected_at=_parse_time(rejected_at),
    )


def dump_definition(tool: Mapping[str, Any]) -> str:
    """Serialise the pinned fields of a tool definition for storage."""
    return json.dumps(pinned_fields(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def storable_name(name: str) -> str:
    """Return `name` with lone surrogates escaped, because SQLite text must be valid UTF-8."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def utc_now() -> str:
    """Return the current time as stored: ISO 8601, UTC, whole seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
