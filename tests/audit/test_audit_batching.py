"""Group commit: concurrent callers share transactions and each gets its own result."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from mcp_guard.audit.batching import GroupCommitter
from mcp_guard.errors import AuditUnavailable

pytestmark = pytest.mark.anyio


class RecordingWriter:
    """A `write_batch` that records each batch and fails records named "bad"."""

    def __init__(self, *, delay: float = 0.005, fail_all: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_all = fail_all

    async def __call__(self, records: Sequence[str]) -> list[Exception | None]:
        await anyio.sleep(self.delay)
        if self.fail_all:
            raise AuditUnavailable("disk is full")
        self.batches.append(list(records))
        return [ValueError(f"bad record {record}") if record == "bad" else None for record in records]


async def test_concurrent_submits_share_batches() -> None:
    writer = RecordingWriter()
    committer = GroupCommitter(writer, max_batch=16)

    async with anyio.create_task_group() as group:
        group.start_soon(committer.run)
        async with anyio.create_task_group() as callers:
            for index in range(50):
                callers.start_soon(committer.submit, f"record-{index}")
        await committer.close()

    written = [record for batch in writer.batches for record in batch]
    assert sorted(written) == sorted(f"record-{index}" for index in range(50))
    assert len(writer.batches) <= 10
    assert max(len(batch) for batch in writer.batches) <= 16


async def test_record_error_reaches_only_its_caller() -> None:
    writer = RecordingWriter()
    committer = GroupCommitter(writer)
    results: dict[str, str] = {}

    async def submit(record: str) -> None:
        try:
            await committer.submit(record)
            results[record] = "ok"
        except ValueError as exc:
            results[record] = str(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(committer.run)
        async with anyio.create_task_group() as callers:
            for record in ("a", "bad", "c"):
                callers.start_soon(submit, record)
        await committer.close()

    assert results == {"a": "ok", "bad": "bad record bad", "c": "ok"}


async def test_batch_failure_reaches_every_caller() -> None:
    committer = GroupCommitter(RecordingWriter(fail_all=True))
    errors: list[AuditUnavailable] = []

    async def submit(record: str) -> None:
        try:
            await committer.submit(record)
        except AuditUnavailable as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(committer.run)
        async with anyio.create_task_group() as callers:
            for index in range(5):
                callers.start_soon(submit, str(index))
        await committer.close()

    assert len(errors) == 5
    assert len({id(error) for error in errors}) == 5
    assert all(error.reason == "disk is full" for error in errors)


async def test_cancelled_caller_still_waits_for_its_commit() -> None:
    writer = RecordingWriter(delay=0.05)
    committer = GroupCommitter(writer)

    async with anyio.create_task_group() as group:
        group.start_soon(committer.run)
        with anyio.move_on_after(0.01):
            await committer.submit("slow")
        written_when_cancelled = [record for batch in writer.batches for record in batch]
        await committer.close()

    assert written_when_cancelled == ["slow"]


async def test_submit_after_close_is_unavailable() -> None:
    committer = GroupCommitter(RecordingWriter())

    async with anyio.create_task_group() as group:
        group.start_soon(committer.run)
        await committer.close()

    with pytest.raises(AuditUnavailable, match="closed"):
        await committer.submit("late")


async def test_queued_records_fail_when_writer_is_cancelled() -> None:
    committer = GroupCommitter(RecordingWriter(delay=10))
    errors: list[str] = []

    async def submit(record: str) -> None:
        try:
            await committer.submit(record)
        except AuditUnavailable as exc:
            errors.append(exc.reason)

    async with anyio.create_task_group() as callers, anyio.create_task_group() as writer_group:
        writer_group.start_soon(committer.run)
        for index in range(3):
            callers.start_soon(submit, str(index))
        await anyio.sleep(0.05)
        writer_group.cancel_scope.cancel()
    await committer.close()

    assert errors == ["the audit store closed before the commit"] * 3
