"""The three limit stores against the same properties: exact admission, atomicity, windows, leases.

The SQLite store uses a real file and the Redis store the Redis at
127.0.0.1:6379, each test under its own key prefix.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from mcp_guard.ratelimit.memory import MemoryLimitStore
from mcp_guard.ratelimit.redis_store import RedisLimitStore
from mcp_guard.ratelimit.sqlite import SqliteLimitStore
from mcp_guard.ratelimit.store import Grant, LeaseCharge, LimitStore, Rejection, WindowCharge

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000.0  # a minute boundary: T0 % 60 == 0


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LimitStore]:
    if request.param == "memory":
        yield MemoryLimitStore()
    elif request.param == "sqlite":
        async with SqliteLimitStore(tmp_path / "limits.sqlite3") as sqlite_store:
            yield sqlite_store
    else:
        prefix = f"test-{uuid.uuid4().hex}"
        redis_store = RedisLimitStore(REDIS_URL, key_prefix=prefix)
        try:
            yield redis_store
        finally:
            await redis_store.aclose()
            await delete_keys(prefix)


async def delete_keys(prefix: str) -> None:
    """Delete the keys a test left in the shared Redis."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def minute(key: str, limit: float, units: float = 1) -> WindowCharge:
    return WindowCharge(key=key, limit=limit, period=60, units=units)


@pytest.mark.attack("rate-limit burst", attempts=20000)
async def test_concurrent_calls_take_exact_remainder(store: LimitStore) -> None:
    for round_number in range(100):
        key = f"round-{round_number}"
        now = T0 + round_number * 1000
        # 90 of 100 units are already used.
        assert isinstance(await store.acquire([minute(key, 100, 90)], now), Grant)
        outcomes: list[Grant | Rejection] = []

        async def one_call(
            key: str = key, now: float = now, outcomes: list[Grant | Rejection] = outcomes
        ) -> None:
            outcomes.append(await store.acquire([minute(key, 100), minute(f"{key}-hour", 10**6)], now))

        async with anyio.create_task_group() as tasks:
            for _ in range(200):
                tasks.start_soon(one_call)
        admitted = [outcome for outcome in outcomes if isinstance(outcome, Grant)]
        assert len(admitted) == 10, f"round {round_number}"
        # Rejected calls took nothing from the other window either.
        assert await store.usage([minute(f"{key}-hour", 10**6)], now) == [10]


@pytest.mark.attack("rate-limit burst")
async def test_charges_all_or_none(store: LimitStore) -> None:
    roomy, full = minute("roomy", 10), minute("full", 1)
    assert isinstance(await store.acquire([full], T0), Grant)
    outcome = await store.acquire([roomy, full], T0 + 1)
    assert isinstance(outcome, Rejection)
    assert outcome.index == 1
    assert outcome.used == 1
    assert await store.usage([roomy, full], T0 + 1) == [0, 1]


@pytest.mark.attack("rate-limit window boundary", attempts=540)
async def test_boundary_burst_stays_under_limit(
    store: LimitStore,
) -> None:
    limit = 30
    admitted: list[float] = []
    # Attempts every 0.25 s from 20 s before a boundary to 100 s after it, plus bursts of 30 right
    # before and right after the boundary, where a fixed window would admit 60.
    attempts = [T0 - 0.5] * limit + [T0 + 0.01] * limit
    attempts += [T0 - 20 + step * 0.25 for step in range(480)]
    for at in sorted(attempts):
        if isinstance(await store.acquire([minute("boundary", limit)], at), Grant):
            admitted.append(at)
    assert len(admitted) > limit  # the window moves on: later calls are admitted again
    for start in admitted:
        in_span = [at for at in admitted if start <= at < start + 60]
        assert len(in_span) <= limit, f"{len(in_span)} calls in the 60 s from {start - T0:+.2f}"


@pytest.mark.legitimate("rate-limit window boundary")
async def test_rejected_call_fits_at_retry_time(store: LimitStore) -> None:
    for step in range(5):
        assert isinstance(await store.acquire([minute("retry", 5)], T0 + step * 7), Grant)
    rejection = await store.acquire([minute("retry", 5)], T0 + 40)
    assert isinstance(rejection, Rejection)
    assert rejection.used == 5
    # The oldest call (at T0) leaves the window a minute and at most one slice later.
    assert 20 <= rejection.retry_after <= 21 + 1e-9
    assert isinstance(await store.acquire([minute("retry", 5)], T0 + 40 + rejection.retry_after), Grant)
    assert isinstance(await store.acquire([minute("retry", 5)], T0 + 40 + rejection.retry_after), Rejection)


@pytest.mark.legitimate("rate-limit window boundary")
async def test_rejection_names_longest_wait(store: LimitStore) -> None:
    # Both limits are full: retrying when the minute frees up would hit the hour's limit.
    per_minute = minute("both-minute", 1)
    per_hour = WindowCharge(key="both-hour", limit=1, period=3600, units=1)
    assert isinstance(await store.acquire([per_minute, per_hour], T0), Grant)

    rejection = await store.acquire([per_minute, per_hour], T0 + 1)

    assert isinstance(rejection, Rejection)
    assert rejection.index == 1
    assert rejection.retry_after > 3500
    assert isinstance(await store.acquire([per_minute, per_hour], T0 + 1 + rejection.retry_after), Grant)


async def test_reservation_settled_to_real_cost(store: LimitStore) -> None:
    charge = minute("tokens", 1000, 600)
    grant = await store.acquire([charge], T0)
    assert isinstance(grant, Grant)
    assert isinstance(await store.acquire([minute("tokens", 1000, 500)], T0 + 1), Rejection)
    await store.finish(grant, {0: -450}, T0 + 1)  # the call used 150 tokens, not 600
    assert await store.usage([charge], T0 + 1) == [150]
    assert isinstance(await store.acquire([minute("tokens", 1000, 500)], T0 + 1), Grant)


async def test_extra_usage_counts_from_call_end(store: LimitStore) -> None:
    charge = minute("late", 100, 1)
    grant = await store.acquire([charge], T0)
    assert isinstance(grant, Grant)
    # The call ran for 61 s and its result turned out to be 10,000 tokens.
    await store.finish(grant, {0: 9_999}, T0 + 61)
    assert isinstance(await store.acquire([charge], T0 + 61.5), Rejection)
    assert isinstance(await store.acquire([charge], T0 + 123), Grant)


async def test_short_lease_leaves_long_lease_in_place(store: LimitStore) -> None:
    long_slot = LeaseCharge(key="mixed", limit=2, lease_seconds=600)
    short_slot = LeaseCharge(key="mixed", limit=2, lease_seconds=0.5)
    assert isinstance(await store.acquire([long_slot], T0), Grant)
    short = await store.acquire([short_slot], T0)
    assert isinstance(short, Grant)
    await store.finish(short, {}, T0 + 1)
    assert isinstance(await store.acquire([short_slot], T0 + 2), Grant)
    assert isinstance(await store.acquire([short_slot], T0 + 2), Rejection)


async def test_finish_settles_and_frees_in_one_step(store: LimitStore) -> None:
    tokens, slot = minute("both-tokens", 1000, 600), LeaseCharge(key="both-slot", limit=1, lease_seconds=30)
    grant = await store.acquire([tokens, slot], T0)
    assert isinstance(grant, Grant)
    await store.finish(grant, {0: -500}, T0 + 1)
    assert await store.usage([tokens, slot], T0 + 1) == [100, 0]


async def test_slots_freed_on_release_and_expiry(store: LimitStore) -> None:
    slot = LeaseCharge(key="slots", limit=2, lease_seconds=30)
    first = await store.acquire([slot], T0)
    second = await store.acquire([slot], T0)
    assert isinstance(first, Grant)
    assert isinstance(second, Grant)
    assert isinstance(await store.acquire([slot], T0 + 1), Rejection)
    await store.finish(first, {}, T0 + 1)
    third = await store.acquire([slot], T0 + 1)
    assert isinstance(third, Grant)
    # A gateway that died holding slots frees them once the lease runs out.
    assert isinstance(await store.acquire([slot], T0 + 29), Rejection)
    assert isinstance(await store.acquire([slot], T0 + 31), Grant)


@pytest.mark.attack("rate-limit burst", attempts=1440)
async def test_daily_cap_over_24_hours(store: LimitStore) -> None:
    day = WindowCharge(key="daily", limit=1000, period=86_400, units=1)
    outcomes = [await store.acquire([day], T0 + minute_index * 60) for minute_index in range(24 * 60)]
    admitted = sum(isinstance(outcome, Grant) for outcome in outcomes)
    assert admitted == 1000
    assert all(isinstance(outcome, Rejection) for outcome in outcomes[1000:])


async def test_store_keeps_time_mark(store: LimitStore) -> None:
    assert await store.time_mark() is None
    await store.acquire([minute("mark", 5)], T0 + 5)
    await store.acquire([minute("mark", 5)], T0 + 2)
    assert await store.time_mark() == T0 + 5


async def test_memory_store_drops_idle_keys() -> None:
    store = MemoryLimitStore()
    # 200,000 distinct keys over 20,000 simulated seconds, ten new keys a second.
    for index in range(200_000):
        now = T0 + index / 10
        await store.acquire([minute(f"key-{index}", 5), WindowCharge(f"h-{index % 5000}", 100, 3600, 1)], now)
    # Minute keys from the last 61 s at most, plus the 5,000 hour keys.
    assert store.key_count() <= 10 * 62 + 5000


@pytest.mark.attack("rate-limit reset by restart or clock")
async def test_sqlite_counts_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    async with SqliteLimitStore(path) as first:
        for _ in range(3):
            assert isinstance(await first.acquire([minute("kept", 5)], T0), Grant)
    async with SqliteLimitStore(path) as second:
        assert await second.usage([minute("kept", 5)], T0 + 30) == [3]
        assert await second.time_mark() == T0


async def test_sqlite_deletes_expired_slices(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    async with SqliteLimitStore(path) as store:
        for index in range(500):
            await store.acquire([minute(f"old-{index}", 5)], T0)
        await store.acquire([minute("new", 5)], T0 + 200)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM window_slice").fetchone()[0] == 1


@pytest.mark.attack("rate limits split across replicas", attempts=100)
async def test_sqlite_shared_file_admits_limit(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    admitted = 0
    async with SqliteLimitStore(path) as first, SqliteLimitStore(path) as second:

        async def one_call(store: SqliteLimitStore) -> None:
            nonlocal admitted
            outcome = await store.acquire([minute("shared", 25)], T0)
            admitted += isinstance(outcome, Grant)

        async with anyio.create_task_group() as tasks:
            for index in range(100):
                tasks.start_soon(one_call, first if index % 2 else second)
    assert admitted == 25


async def test_sqlite_waits_for_lock_off_loop(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with SqliteLimitStore(path) as store, anyio.create_task_group() as tasks:
        await store.acquire([minute("warm", 5)], T0)
        other_process = sqlite3.connect(path, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        tasks.start_soon(tick)
        started = time.monotonic()
        decision: Grant | Rejection | None = None
        waiting = anyio.Event()

        async def decide() -> None:
            nonlocal decision
            decision = await store.acquire([minute("locked", 5)], T0)
            waiting.set()

        tasks.start_soon(decide)
        await anyio.sleep(0.5)
        ticks_while_locked = ticks
        other_process.execute("COMMIT")
        other_process.close()
        await waiting.wait()
        seconds = time.monotonic() - started
        tasks.cancel_scope.cancel()

    assert isinstance(decision, Grant)
    assert seconds >= 0.5
    # The event loop kept running while the decision waited for the other process's lock.
    assert ticks_while_locked >= 5


async def test_sqlite_checkpoints_keep_wal_small(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    largest = 0
    async with SqliteLimitStore(path) as store:
        for index in range(3000):
            grant = await store.acquire([minute(f"client-{index % 50}", 1000)], T0 + index / 100)
            assert isinstance(grant, Grant)
            largest = max(largest, (tmp_path / "limits.sqlite3-wal").stat().st_size)

    # Without checkpoints, these 3000 transactions grow the WAL to about 38 MB.
    assert largest < 4 * 1024 * 1024


async def test_redis_keys_expire_after_their_window() -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    store = RedisLimitStore(REDIS_URL, key_prefix=prefix)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await store.acquire([minute("ttl", 5), LeaseCharge("slot", 1, 30)], T0)
        window_ttl = await client.pttl(f"{prefix}:ttl")
        lease_ttl = await client.pttl(f"{prefix}:slot")
        assert 60_000 < window_ttl <= 62_000
        assert 30_000 < lease_ttl <= 31_000
        # A later, shorter lease keeps the key alive as long as the longest lease in it.
        await store.acquire([LeaseCharge("slot", 5, 1)], T0)
        assert 30_000 < await client.pttl(f"{prefix}:slot") <= 31_000
    finally:
        await store.aclose()
        await client.aclose()
        await delete_keys(prefix)
