"""Search filters over recorded calls, for the SQLite and the in-memory store alike.

A `CallFilter` matches a call (its intent and, if present, its outcome) and can
render itself as an SQL condition over the `calls` view of `schema`. Both forms
return the same calls, which the stores' tests check on the same data.
"""

from __future__ import annotations

import json
import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mcp_guard.audit.records import CallIntent, CallOutcome, Decision, OutcomeKind, UtcTime

# The `outcome` filter value that matches calls without an outcome yet.
RUNNING = "running"
# SQLite's lower() folds ASCII letters only, so the in-memory match folds the same way.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# Columns of the `calls` view that free-text search looks in.
TEXT_COLUMNS = (
    "call_id",
    "client",
    "organisation",
    "session",
    "server",
    "tool",
    "arguments",
    "rule",
    "preview",
    "detail",
)


class CallFilter(BaseModel):
    """Conditions a call must meet to be listed; unset fields match everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client: str | None = Field(default=None, description="Client profile, exact.")
    server: str | None = Field(default=None, description="Downstream server id, exact.")
    tool: str | None = Field(default=None, description="Tool name, exact.")
    decision: Decision | None = Field(default=None, description="Policy decision, exact.")
    outcome: OutcomeKind | Literal["running"] | None = Field(
        default=None, description="Outcome, or `running` for calls without one yet."
    )
    since: UtcTime | None = Field(default=None, description="Earliest intent time, inclusive.")
    until: UtcTime | None = Field(default=None, description="Latest intent time, exclusive.")
    text: str | None = Field(default=None, description="Substring of any text field, ASCII case-insensitive.")
    after_row_id: int | None = Field(
        default=None, description="Only calls whose intent row id is above this."
    )

    def matches(self, intent: CallIntent, outcome: CallOutcome | None, intent_row_id: int) -> bool:
        """Return whether a call meets every condition."""
        if self.after_row_id is not None and intent_row_id <= self.after_row_id:
            return False
        exact = (
            (self.client, intent.client),
            (self.server, intent.server),
            (self.tool, intent.tool),
            (self.decision, intent.decision),
        )
        if any(wanted is not None and wanted != actual for wanted, actual in exact):
            return False
        if self.outcome == RUNNING and outcome is not None:
            return False
        if self.outcome not in (None, RUNNING) and (outcome is None or outcome.outcome != self.outcome):
            return False
        if self.since is not None and intent.time < self.since:
            return False
        if self.until is not None and intent.time >= self.until:
            return False
        return self.text is None or self._matches_text(intent, outcome)

    def to_sql(self) -> tuple[str, list[object]]:
        """Return a WHERE condition over the `calls` view and its parameters."""
        conditions: list[str] = []
        parameters: list[object] = []
        for column, value in (
            ("client", self.client),
            ("server", self.server),
            ("tool", self.tool),
            ("decision", self.decision),
            ("outcome", None if self.outcome == RUNNING else self.outcome),
        ):
            if value is not None:
                conditions.append(f"{column} = ?")
                parameters.append(value)
        if self.outcome == RUNNING:
            conditions.append("outcome IS NULL")
        if self.after_row_id is not None:
            conditions.append("intent_row_id > ?")
            parameters.append(self.after_row_id)
        if self.since is not None:
            conditions.append("time >= ?")
            parameters.append(self.since)
        if self.until is not None:
            conditions.append("time < ?")
            parameters.append(self.until)
        if self.text is not None:
            searched = " OR ".join(f"instr(lower({column}), ?) > 0" for column in TEXT_COLUMNS)
            conditions.append(f"({searched})")
            parameters.extend([self.text.translate(_ASCII_LOWER)] * len(TEXT_COLUMNS))
        return (" AND ".join(conditions) or "1"), parameters

    def _matches_text(self, intent: CallIntent, outcome: CallOutcome | None) -> bool:
        assert self.text is not None
        needle = self.text.translate(_ASCII_LOWER)
        fields = [
            intent.call_id,
            intent.client,
            intent.organisation,
            intent.session,
            intent.server,
            intent.tool,
            arguments_json(intent),
            intent.rule,
        ]
        if outcome is not None:
            fields += [outcome.preview, outcome.detail]
        return any(field is not None and needle in field.translate(_ASCII_LOWER) for field in fields)


def arguments_json(intent: CallIntent) -> str:
    """Return the arguments as the stored JSON text (sorted keys, non-ASCII kept)."""
    return json.dumps(intent.arguments, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
