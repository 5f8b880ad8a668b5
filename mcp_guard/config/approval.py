"""Frozen model of the policy file's `[approval]` section: how calls under `approve` rules reach a person."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

# Some desktop clients end a tool call after about 60 seconds, so the default wait stays below that.
DEFAULT_TIMEOUT_SECONDS = 45.0


class ApprovalSettings(BaseModel):
    """The `[approval]` section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = DEFAULT_TIMEOUT_SECONDS
    """How long a call waits for a person's answer to an in-call question before it is denied.
    Keep it below the client's own tool-call timeout."""

    grant_minutes: Annotated[list[Annotated[int, Field(gt=0, le=24 * 60)]], Field(max_length=4)] = [10]
    """Durations offered besides "once": "approve this exact call for N minutes"."""

    offer_session: StrictBool = False
    """Offer "approve this tool for the rest of this session", which then covers any arguments."""

    pending_seconds: Annotated[float, Field(gt=0, le=7 * 86_400)] = 600.0
    """How long a request waits for a decision made out of band (`mcp-guard approvals`)."""

    max_pending_per_client: Annotated[int, Field(gt=0, le=1000)] = 5
    """Requests a client may have waiting at once; more are denied without asking anyone."""

    denials_before_cooldown: Annotated[int, Field(gt=0, le=100)] = 3
    """Denials in a row after which the client's calls that need approval are denied without asking."""

    cooldown_seconds: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    """How long that cool-down lasts, counted from the last denial."""

    webhook_url_from: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """Environment variable holding a webhook URL (http or https) that receives a JSON message for each
    new request waiting for an out-of-band decision. The URL stays out of the file because it often
    carries a secret."""

    pending_hint: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    """The request to the client's user in the "approval pending" error, in place of running
    `mcp-guard approvals ... approve ID` on the gateway's host; `{id}` becomes the request id.
    For a shared gateway, whose users have no shell on its host: "Ask #platform to approve
    request {id}". The model reads this text, so never put a link that decides in it."""

    page_port: Annotated[StrictInt, Field(ge=0, le=65_535)] | None = None
    """Port on 127.0.0.1 of the approval page, where a person approves waiting calls through one-time
    links; 0 picks a free port. Without it, waiting calls are decided with `mcp-guard approvals`."""

    @field_validator("pending_hint")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            raise ValueError("must be one line without control characters; write it as plain text")
        return value
