"""The in-memory store behaves like the SQLite one for the packages that test against it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from mcp_guard.audit import CallFilter, CallIntent, CallOutcome, MemoryAuditStore
from mcp_guard.errors import AuditUnavailable

pytestmark = pytest.mark.anyio

IntentFactory = Callable[..., CallIntent]
OutcomeFactory = Callable[..., CallOutcome]


async def test_memory_store_redacts_and_queries(
    make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    store = MemoryAuditStore()
    intent = make_intent(arguments={"token": "abc"})

    await store.record_intent(intent)
    await store.record_outcome(make_outcome(intent.call_id, outcome="denied"))

    found = await store.search(CallFilter(outcome="denied"))
    assert [call.intent.call_id for call in found] == [intent.call_id]
    assert found[0].intent.arguments == {"token": "[REDACTED:secret-field]"}
    assert await store.last_row_id() == 2
    assert [row.kind for row in await store.rows_after(1)] == ["outcome"]


async def test_memory_store_fails_writes_on_request(make_intent: IntentFactory) -> None:
    store = MemoryAuditStore()
    store.fail_writes("database is read-only")

    with pytest.raises(AuditUnavailable, match="database is read-only"):
        await store.record_intent(make_intent())

    store.fail_writes(None)
    await store.record_intent(make_intent())
    assert len(store.rows) == 1


async def test_memory_store_checks_sequence(make_intent: IntentFactory, make_outcome: OutcomeFactory) -> None:
    store = MemoryAuditStore()
    intent = make_intent()
    await store.record_intent(intent)

    with pytest.raises(ValueError, match="already has an intent"):
        await store.record_intent(intent)
    with pytest.raises(ValueError, match="has no intent"):
        await store.record_outcome(make_outcome("other"))


async def test_memory_store_prunes_oldest_rows(make_intent: IntentFactory) -> None:
    async with MemoryAuditStore() as store:
        for _ in range(5):
            await store.record_intent(make_intent())

        pruned = await store.prune(max_rows=2)
        aged = await store.prune(older_than=timedelta(days=1))

    assert pruned.rows_deleted == 3
    assert pruned.anchor_row_id == 3
    assert aged.rows_deleted == 0
    assert [row.row_id for row in store.rows] == [4, 5]
    with pytest.raises(AuditUnavailable, match="closed"):
        await store.record_intent(make_intent())
