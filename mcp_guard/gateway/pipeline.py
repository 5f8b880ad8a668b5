"""The chain of stages a tool call passes through before and after forwarding.

Each stage is an async function that receives the call and the next stage and
returns the result dict, so a stage can refuse (return a tool error without
calling on), wrap (time, record, release budget in `finally`), or rewrite.
`build_call_pipeline` assembles the chain in one place, in the order the
guards apply, so a reader sees the whole path of a call at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mcp_guard.audit.records import Decision, OutcomeKind
from mcp_guard.downstream.catalog import ExportedTool
from mcp_guard.downstream.connection import ProgressCallback
from mcp_guard.policy.decisions import Decision as PolicyDecision

ToolResult = dict[str, Any]
"""A tools/call result as a wire dict."""

Elicit = Callable[[str, dict[str, Any], float], Awaitable[dict[str, Any]]]
"""Asks the calling client's user a form question: (message, schema, timeout) -> the ElicitResult as a
dict. Raises TimeoutError when no response came within the timeout."""


@dataclass(frozen=True)
class UrlQuestion:
    """A way to send the calling client's user to a web page (URL-mode elicitation) within a call."""

    ask: Callable[[str, str, str, float], Awaitable[dict[str, Any]]]
    """Asks the user to open a URL: (message, url, elicitation id, timeout) -> the ElicitResult as a dict.
    Raises TimeoutError when no response came within the timeout."""
    complete: Callable[[str], Awaitable[None]]
    """Tells the client that the interaction of an elicitation id has finished."""


@dataclass(frozen=True)
class InputRound:
    """The MRTR fields of a 2026-07-28 tools/call request, as the client sent them and not yet verified."""

    responses: dict[str, dict[str, Any]]
    """The `inputResponses` entries as wire dicts, empty on a first call."""
    state: str | None
    """The `requestState` echoed from an earlier input-required result."""


@dataclass
class ToolCall:
    """One tools/call request on its way through the gateway."""

    client: str
    """The calling client: the profile of a stdio gateway, or the authenticated client over HTTP."""
    session: str | None
    """The connection or MCP session the call arrived on, if the transport has one."""
    protocol_version: str
    tool: ExportedTool
    arguments: dict[str, Any]
    organisation: str | None = None
    anonymous: bool = False
    """The caller did not authenticate: an HTTP caller mapped to `allow_unauthenticated_as`."""
    progress: ProgressCallback | None = None
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    forwarded_at: float | None = None
    """When the call was sent downstream (monotonic clock), for costs per second of the call itself."""
    billed_seconds: float | None = None
    """Seconds the call's own work took where the gateway measured it (run_code's sandbox time);
    costs per second use it instead of the time since `forwarded_at`."""
    decision: Decision = "auto"
    """The policy decision, set by the policy stage before the call is audited."""
    rule: str | None = None
    """The policy rule behind `decision`."""
    outcome: OutcomeKind | None = None
    """Set by a stage that ends the call for a reason the result alone does not show (denied, rate limited)."""
    detail: str | None = None
    """The reason the call ended as it did, for the audit trail."""
    policy: PolicyDecision | None = None
    """The full policy decision, with the rule a call may start."""
    notify: Callable[[str], Awaitable[None]] | None = None
    """Sends a log message to the calling client, for rules that notify."""
    elicit: Elicit | None = None
    """Asks the calling client's user a form question; None when the client cannot be asked within the call."""
    url_question: UrlQuestion | None = None
    """Sends the calling client's user to a web page; None when the client cannot be sent there within the call."""
    input_round: InputRound | None = None
    """Set only for a 2026-07-28 request from a client that declared form elicitation, which may be
    asked through an input-required result."""


Handler = Callable[[ToolCall], Awaitable[ToolResult]]
Stage = Callable[[ToolCall, Handler], Awaitable[ToolResult]]


def build_call_pipeline(forward: Handler, stages: Sequence[Stage] = ()) -> Handler:
    """Chain `stages` (outermost first) in front of `forward`.

    `assemble_call_pipeline` in `server.py` chooses the gateway's stages and
    their order. This function only chains them.
    """
    handler = forward
    for stage in reversed(stages):
        handler = partial(_call_stage, stage, handler)
    return handler


async def _call_stage(stage: Stage, next_handler: Handler, call: ToolCall) -> ToolResult:
    return await stage(call, next_handler)


def tool_error(message: str) -> ToolResult:
    """Build a tool result that reports the failure, and its reason, to the model."""
    return {"content": [{"type": "text", "text": message}], "isError": True}
