"""The audit trail: what each call asked, who allowed it, and how it ended.

Every call that reaches the gateway is recorded as an intent before it is
forwarded and an outcome once it ends, in a hash-chained SQLite database whose
edits `verify` detects. Secrets are masked before anything is stored or logged.
"""

from __future__ import annotations

from mcp_guard.audit.chain import ChainBroken, ChainIntact, VerifyResult
from mcp_guard.audit.files import DEFAULT_KEY_ENV_VAR, AuditPaths, load_audit_key
from mcp_guard.audit.memory import MemoryAuditStore
from mcp_guard.audit.query import CallFilter
from mcp_guard.audit.recorder import AuditedCall
from mcp_guard.audit.records import (
    CallIntent,
    CallOutcome,
    Decision,
    OutcomeKind,
    new_call_id,
    utc_now,
)
from mcp_guard.audit.redaction import DEFAULT_REDACTOR, Redactor, redact_event
from mcp_guard.audit.sqlite import SqliteAuditStore
from mcp_guard.audit.store import AuditStore, CallRecord, PruneResult, StoredRow

__all__ = [
    "DEFAULT_KEY_ENV_VAR",
    "DEFAULT_REDACTOR",
    "AuditPaths",
    "AuditStore",
    "AuditedCall",
    "CallFilter",
    "CallIntent",
    "CallOutcome",
    "CallRecord",
    "ChainBroken",
    "ChainIntact",
    "Decision",
    "MemoryAuditStore",
    "OutcomeKind",
    "PruneResult",
    "Redactor",
    "SqliteAuditStore",
    "StoredRow",
    "VerifyResult",
    "load_audit_key",
    "new_call_id",
    "redact_event",
    "utc_now",
]
