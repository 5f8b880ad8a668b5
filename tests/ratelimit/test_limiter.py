"""The limiter's planning and admission, on the memory store with a test clock.

These are the attacks on keys and windows: rotating sessions and client names,
spreading load over an organisation's clients, slow and steady calls, a clock
stepped backwards, and calls too large for any window.
"""

from __future__ import annotations

from typing import Any

import pytest

from mcp_guard.config.limits import LimitsSettings
from mcp_guard.config.rules import ClientConfig
from mcp_guard.ratelimit.limiter import Admission, CallFacts, Limiter, LimitExceeded, Plan
from mcp_guard.ratelimit.memory import MemoryLimitStore
from mcp_guard.ratelimit.store import WindowCharge
from mcp_guard.state.clock import SteadyClock

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0


def limiter(
    *rules: dict[str, Any], clients: dict[str, dict[str, Any]] | None = None, **settings: Any
) -> Limiter:
    config = LimitsSettings.model_validate({"store": "memory", "rules": list(rules), **settings})
    profiles = {name: ClientConfig.model_validate(body) for name, body in (clients or {}).items()}
    return Limiter(config, profiles, MemoryLimitStore())


def facts(client: str = "alice", **overrides: Any) -> CallFacts:
    values: dict[str, Any] = {
        "client": client,
        "server": "files",
        "tool": "read",
        "input_tokens": 10,
        "timeout_seconds": 30.0,
        **overrides,
    }
    return CallFacts(**values)


async def call(lim: Limiter, now: float, **overrides: Any) -> Admission | LimitExceeded:
    plan = lim.plan(facts(**overrides))
    if isinstance(plan, LimitExceeded):
        return plan
    return await lim.admit(plan, now)


async def admitted(lim: Limiter, now: float, count: int, **overrides: Any) -> int:
    outcomes = [await call(lim, now, **overrides) for _ in range(count)]
    return sum(isinstance(outcome, Admission) for outcome in outcomes)


@pytest.mark.attack("rate-limit reset by new session", attempts=250)
async def test_session_rotation_keeps_client_count() -> None:
    lim = limiter({"name": "per-client", "requests_per_hour": 20})
    total = 0
    # 50 sessions, each claiming another client name in its handshake. The limiter receives only the
    # authenticated client and a session id.
    for session in range(50):
        total += await admitted(lim, T0 + session, 5, session=f"session-{session}")
    assert total == 20


@pytest.mark.attack("rate-limit burst", attempts=305)
async def test_organisation_limit_is_shared() -> None:
    clients = {f"bot-{index}": {"organisation": "acme"} for index in range(100)}
    clients["outsider"] = {"organisation": "other"}
    lim = limiter(
        {"name": "acme-total", "per": "organisation", "requests_per_minute": 50},
        {"name": "each", "requests_per_minute": 5},
        clients=clients,
    )
    total = 0
    for index in range(100):
        total += await admitted(lim, T0, 3, client=f"bot-{index}", organisation="acme")
    assert total == 50
    # Another organisation has its own count.
    assert await admitted(lim, T0, 5, client="outsider", organisation="other") == 5


@pytest.mark.attack("rate-limit burst", attempts=1440)
async def test_daily_cap_stops_slow_calls() -> None:
    lim = limiter({"name": "daily", "requests_per_minute": 10, "requests_per_day": 100})
    outcomes = [await call(lim, T0 + minute * 60) for minute in range(24 * 60)]
    assert sum(isinstance(outcome, Admission) for outcome in outcomes) == 100
    rejection = outcomes[100]
    assert isinstance(rejection, LimitExceeded)
    assert rejection.dimension == "requests_per_day"
    assert rejection.retry_after is not None
    assert rejection.retry_after > 20 * 3600


@pytest.mark.attack("rate-limit reset by restart or clock")
async def test_clock_step_back_keeps_window() -> None:
    wall = [T0]
    monotonic = [5000.0]
    clock = SteadyClock(wall=lambda: wall[0], monotonic=lambda: monotonic[0])
    lim = limiter({"name": "per-minute", "requests_per_minute": 3})
    assert await admitted(lim, clock(), 3) == 3
    wall[0] -= 3600  # the system clock is stepped back an hour
    monotonic[0] += 1
    assert await admitted(lim, clock(), 1) == 0  # the window is not reset
    monotonic[0] += 61
    assert await admitted(lim, clock(), 3) == 3  # and the client is not locked out for an hour


@pytest.mark.attack("rate-limit reset by restart or clock")
async def test_restarted_clock_starts_at_mark() -> None:
    clock = SteadyClock(wall=lambda: T0 - 3600, monotonic=lambda: 0.0)
    clock.start_at_least(T0)
    assert clock() == T0
    clock.start_at_least(T0 - 10)  # never moves back
    assert clock() == T0


@pytest.mark.attack("oversized or pathological input")
async def test_large_input_rejected_first() -> None:
    lim = limiter({"name": "small", "max_input_tokens": 100, "requests_per_minute": 5})
    rejection = await call(lim, T0, input_tokens=101)
    assert isinstance(rejection, LimitExceeded)
    assert rejection.dimension == "max_input_tokens"
    assert "101 tokens" in rejection.message
    assert "'small'" in rejection.message
    assert await admitted(lim, T0, 10, input_tokens=100) == 5


@pytest.mark.attack("rate-limit burst", attempts=2)
async def test_call_over_whole_limit_rejected() -> None:
    lim = limiter({"name": "tokens", "tokens_per_minute": 1000})
    rejection = await call(lim, T0, input_tokens=1001)
    assert isinstance(rejection, LimitExceeded)
    assert "can never run" in rejection.message
    assert rejection.retry_after is None
    expensive = limiter(
        {"name": "budget", "cost_per_hour": 1.0},
        costs=[{"server": "files", "tools": ["read"], "per_call": 2.0}],
    )
    assert isinstance(await call(expensive, T0), LimitExceeded)


async def test_output_tokens_reserved_then_settled() -> None:
    lim = limiter({"name": "tokens", "tokens_per_minute": 1000, "max_output_tokens": 400})
    plan = lim.plan(facts(input_tokens=100))
    assert isinstance(plan, Plan)
    assert plan.meters[0].charge.units == 500  # 100 in, 400 reserved for the result
    first = await lim.admit(plan, T0)
    assert isinstance(first, Admission)
    await lim.finish(first, output_tokens=50, seconds=0.1, now=T0)
    store = lim.store
    assert await store.usage([plan.meters[0].charge], T0) == [150]


async def test_cost_reserved_then_settled() -> None:
    lim = limiter(
        {"name": "budget", "cost_per_hour": 10.0},
        costs=[{"server": "files", "per_call": 0.5, "per_second": 0.1}],
    )
    plan = lim.plan(facts(timeout_seconds=30.0))
    assert isinstance(plan, Plan)
    assert plan.meters[0].charge.units == pytest.approx(3.5)
    admission = await lim.admit(plan, T0)
    assert isinstance(admission, Admission)
    await lim.finish(admission, output_tokens=0, seconds=2.0, now=T0)
    assert await lim.store.usage([plan.meters[0].charge], T0) == [pytest.approx(0.7)]


@pytest.mark.attack("rate-limit burst")
async def test_concurrent_calls_capped_and_freed() -> None:
    lim = limiter({"name": "two-at-once", "concurrent_calls": 2})
    first, second = await call(lim, T0), await call(lim, T0)
    assert isinstance(first, Admission)
    assert isinstance(second, Admission)
    third = await call(lim, T0)
    assert isinstance(third, LimitExceeded)
    assert "in flight" in third.message
    await lim.finish(first, output_tokens=0, seconds=1, now=T0)
    assert isinstance(await call(lim, T0), Admission)


async def test_session_cap_per_session() -> None:
    lim = limiter({"name": "session", "calls_per_session": 3})
    assert await admitted(lim, T0, 5, session="one") == 3
    assert await admitted(lim, T0, 5, session="two") == 3
    assert await admitted(lim, T0, 5, session=None) == 5


@pytest.mark.attack("approval flood", attempts=3)
async def test_approvals_counted_only_when_asking() -> None:
    lim = limiter({"name": "fatigue", "approvals_per_hour": 2})
    # A call that needs approval is not counted when it passes the limits: it may find a grant.
    assert await admitted(lim, T0, 5, needs_approval=True) == 5
    questions = [await lim.admit(lim.approval_plan(facts(needs_approval=True)), T0) for _ in range(3)]
    assert [isinstance(outcome, Admission) for outcome in questions] == [True, True, False]


@pytest.mark.attack("rate-limit reset by new session", attempts=6)
async def test_unauthenticated_callers_share_bucket() -> None:
    lim = limiter(unauthenticated_requests_per_minute=4)
    assert await admitted(lim, T0, 3, anonymous=True, session="a") == 3
    assert await admitted(lim, T0, 3, anonymous=True, session="b") == 1
    assert await admitted(lim, T0, 10, client="bob") == 10  # authenticated callers are not in it


async def test_limit_scope_by_group_server_tool() -> None:
    lim = limiter(
        {
            "name": "writers",
            "groups": ["writers"],
            "server": "files",
            "tools": ["write"],
            "requests_per_minute": 1,
        },
        clients={"alice": {"groups": ["writers"]}, "bob": {}},
    )
    assert await admitted(lim, T0, 3, tool="write") == 1
    assert await admitted(lim, T0, 3, tool="read") == 3
    assert await admitted(lim, T0, 3, client="bob", tool="write") == 3
    assert await admitted(lim, T0, 3, server="other", tool="write") == 3


@pytest.mark.attack("other clients' usage disclosed", attempts=2)
async def test_rejection_hides_others_usage() -> None:
    lim = limiter(
        {"name": "mine", "requests_per_minute": 2},
        {"name": "everyone", "per": "global", "requests_per_minute": 3},
    )
    await admitted(lim, T0, 2, client="alice")
    own = await call(lim, T0, client="alice")
    assert isinstance(own, LimitExceeded)
    assert "would exceed limit 'mine' (your limit is 2 calls per minute, 2 used)" in own.message
    assert "retry in" in own.message
    await admitted(lim, T0, 1, client="bob")
    shared = await call(lim, T0, client="carol")
    assert isinstance(shared, LimitExceeded)
    assert shared.limit == "everyone"
    assert "used" not in shared.message
    assert "(the gateway's limit is 3 calls per minute)" in shared.message


@pytest.mark.legitimate("rate-limit burst")
async def test_exact_cost_limit_admits_every_fitting_call() -> None:
    lim = limiter(
        {"name": "budget", "cost_per_hour": 0.3},
        costs=[{"server": "files", "per_call": 0.1}],
    )
    assert await admitted(lim, T0, 4) == 3  # 0.1 + 0.1 + 0.1 is 0.30000000000000004 in floats


async def test_session_window_is_one_day() -> None:
    lim = limiter({"name": "session", "calls_per_session": 2})
    plan = lim.plan(facts(session="s"))
    assert isinstance(plan, Plan)
    charge = plan.meters[0].charge
    assert isinstance(charge, WindowCharge)
    assert charge.period == 86_400


async def test_rejection_gives_longest_wait_in_hours() -> None:
    # Both counts are full. The day's limit frees up last, and its wait is shown in hours.
    lim = limiter({"name": "each client", "requests_per_minute": 2, "requests_per_day": 2})
    await admitted(lim, T0, 2)

    rejected = await call(lim, T0 + 1)

    assert isinstance(rejected, LimitExceeded)
    assert rejected.message == (
        "Rate limited by mcp-guard: this call would exceed limit 'each client' (your limit is 2 calls per "
        "day, 2 used); retry in 24 h 24 min."
    )
