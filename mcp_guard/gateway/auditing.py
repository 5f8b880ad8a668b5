"""The audit stage of the call pipeline.

It commits an intent row (with the policy decision) before the call goes on,
and exactly one outcome row however the call ends: result, tool error, denial,
limit, downstream failure, timeout or cancellation. If the intent cannot be
written the call is denied, unless the policy file chose to proceed without
an audit trail.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import structlog

from mcp_guard.audit import AuditedCall, AuditStore, CallIntent
from mcp_guard.errors import AuditUnavailable
from mcp_guard.gateway.pipeline import Handler, ToolCall, ToolResult, tool_error

log = structlog.get_logger(module=__name__)

# How much of the result's text is handed to the store, which redacts it and only then cuts it to
# its own, shorter preview length. Cutting here first could split a secret so that its redaction
# pattern no longer matches. The margin exceeds the longest secret the patterns cover (a PEM
# private key block of a few KiB), so a secret cut at this point starts beyond the stored preview.
PREVIEW_SOURCE_CHARS = 16 * 1024


class AuditStage:
    """Records each call's intent before it proceeds and its outcome after."""

    def __init__(
        self,
        store: AuditStore,
        *,
        proceed_without_audit: bool = False,
        stop_reason: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._store = store
        self._proceed = proceed_without_audit
        self._stop_reason = stop_reason

    async def __call__(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        """Run the rest of the pipeline inside an audited call."""
        intent = CallIntent(
            call_id=call.call_id,
            client=call.client,
            organisation=call.organisation,
            session=call.session,
            protocol_era=call.protocol_version,
            server=call.tool.server,
            tool=call.tool.name,
            arguments=call.arguments,
            decision=call.decision,
            rule=call.rule,
        )
        async with AsyncExitStack() as stack:
            try:
                audited = await stack.enter_async_context(AuditedCall(self._store, intent))
            except AuditUnavailable as exc:
                return await self._unaudited(call, next_handler, exc)
            try:
                result = await next_handler(call)
            except anyio.get_cancelled_exc_class():
                reason = self._stop_reason()
                if reason is not None and call.outcome is None:
                    audited.finish(
                        "gateway_shutdown", detail=f"the gateway stopped during the call ({reason})"
                    )
                raise
            except Exception:
                # A stage that set the outcome before raising (a downstream JSON-RPC error) is more
                # precise than the recorder's guess from the exception type.
                if call.outcome is not None:
                    audited.finish(call.outcome, detail=call.detail)
                raise
            audited.finish(
                call.outcome or ("tool_error" if result.get("isError") else "succeeded"),
                preview=result_preview(result),
                result_bytes=result_size(result),
                detail=call.detail,
            )
            return result
        raise AssertionError("unreachable: the block above always returns or raises")

    async def _unaudited(self, call: ToolCall, next_handler: Handler, exc: AuditUnavailable) -> ToolResult:
        if self._proceed:
            log.warning("call_not_audited", call_id=call.call_id, reason=exc.reason)
            return await next_handler(call)
        log.error("call_denied_audit_unavailable", call_id=call.call_id, reason=exc.reason)
        return tool_error(str(exc))


def result_preview(result: ToolResult) -> str:
    """Return the start of a result's text, for the store to redact and shorten."""
    for block in result.get("content") or []:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            return str(block["text"])[:PREVIEW_SOURCE_CHARS]
    return ""


def result_size(result: ToolResult) -> int:
    """Estimate a result's size in bytes from its text and binary payloads, without serialising it."""
    size = 0
    for block in result.get("content") or []:
        if isinstance(block, dict):
            size += sum(
                len(value)
                for key, value in block.items()
                if key in ("text", "data") and isinstance(value, str)
            )
            resource: Any = block.get("resource")
            if isinstance(resource, dict):
                size += sum(
                    len(v) for k, v in resource.items() if k in ("text", "blob") and isinstance(v, str)
                )
    return size
