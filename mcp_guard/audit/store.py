"""The `AuditStore` protocol and the values its queries return.

The gateway writes through `record_intent` and `record_outcome`; the CLI reads
through the query methods. `sqlite.SqliteAuditStore` is the real backend and
`memory.MemoryAuditStore` a small one for unit tests of other packages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol

from mcp_guard.audit.chain import VerifyResult
from mcp_guard.audit.query import CallFilter
from mcp_guard.audit.records import CallIntent, CallOutcome

# Rows returned by one `search` when the caller sets no limit.
DEFAULT_SEARCH_LIMIT = 100


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as stored: its intent and, once the call is over, its outcome."""

    intent: CallIntent
    outcome: CallOutcome | None
    intent_row_id: int
    outcome_row_id: int | None


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of the trail, in chain order."""

    row_id: int
    kind: Literal["intent", "outcome"]
    record: CallIntent | CallOutcome


@dataclass(frozen=True, slots=True)
class PruneResult:
    """The outcome of `prune`: rows deleted and the new anchor.

    Attributes:
        rows_deleted: How many rows were deleted.
        anchor_row_id: The last deleted row, now the anchor; None if nothing was deleted.
    """

    rows_deleted: int
    anchor_row_id: int | None


class AuditStore(Protocol):
    """Storage of the audit trail: the gateway writes every call to it, the CLI reads it back.

    Writes return only once the row is durable. Stores redact every record before
    it is hashed or written. A store that cannot write raises `AuditUnavailable`,
    and its caller denies the call (fail closed).
    """

    async def record_intent(self, intent: CallIntent) -> None:
        """Store a call's intent; return once it is committed.

        Raises:
            AuditUnavailable: The row could not be written.
            ValueError: The call id already has an intent.
        """
        ...

    async def record_outcome(self, outcome: CallOutcome) -> None:
        """Store a call's outcome; return once it is committed.

        Raises:
            AuditUnavailable: The row could not be written.
            ValueError: The call id has no intent, or already has an outcome.
        """
        ...

    async def search(
        self, filters: CallFilter, *, limit: int = DEFAULT_SEARCH_LIMIT, oldest_first: bool = False
    ) -> list[CallRecord]:
        """Return up to `limit` calls that match `filters`: the newest, or with `oldest_first` the oldest."""
        ...

    async def get_call(self, call_id: str) -> CallRecord | None:
        """Return one call, or None if no intent has that id."""
        ...

    async def last_row_id(self) -> int:
        """Return the id of the newest row, or 0 if there is none."""
        ...

    async def rows_after(self, row_id: int, *, limit: int = DEFAULT_SEARCH_LIMIT) -> list[StoredRow]:
        """Return up to `limit` rows with an id above `row_id`, oldest first."""
        ...

    async def verify(self) -> VerifyResult:
        """Check the whole chain and return the first broken row or that it is intact."""
        ...

    async def prune(self, older_than: timedelta | None = None, max_rows: int | None = None) -> PruneResult:
        """Delete the oldest rows, keeping the rest verifiable.

        Args:
            older_than: Delete rows from before this long ago.
            max_rows: Keep at most this many rows.
        """
        ...

    async def close(self) -> None:
        """Write what is pending, then release the store's resources."""
        ...


def sequence_error(record: CallIntent | CallOutcome, stored: set[tuple[str, str]]) -> Exception | None:
    """Return the error for a record out of sequence, else add it to `stored` and return None.

    Args:
        record: The intent or outcome about to be written.
        stored: The (call id, kind) pairs already written, updated in place.
    """
    call_id = record.call_id
    if isinstance(record, CallIntent):
        if (call_id, "intent") in stored:
            return ValueError(f"call {call_id!r} already has an intent; call ids must be unique")
        stored.add((call_id, "intent"))
        return None
    if (call_id, "intent") not in stored:
        return ValueError(f"call {call_id!r} has no intent; record the intent before the outcome")
    if (call_id, "outcome") in stored:
        return ValueError(f"call {call_id!r} already has an outcome")
    stored.add((call_id, "outcome"))
    return None
