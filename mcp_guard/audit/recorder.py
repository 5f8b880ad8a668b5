"""`AuditedCall`: the audit step that wraps every tool call, outermost in the pipeline.

It writes the intent before the call goes any further and exactly one outcome when
the call ends, however it ends: an outcome set with `finish`, a normal return,
an exception or cancellation. If the intent cannot be written, entering raises
`AuditUnavailable` and the call must be denied. What the call does inside is
left to the pipeline.
"""

from __future__ import annotations

import time
from types import TracebackType

import anyio
import structlog

from mcp_guard.audit.records import CallIntent, CallOutcome, OutcomeKind, utc_now
from mcp_guard.audit.store import AuditStore
from mcp_guard.errors import AuditUnavailable, DownstreamError

logger = structlog.get_logger(__name__)


class AuditedCall:
    """Records one call: its intent on entry, exactly one outcome on exit.

    Example:
        async with AuditedCall(store, intent) as call:
            result = await forward(...)
            call.finish("succeeded", preview=text, result_bytes=size)

    Without `finish`, the outcome is derived on exit: no exception is `succeeded`,
    cancellation is `cancelled`, a `DownstreamError` or any other exception is
    `downstream_failed`, and `KeyboardInterrupt` or `SystemExit` is `gateway_shutdown`.

    Args:
        store: Where the rows go.
        intent: The call as received, with the policy decision.
    """

    def __init__(self, store: AuditStore, intent: CallIntent) -> None:
        self.intent = intent
        self._store = store
        self._finished: CallOutcome | None = None
        self._started: float | None = None

    def finish(
        self, outcome: OutcomeKind, *, preview: str = "", result_bytes: int = 0, detail: str | None = None
    ) -> None:
        """Set how the call ended; it is written when the `async with` block exits.

        Raises:
            RuntimeError: The outcome was already set, or the block was never entered.
        """
        if self._started is None:
            raise RuntimeError("finish() was called outside `async with AuditedCall(...)`")
        if self._finished is not None:
            raise RuntimeError(f"call {self.intent.call_id!r} already finished as {self._finished.outcome!r}")
        self._finished = self._outcome(outcome, preview=preview, result_bytes=result_bytes, detail=detail)

    async def __aenter__(self) -> AuditedCall:
        self._started = time.perf_counter()
        await self._store.record_intent(self.intent)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        outcome = self._finished or self._outcome_from_exception(exc)
        # Shielded so a cancelled call still gets its outcome; the store bounds the wait.
        with anyio.CancelScope(shield=True):
            try:
                await self._store.record_outcome(outcome)
            except (AuditUnavailable, ValueError) as error:
                logger.error(
                    "audit_outcome_not_recorded",
                    call_id=self.intent.call_id,
                    outcome=outcome.outcome,
                    error=str(error),
                )
                if exc is None:
                    raise

    def _outcome_from_exception(self, exc: BaseException | None) -> CallOutcome:
        if exc is None:
            return self._outcome("succeeded")
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return self._outcome("cancelled", detail="the call was cancelled")
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return self._outcome("gateway_shutdown", detail="the gateway stopped during the call")
        if isinstance(exc, DownstreamError):
            return self._outcome("downstream_failed", preview=str(exc), detail=type(exc).__name__)
        return self._outcome("downstream_failed", preview=str(exc), detail=f"unexpected {type(exc).__name__}")

    def _outcome(
        self, outcome: OutcomeKind, *, preview: str = "", result_bytes: int = 0, detail: str | None = None
    ) -> CallOutcome:
        started = self._started if self._started is not None else time.perf_counter()
        return CallOutcome(
            call_id=self.intent.call_id,
            time=utc_now(),
            outcome=outcome,
            latency_ms=(time.perf_counter() - started) * 1000,
            result_bytes=result_bytes,
            preview=preview,
            detail=detail,
        )
