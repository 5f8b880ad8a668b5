"""Tamper evidence: `verify` finds edits, deletions and reordering; `prune` keeps it passing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from mcp_guard.audit import (
    AuditPaths,
    CallIntent,
    CallOutcome,
    ChainBroken,
    ChainIntact,
    SqliteAuditStore,
    VerifyResult,
)
from mcp_guard.audit.files import HEAD_RECORD_BYTES, read_head

pytestmark = pytest.mark.anyio

IntentFactory = Callable[..., CallIntent]
OutcomeFactory = Callable[..., CallOutcome]
StoreFactory = Callable[..., SqliteAuditStore]
CALLS = 5  # Ten rows: an intent and an outcome each.


@pytest.fixture
async def trail(new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory) -> Path:
    """Write CALLS finished calls, close the store and return the database path."""
    async with new_store() as store:
        for index in range(CALLS):
            intent = make_intent(tool=f"tool_{index}")
            await store.record_intent(intent)
            await store.record_outcome(make_outcome(intent.call_id))
    return store.path


def _execute(database: Path, *statements: str) -> None:
    with sqlite3.connect(database) as connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


async def _verify(new_store: StoreFactory) -> VerifyResult:
    async with new_store(read_only=True) as store:
        return await store.verify()


@pytest.mark.legitimate("audit row tampering")
async def test_untouched_trail_is_intact(trail: Path, new_store: StoreFactory) -> None:
    result = await _verify(new_store)

    assert isinstance(result, ChainIntact)
    assert result.rows_checked == 2 * CALLS


@pytest.mark.attack("audit row tampering")
async def test_modified_field_is_detected(trail: Path, new_store: StoreFactory) -> None:
    _execute(trail, "UPDATE audit_rows SET tool = 'delete_everything' WHERE id = 5")

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert result.row_id == 5
    assert "field was changed" in result.detail


@pytest.mark.attack("audit row tampering")
async def test_modified_arguments_are_detected(trail: Path, new_store: StoreFactory) -> None:
    _execute(trail, """UPDATE audit_rows SET arguments = '{"path":"/etc/shadow"}' WHERE id = 3""")

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert result.row_id == 3


@pytest.mark.attack("audit row deletion or reordering")
async def test_deleted_middle_row_is_detected(trail: Path, new_store: StoreFactory) -> None:
    _execute(trail, "DELETE FROM audit_rows WHERE id = 5")

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert result.row_id == 6
    assert "deleted or reordered" in result.detail


@pytest.mark.attack("audit row deletion or reordering")
async def test_reordered_rows_are_detected(trail: Path, new_store: StoreFactory) -> None:
    _execute(
        trail,
        "UPDATE audit_rows SET id = -1 WHERE id = 4",
        "UPDATE audit_rows SET id = 4 WHERE id = 5",
        "UPDATE audit_rows SET id = 5 WHERE id = -1",
    )

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert result.row_id == 4


@pytest.mark.attack("audit row deletion or reordering")
async def test_deleted_newest_rows_are_detected(trail: Path, new_store: StoreFactory) -> None:
    _execute(trail, "DELETE FROM audit_rows WHERE id > 7")

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert result.row_id is None
    assert "rows after 7 are missing" in result.detail


@pytest.mark.attack("audit row deletion or reordering")
async def test_deleted_oldest_rows_are_detected(trail: Path, new_store: StoreFactory) -> None:
    _execute(trail, "DELETE FROM audit_rows WHERE id <= 2")

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert result.row_id == 3


@pytest.mark.attack("audit row deletion or reordering")
async def test_missing_head_file_is_detected(trail: Path, new_store: StoreFactory, paths: AuditPaths) -> None:
    paths.head.unlink()

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert "head file" in result.detail


@pytest.mark.attack("audit row deletion or reordering")
async def test_newest_rows_deleted_while_open_detected(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    async with new_store() as store:
        for _ in range(CALLS):
            intent = make_intent()
            await store.record_intent(intent)
            await store.record_outcome(make_outcome(intent.call_id))
        _execute(store.path, f"DELETE FROM audit_rows WHERE id > {2 * CALLS - 2}")

        result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert "head" in result.detail


async def test_head_file_updated_in_place(
    new_store: StoreFactory, make_intent: IntentFactory, paths: AuditPaths
) -> None:
    async with new_store() as store:
        await store.record_intent(make_intent())
        inode = paths.head.stat().st_ino
        for _ in range(CALLS):
            await store.record_intent(make_intent())
        during = (paths.head.stat().st_ino, paths.head.stat().st_size, read_head(paths.head))

    assert during[0] == inode
    assert during[1] == HEAD_RECORD_BYTES
    assert during[2] is not None and during[2].row_id == CALLS + 1


async def test_longer_head_file_is_trimmed(
    trail: Path, new_store: StoreFactory, make_intent: IntentFactory, paths: AuditPaths
) -> None:
    head = read_head(paths.head)
    assert head is not None
    paths.head.write_text(json.dumps({"row_id": head.row_id, "hash": head.hash}) + " " * 400)

    async with new_store() as store:
        await store.record_intent(make_intent())
        result = await store.verify()

    assert isinstance(result, ChainIntact)
    assert paths.head.stat().st_size == HEAD_RECORD_BYTES


@pytest.mark.attack("audit row tampering")
async def test_wrong_key_fails_at_first_row(trail: Path, new_store: StoreFactory) -> None:
    async with new_store(bytes(32), read_only=True) as store:
        result = await store.verify()

    assert isinstance(result, ChainBroken)
    assert result.row_id == 1


@pytest.mark.legitimate("audit row tampering")
async def test_head_lagging_one_batch_is_accepted(
    trail: Path, new_store: StoreFactory, paths: AuditPaths
) -> None:
    with sqlite3.connect(trail) as connection:
        row_id, row_hash = connection.execute("SELECT id, row_hash FROM audit_rows WHERE id = 8").fetchone()
    connection.close()
    paths.head.write_text(json.dumps({"row_id": row_id, "hash": row_hash}))

    result = await _verify(new_store)

    assert isinstance(result, ChainIntact)


@pytest.mark.legitimate("audit row deletion or reordering")
async def test_prune_by_count_keeps_trail_verifiable(
    trail: Path, new_store: StoreFactory, make_intent: IntentFactory
) -> None:
    async with new_store() as store:
        pruned = await store.prune(max_rows=3)
        await store.record_intent(make_intent())
        result = await store.verify()

    assert pruned.rows_deleted == 2 * CALLS - 3
    assert pruned.anchor_row_id == 7
    assert isinstance(result, ChainIntact)
    assert result.first_row_id == 8
    assert result.last_row_id == 11


@pytest.mark.legitimate("audit row deletion or reordering")
async def test_prune_of_everything_keeps_trail_verifiable(
    trail: Path, new_store: StoreFactory, make_intent: IntentFactory
) -> None:
    async with new_store() as store:
        pruned = await store.prune(older_than=timedelta(0))
        empty = await store.verify()

    async with new_store() as reopened:
        await reopened.record_intent(make_intent())
        after_restart = await reopened.verify()

    assert pruned.rows_deleted == 2 * CALLS
    assert isinstance(empty, ChainIntact)
    assert isinstance(after_restart, ChainIntact)
    assert after_restart.first_row_id == 2 * CALLS + 1


@pytest.mark.legitimate("audit row deletion or reordering")
async def test_prune_keeps_intent_of_running_call(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    async with new_store() as store:
        running = make_intent()
        await store.record_intent(running)
        finished = make_intent()
        await store.record_intent(finished)
        await store.record_outcome(make_outcome(finished.call_id))

        pruned = await store.prune(max_rows=0)
        await store.record_outcome(make_outcome(running.call_id))
        result = await store.verify()

    assert pruned.rows_deleted == 0
    assert isinstance(result, ChainIntact)


@pytest.mark.attack("audit row deletion or reordering")
async def test_edited_anchor_is_detected(trail: Path, new_store: StoreFactory) -> None:
    async with new_store() as store:
        await store.prune(max_rows=4)
    _execute(trail, "UPDATE audit_meta SET value = '3' WHERE name = 'anchor_row_id'")

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert "anchor" in result.detail


@pytest.mark.attack("audit row deletion or reordering")
async def test_rows_deleted_beside_prune_are_detected(trail: Path, new_store: StoreFactory) -> None:
    async with new_store() as store:
        await store.prune(max_rows=6)
    _execute(trail, "DELETE FROM audit_rows WHERE id = 5")

    result = await _verify(new_store)

    assert isinstance(result, ChainBroken)
    assert result.row_id == 6
