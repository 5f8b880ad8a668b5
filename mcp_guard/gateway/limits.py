"""The rate-limit stage of the call pipeline.

It runs after the policy allowed a call, so a denied call spends nothing, and
before approval, so no person is asked about a call the limits would reject.
A rejected call ends with a tool error that names the limit and when to retry,
and with the outcome `rate_limited` in the audit trail. A result over
`max_output_tokens` is cut on its way back. If the store cannot be reached, the
call is rejected, unless the policy file chose `on_store_failure = "allow"`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import structlog

from mcp_guard.config.models import DEFAULT_CALL_TIMEOUT_SECONDS, GatewayConfig
from mcp_guard.config.sandbox import SANDBOX_SERVER_ID
from mcp_guard.gateway.pipeline import Handler, ToolCall, ToolResult, tool_error
from mcp_guard.gateway.results import is_input_required
from mcp_guard.ratelimit.limiter import Admission, CallFacts, Limiter, LimitExceeded
from mcp_guard.ratelimit.store import LimitStoreUnavailable
from mcp_guard.ratelimit.tokens import argument_tokens, result_tokens, truncate_result

log = structlog.get_logger(module=__name__)

STORE_UNAVAILABLE = (
    "Rejected by mcp-guard: the rate-limit store cannot be reached, so calls are rejected until it is back. "
    "The gateway's log has the details."
)


class LimitStage:
    """Takes each call's share of every limit that applies before it goes on, and settles it after."""

    def __init__(self, limiter: Limiter, config: GatewayConfig, clock: Callable[[], float]) -> None:
        self.limiter = limiter
        self._config = config
        self._clock = clock
        self._fail_open = config.limits.on_store_failure == "allow"
        # Settlements still running; the event loop keeps only weak references to tasks.
        self._settling: set[asyncio.Task[None]] = set()

    async def __call__(self, call: ToolCall, next_handler: Handler) -> ToolResult:
        """Reject the call if it does not fit its limits; otherwise run it and settle its costs."""
        facts = self._facts(call)
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
                    # The store's address and the error stay in the log and the audit trail.
                    return tool_error(STORE_UNAVAILABLE)
                log.warning("limits_unavailable_call_allowed", call_id=call.call_id, reason=exc.reason)
        if isinstance(admission, LimitExceeded):
            return self._reject(call, admission)
        output_tokens = 0
        try:
            result = await next_handler(call)
            # An input-required result carries the approval question, which must reach the client whole.
            if plan.output_cap is not None and not is_input_required(result):
                cap, limit = plan.output_cap
                whole = result
                result = truncate_result(
                    result,
                    cap,
                    reason=f"max_output_tokens of limit {limit!r}",
                    output_schema="outputSchema" in call.tool.definition,
                )
                if result is not whole:
                    # The audit detail records why the client got less than the tool returned.
                    cut = f"result cut to about {cap} tokens by limit {limit!r}"
                    call.detail = f"{call.detail}; {cut}" if call.detail else cut
            output_tokens = result_tokens(result)
            return result
        finally:
            if admission is not None:
                self._settle_soon(call, admission, output_tokens)

    def _settle_soon(self, call: ToolCall, admission: Admission, output_tokens: int) -> None:
        """Settle the call's tokens, cost and slot without holding up its result.

        The settlement runs as a task of its own. Its first step queues it with the store
        (or, in memory, completes it) before the result can reach the client, so a call the
        client sends next is decided after it.
        """
        # Seconds of the forwarded call only: a wait for a person's approval costs nothing.
        seconds = _billed_seconds(call)
        settlement = self.limiter.finish(admission, output_tokens, seconds, self._clock())
        task = asyncio.get_running_loop().create_task(self._settle(call.call_id, settlement))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, call_id: str, settlement: Coroutine[Any, Any, None]) -> None:
        try:
            await settlement
        except LimitStoreUnavailable as exc:
            log.warning("limits_not_settled", call_id=call_id, reason=exc.reason)
        except Exception:
            log.exception("limits_settlement_failed", call_id=call_id)

    def _facts(self, call: ToolCall) -> CallFacts:
        server = self._config.servers.get(call.tool.server)
        call_timeout = server.call_timeout_seconds if server is not None else DEFAULT_CALL_TIMEOUT_SECONDS
        sandbox = self._config.sandbox
        if call.tool.server == SANDBOX_SERVER_ID and sandbox is not None:
            call_timeout = sandbox.timeout_seconds
        needs_approval = call.decision == "approve"
        # Only a call that needs approval can be released by a person's decision. The approval
        # stage ignores input responses on any other call, so they must not spare it a request.
        answers_question = (
            needs_approval and call.input_round is not None and bool(call.input_round.responses)
        )
        return CallFacts(
            client=call.client,
            organisation=call.organisation,
            server=call.tool.server,
            tool=call.tool.name,
            session=call.session,
            anonymous=call.anonymous,
            needs_approval=needs_approval,
            answers_question=answers_question,
            input_tokens=argument_tokens(call.arguments),
            # A call that waits for a person keeps its concurrent slot while it waits.
            timeout_seconds=call_timeout + (self._config.approval.timeout_seconds if needs_approval else 0.0),
        )

    async def charge_approval(self, call: ToolCall) -> ToolResult | None:
        """Take one request from the caller's `approvals_per_hour` limits, or return the rejection.

        The approval stage calls it just before it asks a person, so that only real questions count.
        """
        plan = self.limiter.approval_plan(self._facts(call))
        if not plan.meters:
            return None
        try:
            with anyio.CancelScope(shield=True):
                admission = await self.limiter.admit(plan, self._clock())
        except LimitStoreUnavailable as exc:
            if self._fail_open:
                log.warning("limits_unavailable_call_allowed", call_id=call.call_id, reason=exc.reason)
                return None
            log.error("limits_unavailable_call_rejected", call_id=call.call_id, reason=exc.reason)
            call.outcome, call.detail = "rate_limited", str(exc)
            return tool_error(STORE_UNAVAILABLE)
        if isinstance(admission, LimitExceeded):
            return self._reject(call, admission)
        return None

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


def _billed_seconds(call: ToolCall) -> float:
    """Seconds a call is charged per-second costs for: its measured work, else the time since it was forwarded."""
    if call.billed_seconds is not None:
        return call.billed_seconds
    return time.monotonic() - call.forwarded_at if call.forwarded_at is not None else 0.0
