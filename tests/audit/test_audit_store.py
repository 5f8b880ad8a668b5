"""The SQLite audit store: round trips, group commit, permissions, failures and restarts."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import anyio
import anyio.lowlevel
import pytest
import structlog

from mcp_guard.audit import (
    AuditPaths,
    CallFilter,
    CallIntent,
    CallOutcome,
    MemoryAuditStore,
    OutcomeKind,
    SqliteAuditStore,
)
from mcp_guard.errors import AuditCorrupted, AuditUnavailable

pytestmark = pytest.mark.anyio

IntentFactory = Callable[..., CallIntent]
OutcomeFactory = Callable[..., CallOutcome]
StoreFactory = Callable[..., SqliteAuditStore]
# Above what the WAL reaches with a checkpoint every CHECKPOINT_EVERY_RECORDS records.
WAL_BOUND_BYTES = 32 * 1024 * 1024


async def test_every_outcome_kind_round_trips(
    store: SqliteAuditStore, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    for kind in get_args(OutcomeKind):
        intent = make_intent(arguments={"kind": kind, "nested": [1, 2.5, None, True]})
        outcome = make_outcome(intent.call_id, outcome=kind, detail=f"ended as {kind}")

        await store.record_intent(intent)
        await store.record_outcome(outcome)
        call = await store.get_call(intent.call_id)

        assert call is not None
        assert call.intent == intent
        assert call.outcome == outcome


async def test_store_reopens_with_rows_intact(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    intent = make_intent()
    async with new_store() as store:
        await store.record_intent(intent)
        await store.record_outcome(make_outcome(intent.call_id))

    async with new_store() as reopened:
        call = await reopened.get_call(intent.call_id)
        result = await reopened.verify()

    assert call is not None
    assert call.intent == intent
    assert result.status == "intact"


WRITERS, CALLS_EACH = 50, 200


async def _write_concurrently(
    store: SqliteAuditStore, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    async def write_calls() -> None:
        for _ in range(CALLS_EACH):
            intent = make_intent()
            await store.record_intent(intent)
            await anyio.lowlevel.checkpoint()  # the call is forwarded, and the other writers run
            await store.record_outcome(make_outcome(intent.call_id))

    async with anyio.create_task_group() as group:
        for _ in range(WRITERS):
            group.start_soon(write_calls)


async def test_power_safe_writers_share_commits(
    new_store: StoreFactory, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    rows = WRITERS * CALLS_EACH * 2

    async with new_store(power_safe=True) as store:
        with structlog.testing.capture_logs() as events:
            await _write_concurrently(store, make_intent, make_outcome)
        result = await store.verify()
        last_row_id = await store.last_row_id()

    commits = [event for event in events if event["event"] == "audit_batch_committed"]
    assert last_row_id == rows
    assert result.status == "intact"
    assert result.rows_checked == rows
    assert sum(event["rows"] for event in commits) == rows
    assert len(commits) < rows / 10
    assert not [event for event in events if event["log_level"] in ("warning", "error")]


async def test_concurrent_writers_share_commits(
    store: SqliteAuditStore, make_intent: IntentFactory, make_outcome: OutcomeFactory, paths: AuditPaths
) -> None:
    rows = WRITERS * CALLS_EACH * 2

    with structlog.testing.capture_logs() as events:
        await _write_concurrently(store, make_intent, make_outcome)
    result = await store.verify()
    wal = paths.database.with_name(paths.database.name + "-wal")
    commits = [event for event in events if event["event"] == "audit_batch_committed"]

    assert await store.last_row_id() == rows
    assert result.status == "intact"
    assert result.rows_checked == rows
    assert sum(event["rows"] for event in commits) == rows
    assert len(commits) < rows / 10
    assert not [event for event in events if event["log_level"] in ("warning", "error")]
    # Checkpoints in a worker thread keep the WAL from growing with every commit. Without
    # them it held all 20,000 rows, about 100 MB; with them it stayed near 3 MB.
    assert wal.stat().st_size < WAL_BOUND_BYTES


@pytest.mark.attack("state files readable by other users")
async def test_files_are_owner_only(
    store: SqliteAuditStore, make_intent: IntentFactory, paths: AuditPaths
) -> None:
    await store.record_intent(make_intent())

    created = [
        paths.database,
        paths.database.with_name(paths.database.name + "-wal"),
        paths.database.with_name(paths.database.name + "-shm"),
        paths.head,
        paths.database.with_name(paths.database.name + ".lock"),
    ]
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.attack("state files readable by other users")
async def test_key_file_is_created_owner_only(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_GUARD_AUDIT_KEY", raising=False)

    async with SqliteAuditStore.in_state_dir(state_dir):
        pass

    key_file = AuditPaths.in_state_dir(state_dir).key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text())) == 32
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700


async def test_duplicate_intent_is_rejected_alone(
    store: SqliteAuditStore, make_intent: IntentFactory
) -> None:
    first = make_intent()
    await store.record_intent(first)

    async with anyio.create_task_group() as group:
        group.start_soon(store.record_intent, make_intent())
        with pytest.raises(ValueError, match="already has an intent"):
            await store.record_intent(make_intent(first.call_id))

    assert await store.last_row_id() == 2


async def test_intent_of_a_finished_call_is_rejected_alone(
    store: SqliteAuditStore, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    # The store no longer remembers a finished call; the database's unique index catches the
    # replayed intent, and the batch is checked again record by record.
    first = make_intent()
    await store.record_intent(first)
    await store.record_outcome(make_outcome(first.call_id))

    async with anyio.create_task_group() as group:
        group.start_soon(store.record_intent, make_intent())
        with pytest.raises(ValueError, match="already has an intent"):
            await store.record_intent(make_intent(first.call_id))
    await store.record_intent(make_intent())

    assert await store.last_row_id() == 4
    assert (await store.verify()).status == "intact"


async def test_outcome_without_intent_is_rejected(
    store: SqliteAuditStore, make_outcome: OutcomeFactory
) -> None:
    with pytest.raises(ValueError, match="has no intent"):
        await store.record_outcome(make_outcome("never-started"))


async def test_second_outcome_is_rejected(
    store: SqliteAuditStore, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    intent = make_intent()
    await store.record_intent(intent)
    await store.record_outcome(make_outcome(intent.call_id))

    with pytest.raises(ValueError, match="already has an outcome"):
        await store.record_outcome(make_outcome(intent.call_id, outcome="cancelled"))


async def test_locked_database_raises_unavailable(
    paths: AuditPaths, make_intent: IntentFactory, new_store: StoreFactory
) -> None:
    async with new_store(busy_timeout_seconds=0.1) as store:
        await store.record_intent(make_intent())
        blocker = sqlite3.connect(paths.database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(AuditUnavailable) as raised:
                await store.record_intent(make_intent())
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await store.record_intent(make_intent())

    assert "locked" in raised.value.reason
    assert not isinstance(raised.value, sqlite3.Error)


async def test_failed_batch_fails_every_writer(
    paths: AuditPaths, make_intent: IntentFactory, new_store: StoreFactory
) -> None:
    errors: list[AuditUnavailable] = []

    async def write() -> None:
        try:
            await store.record_intent(make_intent())
        except AuditUnavailable as exc:
            errors.append(exc)

    async with new_store(busy_timeout_seconds=0.1) as store:
        await store.record_intent(make_intent())
        blocker = sqlite3.connect(paths.database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(write)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await store.record_intent(make_intent())
        result = await store.verify()
        last_row_id = await store.last_row_id()

    assert len(errors) == 5
    assert len({id(error) for error in errors}) == 5
    assert all("locked" in error.reason for error in errors)
    assert result.status == "intact"
    assert last_row_id == 2


# The probe opens the store in a fresh process. Root ignores file modes through the
# CAP_DAC_OVERRIDE and CAP_FOWNER capabilities, and CI runs the tests as root. So under
# root the probe runs through `setpriv` with those capabilities dropped. Then chmod
# binds it like any other user, and SQLite's writes really fail.
_READ_ONLY_PROBE = """
import sys
from pathlib import Path
import anyio
from mcp_guard.audit import CallIntent, SqliteAuditStore
from mcp_guard.errors import AuditUnavailable

async def main() -> None:
    async with SqliteAuditStore.in_state_dir(Path(sys.argv[1])) as store:
        intent = CallIntent(
            call_id="probe", client="c", protocol_era="2025-11-25", server="s", tool="t", decision="auto"
        )
        try:
            await store.record_intent(intent)
        except AuditUnavailable as exc:
            print("REASON:", exc.reason)
        else:
            print("WRITTEN")

anyio.run(main)
"""
_DROP_FILE_MODE_OVERRIDES = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


async def test_read_only_database_raises_unavailable(
    state_dir: Path, key: bytes, make_intent: IntentFactory, new_store: StoreFactory
) -> None:
    async with new_store() as store:
        await store.record_intent(make_intent())
    for name in os.listdir(state_dir):
        os.chmod(state_dir / name, 0o400)
    os.chmod(state_dir, 0o500)
    prefix = _DROP_FILE_MODE_OVERRIDES if os.geteuid() == 0 else []
    if prefix and shutil.which(prefix[0]) is None:
        pytest.skip("running as root without setpriv, so file modes cannot be enforced")

    try:
        probe = await anyio.run_process(
            [*prefix, sys.executable, "-c", _READ_ONLY_PROBE, str(state_dir)],
            check=False,
            env={**os.environ, "MCP_GUARD_AUDIT_KEY": key.hex()},
        )
    finally:
        os.chmod(state_dir, 0o700)

    output = probe.stdout.decode()
    reasons = [line for line in output.splitlines() if line.startswith("REASON:")]
    assert probe.returncode == 0, probe.stderr.decode()
    assert len(reasons) == 1, output
    assert "the database is read-only" in reasons[0]
    assert "WRITTEN" not in output


async def test_unfinished_calls_are_closed_at_next_start(
    new_store: StoreFactory, make_intent: IntentFactory
) -> None:
    intent = make_intent()
    async with new_store() as store:
        await store.record_intent(intent)

    async with new_store() as restarted:
        call = await restarted.get_call(intent.call_id)
        result = await restarted.verify()

    assert call is not None
    assert call.outcome is not None
    assert call.outcome.outcome == "gateway_shutdown"
    assert result.status == "intact"


@pytest.mark.attack("audit row deletion or reordering")
async def test_start_refuses_trail_missing_newest_rows(
    paths: AuditPaths, make_intent: IntentFactory, make_outcome: OutcomeFactory, new_store: StoreFactory
) -> None:
    async with new_store() as store:
        for _ in range(3):
            intent = make_intent()
            await store.record_intent(intent)
            await store.record_outcome(make_outcome(intent.call_id))
    with sqlite3.connect(paths.database) as connection:
        connection.execute("DELETE FROM audit_rows WHERE id > 4")

    with pytest.raises(AuditCorrupted) as raised:
        async with new_store():
            pass

    assert raised.value.row_id is None
    assert "rows after 4 are missing" in raised.value.detail


@pytest.mark.attack("audit row tampering")
async def test_start_refuses_a_different_key(new_store: StoreFactory, make_intent: IntentFactory) -> None:
    async with new_store() as store:
        await store.record_intent(make_intent())

    with pytest.raises(AuditCorrupted) as raised:
        async with new_store(bytes(32)):
            pass

    assert raised.value.row_id == 1
    assert "key" in raised.value.detail


async def test_second_writer_is_unavailable_while_first_runs(
    store: SqliteAuditStore, new_store: StoreFactory, make_intent: IntentFactory
) -> None:
    await store.record_intent(make_intent())

    async with new_store() as second:
        with pytest.raises(AuditUnavailable, match=rf"another process \(PID {os.getpid()}\) is writing"):
            await second.record_intent(make_intent())

    await store.record_intent(make_intent())


async def test_closed_store_raises_unavailable(new_store: StoreFactory, make_intent: IntentFactory) -> None:
    async with new_store() as store:
        pass

    with pytest.raises(AuditUnavailable, match="closed"):
        await store.record_intent(make_intent())


async def test_store_cannot_be_entered_twice(store: SqliteAuditStore) -> None:
    with pytest.raises(RuntimeError, match="cannot be opened again"):
        await store.__aenter__()


async def test_search_filters_match_memory_store(
    store: SqliteAuditStore, make_intent: IntentFactory, make_outcome: OutcomeFactory
) -> None:
    memory = MemoryAuditStore()
    intents = [
        make_intent(client="alice", server="files", tool="read_file", decision="auto"),
        make_intent(
            client="bob", server="files", tool="write_file", decision="approve", arguments={"x": "Needle"}
        ),
        make_intent(client="bob", server="git", tool="commit", decision="deny", time="2020-01-01T00:00:00Z"),
        make_intent(client="carol", server="git", tool="log", decision="notify"),
    ]
    outcomes = {0: "succeeded", 1: "approval_declined", 2: "denied"}
    for index, intent in enumerate(intents):
        for target in (store, memory):
            await target.record_intent(intent)
            if index in outcomes:
                await target.record_outcome(make_outcome(intent.call_id, outcome=outcomes[index]))
    filters = [
        CallFilter(),
        CallFilter(client="bob"),
        CallFilter(server="git", decision="deny"),
        CallFilter(outcome="succeeded"),
        CallFilter(outcome="running"),
        CallFilter(tool="log"),
        CallFilter(since="2021-01-01T00:00:00Z"),
        CallFilter(until="2021-01-01T00:00:00Z"),
        CallFilter(text="needle"),
        CallFilter(text="DECLINED"),
    ]

    for condition in filters:
        from_sqlite = [call.intent.call_id for call in await store.search(condition)]
        from_memory = [call.intent.call_id for call in await memory.search(condition)]
        assert from_sqlite == from_memory, condition
    running = await store.search(CallFilter(outcome="running"))
    assert [call.intent.call_id for call in running] == [intents[3].call_id]
