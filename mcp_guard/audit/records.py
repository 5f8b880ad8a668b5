"""Records of one tool call in the audit trail: an intent and an outcome.

The gateway writes a `CallIntent` before it forwards a call and a `CallOutcome`
once the call is over, whatever ended it. Both are frozen models of plain
values. Redaction and length limits are applied by `redacted()`, which every
store calls before a record is hashed or written; the models themselves accept
raw values.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, field_validator

from mcp_guard.audit.redaction import Redactor

Decision = Literal["auto", "notify", "approve", "deny"]
"""The policy decision for the call."""

OutcomeKind = Literal[
    "succeeded",
    "tool_error",
    "denied",
    "rate_limited",
    "approval_pending",
    "approval_declined",
    "approval_timed_out",
    "cancelled",
    "downstream_failed",
    "gateway_shutdown",
]
"""The way a call ended."""

DECISIONS: tuple[str, ...] = get_args(Decision)
OUTCOME_KINDS: tuple[str, ...] = get_args(OutcomeKind)

# Characters kept of a result or error text. The text is cut after redaction, so a
# secret cannot leak through the cut.
PREVIEW_MAX_CHARS = 500
DETAIL_MAX_CHARS = 2000
# Arguments larger than this (as canonical JSON) are stored as a truncated text
# head, so one huge call cannot fill the disk.
ARGUMENTS_MAX_CHARS = 1_000_000
ARGUMENTS_HEAD_CHARS = 10_000
TRUNCATION_MARK = "…[truncated]"


def utc_now() -> str:
    """Return the current UTC time in the audit format, e.g. `2025-11-25T09:30:00.123456+00:00`."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_call_id() -> str:
    """Return a fresh call id (32 hex digits of a random UUID)."""
    return uuid.uuid4().hex


def canonical_utc(value: object) -> str:
    """Convert a datetime or ISO 8601 string to the audit format, which sorts as text.

    Raises:
        ValueError: The value is not a timezone-aware time.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"invalid ISO 8601 time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected a time, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"time {value.isoformat()!r} has no UTC offset; add one, e.g. +00:00")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


UtcTime = Annotated[str, BeforeValidator(canonical_utc)]
"""A UTC time stored as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, so text order is time order."""


class CallIntent(BaseModel):
    """A tool call the gateway is about to handle, written before anything is forwarded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time: UtcTime = Field(default_factory=utc_now, description="When the gateway received the call.")
    call_id: str = Field(min_length=1, max_length=200, description="Gateway-generated id (`new_call_id`).")
    client: str = Field(description="Client profile the call came from.")
    organisation: str | None = Field(default=None, description="Organisation of the client, if configured.")
    session: str | None = Field(default=None, description="Connection or MCP session id, if any.")
    protocol_era: str = Field(description="MCP protocol version of the session, e.g. `2025-11-25`.")
    server: str = Field(description="Configured id of the downstream server.")
    tool: str = Field(description="Tool name as the downstream server knows it.")
    arguments: JsonValue = Field(default=None, description="Call arguments; stores redact them.")
    decision: Decision = Field(description="What the policy decided.")
    rule: str | None = Field(default=None, description="Policy rule that produced the decision.")

    def redacted(self, redactor: Redactor) -> CallIntent:
        """Return a copy with secrets masked in every text field and the arguments bounded in size."""
        arguments = redactor.redact_value(self.arguments)
        text = json.dumps(arguments, ensure_ascii=False, sort_keys=True)
        if len(text) > ARGUMENTS_MAX_CHARS:
            arguments = {
                "truncated": True,
                "original_chars": len(text),
                "head": text[:ARGUMENTS_HEAD_CHARS] + TRUNCATION_MARK,
            }
        return self.model_copy(
            update={
                "client": redactor.redact_name(self.client),
                "organisation": _redact_optional(redactor.redact_name, self.organisation),
                "session": _redact_optional(redactor.redact_name, self.session),
                "server": redactor.redact_name(self.server),
                "tool": redactor.redact_name(self.tool),
                "arguments": arguments,
                "rule": _redact_optional(redactor.redact_name, self.rule),
            }
        )


class CallOutcome(BaseModel):
    """The end of a call, written once per call whatever ended it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    call_id: str = Field(min_length=1, max_length=200, description="Id of the intent this outcome closes.")
    time: UtcTime = Field(default_factory=utc_now, description="When the call ended.")
    outcome: OutcomeKind = Field(description="How the call ended.")
    latency_ms: float = Field(ge=0, description="Milliseconds from receiving the call to its end.")
    result_bytes: int = Field(default=0, ge=0, description="Size of the result sent to the client, in bytes.")
    preview: str = Field(
        default="", description="Start of the result or error text; stores redact and cut it."
    )
    detail: str | None = Field(
        default=None, description="Why the call ended this way, for denials and errors."
    )

    @field_validator("latency_ms")
    @classmethod
    def _require_finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"latency_ms must be a finite number, got {value!r}")
        return value

    def redacted(self, redactor: Redactor) -> CallOutcome:
        """Return a copy with secrets masked, then preview and detail cut to their maximum length."""
        detail = None
        if self.detail is not None:
            detail = _shorten(redactor.redact_text(self.detail), DETAIL_MAX_CHARS)
        return self.model_copy(
            update={
                "preview": _shorten(redactor.redact_text(self.preview), PREVIEW_MAX_CHARS),
                "detail": detail,
            }
        )


def _redact_optional(redact: Callable[[str], str], text: str | None) -> str | None:
    return None if text is None else redact(text)


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return text[: max_chars - len(TRUNCATION_MARK)] + TRUNCATION_MARK
