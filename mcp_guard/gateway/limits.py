"""The rate-limit stage of the call pipeline.

It runs after the policy allowed a call, so a denied call spends nothing, and
before approval, so no person is asked about a call the limits would reject.
A rejected call ends with a tool error that names the limit and when to retry,
and with the outcome `rate_limited` in the audit trail. A result over
`max_output_tokens` is cut on its way back. If the store cannot be reached, the
call is rejected, unless the policy file chose `on_store_failure = "allow"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from mcp_guard.config.models import GatewayConfig
from mcp_guard.gateway.pipeline import Handler, ToolCall, ToolResult, tool_error
from mcp_guard.ratelimit.limiter import Admission, CallFacts, Limiter, LimitExceeded
from mcp_guard.ratelimit.store import LimitStoreUnavailable
from mcp_guard.ratelimit.tokens import argument_tokens, result_tokens, truncate_result

log = structlog.get_logger(module=__name__)


class LimitStage:
    """Takes each call's share of every limit that applies before it goes on, and settles it after."""

    def __init__(self, limiter: Limiter, config: GatewayConfig, clock: Callable[[], float]) -> None:
        self.limiter = limiter
        self._config = config
        self._clock = clock
        self._fail_open = config.limits.on_store_failure == "allow"

    async def __call__(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        """Reject the call if it does not fit its limits; otherwise run it and settle its costs."""
        server = self._config.servers.get(call.tool.server)
        facts = CallFacts(
            client=call.client,
            organisation=call.organisation,
            server=call.tool.server,
            tool=call.tool.name,
            session=call.session,
            anonymous=call.anonymous,
            needs_approval=call.decision == "approve",
            input_tokens=argument_tokens(call.arguments),
            timeout_seconds=server.call_timeout_seconds if server is not None else 60.0,
        )
        plan = self.limiter.plan(facts)
        if isinstance(plan, LimitExceeded):
            return self._reject(call, plan)
        admission: Admission | LimitExceeded | None = None
        if plan.meters:
            try:
                # Shielded: a call cancelled while the store decides must not leave its slot taken.
                with anyio.CancelScope(shield=True):
                    admission = await self.limiter.admit(plan, self._clock())
            except LimitStoreUnavailable as exc:
                if not self._fail_open:
                    log.error("limits_unavailable_call_rejected", call_id=call.call_id, reason=exc.reason)
                    call.outcome, call.detail = "rate_limited", str(exc)
                    return tool_error(f"Rejected by mcp-guard: {exc} Calls are rejected until it is back.")
                log.warning("limits_unavailable_call_allowed", call_id=call.call_id, reason=exc.reason)
        if isinstance(admission, LimitExceeded):
            return self._reject(call, admission)
        started = time.monotonic()
        output_tokens = 0
        try:
            result = await next_handler(call)
            if plan.output_cap is not None:
                cap, limit = plan.output_cap
                result = truncate_result(
                    result,
                    cap,
                    reason=f"max_output_tokens of limit {limit!r}",
                    output_schema="outputSchema" in call.tool.definition,
                )
            output_tokens = result_tokens(result)
            return result
        finally:
            if admission is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.limiter.finish(admission, output_tokens, time.monotonic() - started)
                    except LimitStoreUnavailable as exc:
                        log.warning("limits_not_settled", call_id=call.call_id, reason=exc.reason)

    def _reject(self, call: ToolCall, rejection: LimitExceeded) -> ToolResult:
        call.outcome = "rate_limited"
        call.detail = f"limit {rejection.limit!r}: {rejection.dimension}"
        log.info(
            "tool_call_rate_limited",
            call_id=call.call_id,
            client=call.client,
            limit=rejection.limit,
            dimension=rejection.dimension,
            retry_after=rejection.retry_after,
        )
        return tool_error(rejection.message)
