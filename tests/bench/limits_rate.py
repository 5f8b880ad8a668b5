"""Limiter decisions per second on each store, for a three-dimension check.

Each decision takes requests per minute, requests per hour and tokens per
minute for one of 100 clients, as a call under one limit entry with those
three dimensions does. "one at a time" awaits each decision before the next.
"64 concurrent" runs 64 callers at once, so the SQLite store shares a
transaction, and the Redis store a pipeline, between the decisions that arrive
together. The SQLite store writes a real file in a scratch folder, and the
Redis store uses the Redis at 127.0.0.1:6379 under a key prefix of its own,
deleted afterwards.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import redis.asyncio as aioredis

from mcp_guard.ratelimit.memory import MemoryLimitStore
from mcp_guard.ratelimit.redis_store import RedisLimitStore
from mcp_guard.ratelimit.sqlite import SqliteLimitStore
from mcp_guard.ratelimit.store import Charge, Grant, LimitStore, WindowCharge

REDIS_URL = "redis://127.0.0.1:6379/0"
CLIENTS = 100
# Decisions per measurement, per store.
DECISIONS = {"memory": 200_000, "sqlite": 20_000, "redis": 20_000}
CONCURRENCY = 64
# Decisions per second each store must reach on one core.
TARGETS = {"memory": 50_000, "sqlite": 5_000, "redis": 10_000}


@dataclass(frozen=True)
class DecisionRate:
    """Decisions per second of one store at one concurrency."""

    store: str
    callers: int
    decisions: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Decisions per second of wall-clock time."""
        return self.decisions / self.seconds


def charges(index: int) -> list[Charge]:
    """Return the three charges of decision `index`; the limits are high enough to admit every call."""
    client = f"client={index % CLIENTS}"
    return [
        WindowCharge(f"bench:requests_per_minute:{client}", 10**12, 60, 1),
        WindowCharge(f"bench:requests_per_hour:{client}", 10**12, 3600, 1),
        WindowCharge(f"bench:tokens_per_minute:{client}", 10**12, 60, 120),
    ]


async def _decide(store: LimitStore, decisions: int, callers: int) -> float:
    start_time = time.time()

    async def caller(first: int) -> None:
        for index in range(first, decisions, callers):
            outcome = await store.acquire(charges(index), start_time + index / 1000)
            if not isinstance(outcome, Grant):
                raise AssertionError(f"decision {index} was rejected: {outcome}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        for first in range(callers):
            tasks.start_soon(caller, first)
    return time.perf_counter() - started


async def measure_decision_rates() -> list[DecisionRate]:
    """Measure every store one at a time and with CONCURRENCY callers."""
    rates = []
    for callers in (1, CONCURRENCY):
        rates.append(await _measure("memory", MemoryLimitStore(), callers))
        with tempfile.TemporaryDirectory(prefix="mcp-guard-bench-limits-") as scratch:
            async with SqliteLimitStore(Path(scratch) / "limits.sqlite3") as sqlite_store:
                rates.append(await _measure("sqlite", sqlite_store, callers))
        prefix = f"mcp-guard-bench-{uuid.uuid4().hex}"
        redis_store = RedisLimitStore(REDIS_URL, key_prefix=prefix)
        try:
            rates.append(await _measure("redis", redis_store, callers))
        finally:
            await redis_store.aclose()
            await _delete_keys(prefix)
    return rates


async def _measure(name: str, store: LimitStore, callers: int) -> DecisionRate:
    decisions = DECISIONS[name]
    return DecisionRate(name, callers, decisions, await _decide(store, decisions, callers))


async def _delete_keys(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def render_decision_rates(rates: list[DecisionRate]) -> str:
    """Return the Markdown table of limiter decision rates, with the targets."""
    lines = [
        "### Rate-limit decisions",
        "",
        "Decisions per second of each limit store, each decision checking and taking three dimensions",
        f"(requests per minute and per hour, tokens per minute) for one of {CLIENTS} clients. The targets",
        f"apply to {CONCURRENCY} concurrent callers, as on a busy gateway: the SQLite store then decides the",
        "calls that arrive together in one transaction, and Redis in one pipeline. One caller at a time",
        "pays a full round trip (a thread hand-off, or a network round trip) per decision.",
        "",
        "| store | callers | decisions | seconds | decisions/s | target | met |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for rate in rates:
        target, met = "–", "–"
        if rate.callers == CONCURRENCY:
            target = f"{TARGETS[rate.store]:,}"
            met = "yes" if rate.per_second >= TARGETS[rate.store] else "**no**"
        lines.append(
            f"| {rate.store} | {rate.callers} | {rate.decisions:,} | {rate.seconds:.2f} | "
            f"{rate.per_second:,.0f} | {target} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_decision_rates(anyio.run(measure_decision_rates)))
