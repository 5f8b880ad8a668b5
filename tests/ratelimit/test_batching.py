"""The decision batcher: concurrent decisions share a batch, a lone one is made at once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from mcp_guard.ratelimit.batching import DecisionBatcher
from mcp_guard.ratelimit.sqlite import SqliteLimitStore
from mcp_guard.ratelimit.store import Grant, LeaseCharge, WindowCharge

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0


class Recorder:
    """A `decide` function that records each batch and the task it ran in, and can be held."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.tasks: list[asyncio.Task[object] | None] = []
        self.release = anyio.Event()
        self.hold = False

    async def decide(self, items: Sequence[str]) -> list[str | Exception]:
        self.batches.append(list(items))
        self.tasks.append(asyncio.current_task())
        if self.hold:
            await self.release.wait()
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


async def test_concurrent_decisions_share_one_batch() -> None:
    recorder = Recorder()
    batcher = DecisionBatcher(recorder.decide)
    results: dict[str, str] = {}

    async def submit(item: str) -> None:
        results[item] = await batcher.submit(item)

    async with anyio.create_task_group() as tasks:
        for item in ("a", "b", "c"):
            tasks.start_soon(submit, item)

    assert results == {"a": "A", "b": "B", "c": "C"}
    assert recorder.batches == [["a", "b", "c"]]


async def test_lone_decision_is_made_in_the_callers_task() -> None:
    recorder = Recorder()
    batcher = DecisionBatcher(recorder.decide)

    result = await batcher.submit("a", alone=True)

    assert result == "A"
    assert recorder.tasks == [asyncio.current_task()]


async def test_queued_decision_follows_lone_one() -> None:
    recorder = Recorder()
    recorder.hold = True
    batcher = DecisionBatcher(recorder.decide)
    order: list[str] = []

    async def submit(item: str, alone: bool) -> None:
        order.append(await batcher.submit(item, alone=alone))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(submit, "first", True)
            await anyio.wait_all_tasks_blocked()
            tasks.start_soon(submit, "second", True)
            tasks.start_soon(submit, "third", False)
            await anyio.wait_all_tasks_blocked()
            # Nothing else is decided while the lone decision is under way.
            assert recorder.batches == [["first"]]
            recorder.release.set()

    assert recorder.batches == [["first"], ["second", "third"]]
    assert order == ["FIRST", "SECOND", "THIRD"]


async def test_failed_lone_decision_raises_in_its_caller() -> None:
    recorder = Recorder()
    batcher = DecisionBatcher(recorder.decide)

    with pytest.raises(ValueError, match="bad"):
        await batcher.submit("bad", alone=True)
    assert await batcher.submit("next", alone=True) == "NEXT"


async def test_sqlite_store_decides_lone_and_concurrent_calls_exactly(tmp_path: Path) -> None:
    # Calls one after another take the lone path, and concurrent ones share a batch. The
    # counts of both paths add up, and a finished call frees its slot for the next.
    charges = [WindowCharge("requests", 30, 60, 1), LeaseCharge("slots", 4, 60)]
    async with SqliteLimitStore(tmp_path / "limits.sqlite3") as store:
        for _ in range(10):
            grant = await store.acquire(charges, T0)
            assert isinstance(grant, Grant)
            await store.finish(grant, {}, T0)
        granted: list[Grant] = []

        async def one_call() -> None:
            outcome = await store.acquire(charges, T0 + 1)
            if isinstance(outcome, Grant):
                granted.append(outcome)

        async with anyio.create_task_group() as tasks:
            for _ in range(8):
                tasks.start_soon(one_call)
        assert len(granted) == 4  # the slots
        for grant in granted:
            await store.finish(grant, {}, T0 + 1)
        usage = await store.usage(charges, T0 + 1)

    assert usage == [14.0, 0.0]
