"""AuditedCall: one intent before the call, exactly one outcome after it, however it ends."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_guard.audit import (
    AuditedCall,
    CallIntent,
    CallOutcome,
    MemoryAuditStore,
    OutcomeKind,
    SqliteAuditStore,
    new_call_id,
)
from mcp_guard.errors import AuditUnavailable, DownstreamTimeout

IntentFactory = Callable[..., CallIntent]
KEY = bytes(range(32))
ENDINGS = ("finish", "return", "downstream_error", "other_error", "cancel")
FINISH_KINDS: tuple[OutcomeKind, ...] = (
    "succeeded",
    "tool_error",
    "denied",
    "rate_limited",
    "approval_declined",
)


@dataclass(frozen=True)
class CallPlan:
    """How one simulated call goes: whether its intent write fails, and how its body ends."""

    intent_fails: bool
    ending: str
    finish_kind: OutcomeKind
    delay: float


class FlakyStore:
    """Forwards writes to a real store, except intents of chosen calls, which fail."""

    def __init__(self, inner: SqliteAuditStore, failing: set[str]) -> None:
        self.inner = inner
        self.failing = failing

    async def record_intent(self, intent: CallIntent) -> None:
        if intent.call_id in self.failing:
            raise AuditUnavailable("injected failure")
        await self.inner.record_intent(intent)

    async def record_outcome(self, outcome: CallOutcome) -> None:
        await self.inner.record_outcome(outcome)


async def _run_call(store: FlakyStore, plan: CallPlan, call_id: str) -> None:
    intent = CallIntent(
        call_id=call_id, client="c", protocol_era="2025-11-25", server="s", tool="t", decision="auto"
    )
    with anyio.CancelScope() as scope:
        try:
            async with AuditedCall(store, intent) as call:  # type: ignore[arg-type]
                await anyio.sleep(plan.delay)
                if plan.ending == "finish":
                    call.finish(plan.finish_kind, preview="done")
                elif plan.ending == "downstream_error":
                    raise DownstreamTimeout("s", 1.0)
                elif plan.ending == "other_error":
                    raise RuntimeError("bug in a guard")
                elif plan.ending == "cancel":
                    scope.cancel()
                    await anyio.sleep(10)
        except (AuditUnavailable, DownstreamTimeout, RuntimeError):
            pass


def _expected_outcome(plan: CallPlan) -> str:
    return {
        "finish": plan.finish_kind,
        "return": "succeeded",
        "downstream_error": "downstream_failed",
        "other_error": "downstream_failed",
        "cancel": "cancelled",
    }[plan.ending]


async def _drive(plans: list[CallPlan]) -> dict[str, list[tuple[str, str]]]:
    """Run the plans concurrently against a real SQLite store; return each call's rows."""
    call_ids = [new_call_id() for _ in plans]
    failing = {call_id for call_id, plan in zip(call_ids, plans, strict=True) if plan.intent_fails}
    with tempfile.TemporaryDirectory() as directory:
        database = Path(directory) / "audit.sqlite3"
        async with SqliteAuditStore(database, KEY, Path(directory) / "audit.head") as real:
            store = FlakyStore(real, failing)
            async with anyio.create_task_group() as group:
                for call_id, plan in zip(call_ids, plans, strict=True):
                    group.start_soon(_run_call, store, plan, call_id)
            rows = await real.rows_after(0, limit=10_000)
            verified = await real.verify()
    assert verified.status == "intact"
    by_call: dict[str, list[tuple[str, str]]] = {call_id: [] for call_id in call_ids}
    for row in rows:
        kind = row.record.outcome if isinstance(row.record, CallOutcome) else "-"
        by_call[row.record.call_id].append((row.kind, kind))
    return by_call


plans = st.builds(
    CallPlan,
    intent_fails=st.booleans(),
    ending=st.sampled_from(ENDINGS),
    finish_kind=st.sampled_from(FINISH_KINDS),
    delay=st.sampled_from([0, 0, 0.001]),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(plans, min_size=1, max_size=12))
def test_calls_get_one_intent_and_outcome(call_plans: list[CallPlan]) -> None:
    by_call = anyio.run(_drive, call_plans)

    for (call_id, rows), plan in zip(by_call.items(), call_plans, strict=True):
        if plan.intent_fails:
            assert rows == [], call_id
        else:
            assert rows == [("intent", "-"), ("outcome", _expected_outcome(plan))], call_id


@pytest.mark.anyio
async def test_outcome_records_latency_and_preview(make_intent: IntentFactory) -> None:
    store = MemoryAuditStore()
    intent = make_intent()

    async with AuditedCall(store, intent) as call:
        await anyio.sleep(0.01)
        call.finish("tool_error", preview="file not found", result_bytes=14, detail="isError result")

    recorded = await store.get_call(intent.call_id)
    assert recorded is not None
    assert recorded.outcome is not None
    assert recorded.outcome.outcome == "tool_error"
    assert recorded.outcome.latency_ms >= 10
    assert recorded.outcome.preview == "file not found"
    assert recorded.outcome.result_bytes == 14


@pytest.mark.anyio
@pytest.mark.attack("unaudited call")
async def test_failed_intent_write_denies_the_call(make_intent: IntentFactory) -> None:
    store = MemoryAuditStore()
    store.fail_writes("disk is full")
    body_ran = False

    with pytest.raises(AuditUnavailable, match="disk is full"):
        async with AuditedCall(store, make_intent()):
            body_ran = True

    assert not body_ran
    assert store.rows == []


@pytest.mark.anyio
async def test_failed_outcome_write_is_raised_after_success(make_intent: IntentFactory) -> None:
    store = MemoryAuditStore()

    with pytest.raises(AuditUnavailable, match="disk is full"):
        async with AuditedCall(store, make_intent()):
            store.fail_writes("disk is full")


@pytest.mark.anyio
async def test_failed_outcome_write_keeps_call_error(make_intent: IntentFactory) -> None:
    store = MemoryAuditStore()

    with pytest.raises(DownstreamTimeout):
        async with AuditedCall(store, make_intent()):
            store.fail_writes("disk is full")
            raise DownstreamTimeout("files", 5)


@pytest.mark.anyio
async def test_finish_twice_is_an_error(make_intent: IntentFactory) -> None:
    store = MemoryAuditStore()

    async with AuditedCall(store, make_intent()) as call:
        call.finish("denied", detail="rule deny-writes")
        with pytest.raises(RuntimeError, match="already finished as 'denied'"):
            call.finish("succeeded")

    assert [row.kind for row in store.rows] == ["intent", "outcome"]
