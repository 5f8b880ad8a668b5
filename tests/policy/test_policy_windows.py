"""Rules with not_before, not_after and active_for_seconds are active only inside their window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_guard.config.models import StdioServerConfig
from mcp_guard.config.rules import ClientConfig, RuleConfig
from mcp_guard.policy import Allow, FirstUse, PolicyEngine, RequireApproval

START = datetime(2026, 12, 1, 9, tzinfo=UTC)
END = datetime(2026, 12, 31, 18, tzinfo=UTC)
CLIENTS = {"desktop": ClientConfig(), "ci": ClientConfig()}
SERVERS = {"git": StdioServerConfig(command="git", read_only_tools=["git_status"])}


def rule(name: str, **fields: Any) -> RuleConfig:
    values: dict[str, Any] = {"clients": ["desktop"], "server": "git", "tools": ["*"], "decision": "auto"}
    values.update(fields)
    return RuleConfig.model_validate({"name": name, **values})


DECEMBER = rule("december", not_before=START, not_after=END)
FIVE_MINUTES = rule("five minutes", active_for_seconds=300)


def decide(policy: PolicyEngine, now: datetime, first_use: FirstUse | None = None) -> Any:
    return policy.decide(
        "desktop", "git", "git_status", annotations=None, arguments=None, now=now, first_use=first_use or {}
    )


@pytest.mark.attack("expired time-limited rule revived")
def test_not_before_boundary() -> None:
    policy = PolicyEngine([DECEMBER], CLIENTS, SERVERS)

    assert decide(policy, START - timedelta(microseconds=1)).kind == "deny"
    assert decide(policy, START).kind == "auto"


@pytest.mark.attack("expired time-limited rule revived")
def test_not_after_inclusive() -> None:
    policy = PolicyEngine([DECEMBER], CLIENTS, SERVERS)

    assert decide(policy, END).kind == "auto"
    assert decide(policy, END + timedelta(microseconds=1)).kind == "deny"


def test_inactive_rule_explained() -> None:
    policy = PolicyEngine([DECEMBER], CLIENTS, SERVERS)

    decision = decide(policy, END + timedelta(days=1))

    assert decision.rule is None
    assert "Rule 'december' names it but is not active at this time." in decision.reason


def test_window_compares_instants_across_offsets() -> None:
    policy = PolicyEngine([DECEMBER], CLIENTS, SERVERS)
    plus_one = timezone(timedelta(hours=1))

    assert decide(policy, datetime(2026, 12, 1, 10, 30, tzinfo=plus_one)).kind == "auto"
    assert decide(policy, datetime(2026, 12, 1, 9, 30, tzinfo=plus_one)).kind == "deny"


@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=365 * 50)))
@pytest.mark.attack("expired time-limited rule revived", attempts=100)
def test_expired_window_stays_expired(after: timedelta) -> None:
    policy = PolicyEngine([DECEMBER], CLIENTS, SERVERS)

    assert decide(policy, END + after).kind == "deny"


def test_first_call_starts_rule() -> None:
    policy = PolicyEngine([FIVE_MINUTES], CLIENTS, SERVERS)

    decision = decide(policy, START)

    assert decision == Allow(kind="auto", rule="five minutes", starts_rule="five minutes")


@pytest.mark.legitimate("expired time-limited rule revived")
def test_started_rule_not_started_again() -> None:
    policy = PolicyEngine([FIVE_MINUTES], CLIENTS, SERVERS)

    decision = decide(policy, START + timedelta(seconds=299), {"five minutes": START})

    assert decision == Allow(kind="auto", rule="five minutes", starts_rule=None)


@pytest.mark.attack("expired time-limited rule revived", attempts=2)
def test_active_for_ends_after_duration() -> None:
    policy = PolicyEngine([FIVE_MINUTES], CLIENTS, SERVERS)
    first_use = {"five minutes": START}

    assert decide(policy, START + timedelta(seconds=300), first_use).kind == "deny"
    assert decide(policy, START + timedelta(days=400), first_use).kind == "deny"


@given(st.timedeltas(min_value=timedelta(seconds=300), max_value=timedelta(days=365 * 50)))
@pytest.mark.attack("expired time-limited rule revived", attempts=100)
def test_used_window_stays_expired(after: timedelta) -> None:
    policy = PolicyEngine([FIVE_MINUTES], CLIENTS, SERVERS)

    assert decide(policy, START + after, {"five minutes": START}).kind == "deny"


def test_first_use_is_per_rule_name() -> None:
    policy = PolicyEngine([FIVE_MINUTES], CLIENTS, SERVERS)

    decision = decide(policy, START + timedelta(days=1), {"another rule": START})

    assert decision.kind == "auto"
    assert decision.starts_rule == "five minutes"


def test_approval_starts_rule() -> None:
    policy = PolicyEngine(
        [rule("approved hour", decision="approve", active_for_seconds=3600)], CLIENTS, SERVERS
    )

    decision = decide(policy, START)

    assert decision == RequireApproval(rule="approved hour", starts_rule="approved hour")


def test_denied_call_starts_nothing() -> None:
    limited = rule("limited", active_for_seconds=300, arguments={"limit": {"maximum": 10}})
    policy = PolicyEngine([limited], CLIENTS, SERVERS)

    decision = policy.decide(
        "desktop", "git", "git_status", annotations=None, arguments={"limit": 11}, now=START, first_use={}
    )

    assert decision.kind == "deny"
    assert not hasattr(decision, "starts_rule")


def test_only_deciding_rule_starts() -> None:
    rules = [rule("five minutes", active_for_seconds=300), rule("review", decision="approve")]
    policy = PolicyEngine(rules, CLIENTS, SERVERS)

    decision = decide(policy, START)

    assert decision == RequireApproval(rule="review", starts_rule=None)


def test_visibility_follows_window() -> None:
    policy = PolicyEngine([FIVE_MINUTES], CLIENTS, SERVERS)
    first_use = {"five minutes": START}

    def visible(now: datetime, used: FirstUse) -> bool:
        return policy.visible("desktop", "git", "git_status", annotations=None, now=now, first_use=used)

    assert visible(START, {}) is True
    assert visible(START + timedelta(seconds=299), first_use) is True
    assert visible(START + timedelta(seconds=300), first_use) is False


def test_next_change_lists_window_edges() -> None:
    policy = PolicyEngine([DECEMBER, FIVE_MINUTES], CLIENTS, SERVERS)
    now = START - timedelta(days=1)

    assert policy.next_change("desktop", now, {}) == START
    assert policy.next_change("desktop", START, {"five minutes": START}) == START + timedelta(seconds=300)
    assert policy.next_change("desktop", START + timedelta(hours=1), {"five minutes": START}) == END
    assert policy.next_change("desktop", END, {"five minutes": START}) is None


def test_next_change_ignores_other_clients() -> None:
    policy = PolicyEngine([DECEMBER], CLIENTS, SERVERS)

    assert policy.next_change("ci", START - timedelta(days=1), {}) is None
