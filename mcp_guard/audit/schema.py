"""The SQLite schema of the audit trail and the mapping between rows and records.

Intents and outcomes share one table, `audit_rows`, so they form one chain in one
id sequence. A row uses the columns of its kind and leaves the others NULL. Every
column except the two hash columns is covered by the row's HMAC. The `calls` view
joins each intent with its outcome for searching. `audit_meta` contains the schema
version and the pruning anchor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mcp_guard.audit.query import arguments_json
from mcp_guard.audit.records import CallIntent, CallOutcome

SCHEMA_VERSION = 1

INTENT_COLUMNS = (
    "client",
    "organisation",
    "session",
    "protocol_era",
    "server",
    "tool",
    "arguments",
    "decision",
    "rule",
)
OUTCOME_COLUMNS = ("outcome", "latency_ms", "result_bytes", "preview", "detail")
# The columns the HMAC covers, in table order.
HASHED_COLUMNS = ("id", "kind", "call_id", "time", *INTENT_COLUMNS, *OUTCOME_COLUMNS)
ALL_COLUMNS = (*HASHED_COLUMNS, "prev_hash", "row_hash")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit_rows (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('intent', 'outcome')),
    call_id TEXT NOT NULL,
    time TEXT NOT NULL,
    client TEXT,
    organisation TEXT,
    session TEXT,
    protocol_era TEXT,
    server TEXT,
    tool TEXT,
    arguments TEXT,
    decision TEXT,
    rule TEXT,
    outcome TEXT,
    latency_ms REAL,
    result_bytes INTEGER,
    preview TEXT,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS audit_rows_call ON audit_rows (call_id, kind);
CREATE INDEX IF NOT EXISTS audit_rows_time ON audit_rows (time);
CREATE INDEX IF NOT EXISTS audit_rows_server_tool ON audit_rows (server, tool);
CREATE TABLE IF NOT EXISTS audit_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO audit_meta (name, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
CREATE VIEW IF NOT EXISTS calls AS
SELECT
    i.id AS intent_row_id,
    o.id AS outcome_row_id,
    i.call_id, i.time, i.client, i.organisation, i.session, i.protocol_era, i.server, i.tool,
    i.arguments, i.decision, i.rule,
    o.time AS outcome_time, o.outcome, o.latency_ms, o.result_bytes, o.preview, o.detail
FROM audit_rows AS i
LEFT JOIN audit_rows AS o ON o.call_id = i.call_id AND o.kind = 'outcome'
WHERE i.kind = 'intent';
"""

INSERT_ROW = f"INSERT INTO audit_rows ({', '.join(ALL_COLUMNS)}) VALUES ({', '.join('?' * len(ALL_COLUMNS))})"
SELECT_ROWS = f"SELECT {', '.join(ALL_COLUMNS)} FROM audit_rows"
CALL_COLUMNS = (
    "intent_row_id",
    "outcome_row_id",
    "call_id",
    "time",
    *INTENT_COLUMNS,
    "outcome_time",
    *OUTCOME_COLUMNS,
)
SELECT_CALLS = f"SELECT {', '.join(CALL_COLUMNS)} FROM calls"


def hashed_fields(row_id: int, record: CallIntent | CallOutcome) -> dict[str, Any]:
    """Return the values of every hashed column for a record stored as row `row_id`."""
    fields: dict[str, Any] = dict.fromkeys(HASHED_COLUMNS)
    fields.update(id=row_id, call_id=record.call_id, time=record.time)
    if isinstance(record, CallIntent):
        fields.update(record.model_dump(include=set(INTENT_COLUMNS)))
        fields.update(kind="intent", arguments=arguments_json(record))
    else:
        fields.update(record.model_dump(include=set(OUTCOME_COLUMNS)))
        fields.update(kind="outcome")
    return fields


def row_values(fields: Mapping[str, Any], prev_hash: str, row_hash: str) -> tuple[Any, ...]:
    """Return the parameters of `INSERT_ROW` for hashed fields and their chain hashes."""
    return (*(fields[column] for column in HASHED_COLUMNS), prev_hash, row_hash)


def split_row(values: Sequence[Any]) -> tuple[dict[str, Any], str, str]:
    """Split a `SELECT_ROWS` result into hashed fields, prev_hash and row_hash."""
    fields = dict(zip(HASHED_COLUMNS, values[: len(HASHED_COLUMNS)], strict=True))
    return fields, values[-2], values[-1]


def record_from_fields(fields: Mapping[str, Any]) -> CallIntent | CallOutcome:
    """Rebuild the record a row stores."""
    common = {"call_id": fields["call_id"], "time": fields["time"]}
    if fields["kind"] == "intent":
        values = {column: fields[column] for column in INTENT_COLUMNS}
        values["arguments"] = json.loads(values["arguments"])
        return CallIntent(**common, **values)
    return CallOutcome(**common, **{column: fields[column] for column in OUTCOME_COLUMNS})


def records_from_call_row(values: Sequence[Any]) -> tuple[CallIntent, CallOutcome | None, int, int | None]:
    """Split a `SELECT_CALLS` result into the intent, the outcome and their row ids."""
    row = dict(zip(CALL_COLUMNS, values, strict=True))
    intent = CallIntent(
        call_id=row["call_id"],
        time=row["time"],
        **{column: row[column] for column in INTENT_COLUMNS if column != "arguments"},
        arguments=json.loads(row["arguments"]),
    )
    outcome = None
    if row["outcome_row_id"] is not None:
        outcome = CallOutcome(
            call_id=row["call_id"],
            time=row["outcome_time"],
            **{column: row[column] for column in OUTCOME_COLUMNS},
        )
    return intent, outcome, row["intent_row_id"], row["outcome_row_id"]
