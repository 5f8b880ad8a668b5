"""An in-memory `AuditStore` for unit tests of the packages that write the trail.

It redacts, checks the intent-then-outcome sequence and filters like the SQLite
store, but keeps no hash chain and loses everything on exit. `fail_writes`
makes every write raise `AuditUnavailable`, to test fail-closed paths.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import TracebackType

from mcp_guard.audit.chain import ChainIntact, VerifyResult
from mcp_guard.audit.query import CallFilter
from mcp_guard.audit.records import CallIntent, CallOutcome, canonical_utc
from mcp_guard.audit.redaction import DEFAULT_REDACTOR, Redactor
from mcp_guard.audit.store import DEFAULT_SEARCH_LIMIT, CallRecord, PruneResult, StoredRow, sequence_error
from mcp_guard.errors import AuditUnavailable


class MemoryAuditStore:
    """Keeps the rows of the trail in a list.

    Args:
        redactor: Masks secrets before rows are kept, as the real stores do.
    """

    def __init__(self, redactor: Redactor = DEFAULT_REDACTOR) -> None:
        self.rows: list[StoredRow] = []
        self.failure_reason: str | None = None
        self._redactor = redactor
        self._stored: set[tuple[str, str]] = set()
        self._next_row_id = 1
        self._closed = False

    async def __aenter__(self) -> MemoryAuditStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    def fail_writes(self, reason: str | None) -> None:
        """Make every later write raise `AuditUnavailable(reason)`; None restores writing."""
        self.failure_reason = reason

    async def record_intent(self, intent: CallIntent) -> None:
        """Keep a call's intent, redacted.

        Raises:
            AuditUnavailable: `fail_writes` is set, or the store is closed.
            ValueError: The call id already has an intent.
        """
        self._append(intent.redacted(self._redactor))

    async def record_outcome(self, outcome: CallOutcome) -> None:
        """Keep a call's outcome, redacted.

        Raises:
            AuditUnavailable: `fail_writes` is set, or the store is closed.
            ValueError: The call id has no intent, or already has an outcome.
        """
        self._append(outcome.redacted(self._redactor))

    async def search(
        self, filters: CallFilter, *, limit: int = DEFAULT_SEARCH_LIMIT, oldest_first: bool = False
    ) -> list[CallRecord]:
        """Return up to `limit` calls that match `filters`: the newest, or with `oldest_first` the oldest."""
        calls = [
            call for call in self._calls() if filters.matches(call.intent, call.outcome, call.intent_row_id)
        ]
        ordered = calls if oldest_first else list(reversed(calls))
        return ordered[:limit]

    async def get_call(self, call_id: str) -> CallRecord | None:
        """Return one call, or None if no intent has that id."""
        return next((call for call in self._calls() if call.intent.call_id == call_id), None)

    async def last_row_id(self) -> int:
        """Return the id of the newest row, or 0 if there is none."""
        return self._next_row_id - 1

    async def rows_after(self, row_id: int, *, limit: int = DEFAULT_SEARCH_LIMIT) -> list[StoredRow]:
        """Return up to `limit` rows with an id above `row_id`, oldest first."""
        return [row for row in self.rows if row.row_id > row_id][:limit]

    async def verify(self) -> VerifyResult:
        """Return intact: rows in memory cannot be edited from outside."""
        first = self.rows[0].row_id if self.rows else None
        last = self.rows[-1].row_id if self.rows else None
        return ChainIntact("intact", len(self.rows), first, last)

    async def prune(self, older_than: timedelta | None = None, max_rows: int | None = None) -> PruneResult:
        """Delete the oldest rows by age or count; unlike the SQLite store it keeps no anchor."""
        if older_than is None and max_rows is None:
            raise ValueError("prune needs older_than, max_rows or both")
        keep_from = 0
        if older_than is not None:
            threshold = canonical_utc(datetime.now(UTC) - older_than)
            newer = [index for index, row in enumerate(self.rows) if row.record.time >= threshold]
            keep_from = newer[0] if newer else len(self.rows)
        if max_rows is not None:
            keep_from = max(keep_from, len(self.rows) - max_rows)
        if keep_from <= 0:
            return PruneResult(0, None)
        anchor_row_id = self.rows[keep_from - 1].row_id
        del self.rows[:keep_from]
        return PruneResult(keep_from, anchor_row_id)

    async def close(self) -> None:
        """Refuse further writes; the rows stay readable."""
        self._closed = True

    def _append(self, record: CallIntent | CallOutcome) -> None:
        if self._closed:
            raise AuditUnavailable("the audit store is closed")
        if self.failure_reason is not None:
            raise AuditUnavailable(self.failure_reason)
        error = sequence_error(record, self._stored)
        if error is not None:
            raise error
        if isinstance(record, CallIntent):
            self.rows.append(StoredRow(self._next_row_id, "intent", record))
        else:
            self.rows.append(StoredRow(self._next_row_id, "outcome", record))
        self._next_row_id += 1

    def _calls(self) -> list[CallRecord]:
        outcomes = {row.record.call_id: row for row in self.rows if row.kind == "outcome"}
        calls: list[CallRecord] = []
        for row in self.rows:
            if isinstance(row.record, CallIntent):
                closing = outcomes.get(row.record.call_id)
                outcome = closing.record if closing is not None else None
                assert outcome is None or isinstance(outcome, CallOutcome)
                calls.append(
                    CallRecord(
                        row.record, outcome, row.row_id, closing.row_id if closing is not None else None
                    )
                )
        return calls
