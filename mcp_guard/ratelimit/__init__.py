"""Rate limits: the limiter and its stores (memory, SQLite, Redis) behind one protocol."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import structlog

from mcp_guard.config.limits import LimitsSettings
from mcp_guard.ratelimit.limiter import CallFacts, Limiter, LimitExceeded
from mcp_guard.ratelimit.memory import MemoryLimitStore
from mcp_guard.ratelimit.store import LimitStore, LimitStoreUnavailable
from mcp_guard.state.clock import SteadyClock

__all__ = [
    "CallFacts",
    "LimitExceeded",
    "LimitStore",
    "LimitStoreUnavailable",
    "Limiter",
    "MemoryLimitStore",
    "open_limit_store",
]

log = structlog.get_logger(module=__name__)


@asynccontextmanager
async def open_limit_store(
    settings: LimitsSettings,
    state_dir: Path,
    *,
    clock: SteadyClock | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[LimitStore]:
    """Open the configured store and move `clock` up to the latest time the store has seen.

    A Redis that cannot be reached does not stop the gateway from starting.
    Calls are then rejected (or allowed, with `on_store_failure = "allow"`) until it responds.
    """
    environ = os.environ if environ is None else environ
    store: LimitStore
    if settings.store == "memory":
        store = MemoryLimitStore()
    elif settings.store == "sqlite":
        from mcp_guard.ratelimit.sqlite import SqliteLimitStore, sqlite_store_path

        sqlite_store = SqliteLimitStore(sqlite_store_path(state_dir))
        await sqlite_store.__aenter__()
        store = sqlite_store
    else:
        from mcp_guard.ratelimit.redis_store import RedisLimitStore

        password = environ.get(settings.redis_password_from) if settings.redis_password_from else None
        store = RedisLimitStore(settings.redis_url, key_prefix=settings.key_prefix, password=password)
    try:
        if clock is not None:
            try:
                mark = await store.time_mark()
            except LimitStoreUnavailable as exc:
                log.warning("limit_store_unavailable_at_start", store=store.description, reason=exc.reason)
            else:
                if mark is not None:
                    clock.start_at_least(mark)
        yield store
    finally:
        await store.aclose()
