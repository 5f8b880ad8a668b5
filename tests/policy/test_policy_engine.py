"""Which rules match a call, how their results combine, and which tools a client can list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from mcp_guard.config.models import StdioServerConfig
from mcp_guard.config.rules import ClientConfig, RuleConfig
from mcp_guard.policy import Allow, Deny, PolicyEngine, RequireApproval

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
DATA = "/srv/policy-test/data"

CLIENTS = {
    "desktop": ClientConfig(groups=["developers"]),
    "ci": ClientConfig(groups=["automation"]),
    "intern": ClientConfig(),
}

SERVERS = {
    "git": StdioServerConfig(command="mcp-server-git", read_only_tools=["git_status", "git_log"]),
    "files": StdioServerConfig(command="files", read_only_tools=["read_file"], trust_annotations=True),
    "db": StdioServerConfig(command="db"),
}


def rule(name: str, **fields: Any) -> RuleConfig:
    """Build a rule; unless overridden it applies to everyone, every tool of git, decision auto."""
    values: dict[str, Any] = {"clients": ["*"], "server": "git", "tools": ["*"], "decision": "auto"}
    values.update(fields)
    return RuleConfig.model_validate({"name": name, **values})


RULES = [
    rule("git can be read", clients=["desktop"]),
    rule("developers commit with approval", clients=[], groups=["developers"], tools=["git_commit"],
         decision="approve", write=True),
    rule("nobody pushes", tools=["git_push"], decision="deny"),
    rule("files are read in data", server="files", arguments={"path": {"path_under": [DATA]}}),
    rule("ci writes files with notice", clients=["ci"], server="files", tools=["write_file"], decision="notify",
         write=True, arguments={"path": {"path_under": [DATA]}}),
    rule("developers run selects", clients=[], groups=["developers"], server="db", tools=["query"], write=True,
         arguments={"sql": {"full_match": "(?i)SELECT .*", "never_contains": "(?i)drop\\s+table"}}),
    rule("queries need approval", server="db", tools=["query"], decision="approve", write=True),
    rule("desktop may use db", clients=["desktop"], server="db", write=True),
]  # fmt: skip


def engine(rules: Sequence[RuleConfig] = RULES) -> PolicyEngine:
    return PolicyEngine(rules, CLIENTS, SERVERS)


def decide(
    policy: PolicyEngine,
    client: str,
    server: str,
    tool: str,
    arguments: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | None = None,
) -> Allow | RequireApproval | Deny:
    return policy.decide(
        client, server, tool, annotations=annotations, arguments=arguments, now=NOW, first_use={}
    )


READ_ONLY = {"readOnlyHint": True}

# (client, server, tool, arguments, annotations) -> (kind, deciding rule)
CASES = [
    # Default deny: no rule names the client, the server or the tool.
    ("intern", "git", "git_status", None, None, "deny", None),
    ("ci", "git", "git_status", None, None, "deny", None),
    ("desktop", "mail", "send", None, None, "deny", None),
    # Read rules grant only read-only tools.
    ("desktop", "git", "git_status", None, None, "auto", "git can be read"),
    ("desktop", "git", "git_reset", None, None, "deny", None),
    # Untrusted server: an annotation alone never makes a tool read-only.
    ("desktop", "git", "git_reset", None, READ_ONLY, "deny", None),
    # Trusted server: the annotation counts, but only when it is exactly true.
    ("desktop", "files", "list_dir", {"path": DATA}, READ_ONLY, "auto", "files are read in data"),
    ("desktop", "files", "list_dir", {"path": DATA}, {"readOnlyHint": "true"}, "deny", None),
    ("desktop", "files", "list_dir", {"path": DATA}, {"readOnlyHint": False}, "deny", None),
    ("desktop", "files", "write_file", {"path": DATA}, None, "deny", None),
    # Group membership grants the write rule; approval is required.
    ("desktop", "git", "git_commit", None, None, "approve", "developers commit with approval"),
    ("intern", "git", "git_commit", None, None, "deny", None),
    # A deny rule wins over everything, including a rule for every tool.
    ("desktop", "git", "git_push", None, None, "deny", "nobody pushes"),
    ("ci", "git", "git_push", None, None, "deny", "nobody pushes"),
    # "*" in clients: everyone reads files in the data folder.
    ("intern", "files", "read_file", {"path": f"{DATA}/a.txt"}, None, "auto", "files are read in data"),
    ("intern", "files", "read_file", {"path": "/etc/passwd"}, None, "deny", "files are read in data"),
    # Notify.
    ("ci", "files", "write_file", {"path": f"{DATA}/out.txt"}, None, "notify", "ci writes files with notice"),
    ("ci", "files", "write_file", {"path": "/tmp/out.txt"}, None, "deny", "ci writes files with notice"),
    # Strictest wins: auto (select rule) + approve + auto (desktop db) -> approve.
    ("desktop", "db", "query", {"sql": "SELECT 1"}, None, "approve", "queries need approval"),
    # A constraint of one matching rule cannot be bypassed by a looser rule that also matches.
    ("desktop", "db", "query", {"sql": "DELETE FROM users"}, None, "deny", "developers run selects"),
    ("desktop", "db", "query", {"sql": "SELECT 1; DROP TABLE users"}, None, "deny", "developers run selects"),
    ("ci", "db", "query", {"sql": "DELETE FROM users"}, None, "approve", "queries need approval"),
    ("desktop", "db", "vacuum", None, None, "auto", "desktop may use db"),
    ("ci", "db", "vacuum", None, None, "deny", None),
]


@pytest.mark.parametrize(("client", "server", "tool", "arguments", "annotations", "kind", "rule_name"), CASES)
@pytest.mark.attack("call no rule grants", params={"kind": "deny"})
@pytest.mark.legitimate("call no rule grants", params={"kind": "auto"})
def test_decision_table(
    client: str,
    server: str,
    tool: str,
    arguments: dict[str, Any] | None,
    annotations: dict[str, Any] | None,
    kind: str,
    rule_name: str | None,
) -> None:
    decision = decide(engine(), client, server, tool, arguments, annotations)

    assert decision.kind == kind
    assert decision.rule == rule_name


def test_default_deny_reason() -> None:
    decision = decide(engine(), "intern", "git", "git_status")

    assert isinstance(decision, Deny)
    assert decision.reason == "No rule allows client 'intern' to call the tool 'git_status' of server 'git'."


def test_default_deny_explains_write_gate() -> None:
    decision = decide(engine(), "desktop", "git", "git_reset")

    assert isinstance(decision, Deny)
    assert "Rule 'git can be read' grants only read-only tools" in decision.reason
    assert "servers.git.read_only_tools" in decision.reason


def test_deny_rule_reason_names_rule() -> None:
    decision = decide(engine(), "desktop", "git", "git_push")

    assert isinstance(decision, Deny)
    assert (
        decision.reason == "Rule 'nobody pushes' denies client 'desktop' the tool 'git_push' of server 'git'."
    )


def test_constraint_deny_names_violation() -> None:
    decision = decide(engine(), "desktop", "db", "query", {"sql": "DELETE FROM users"})

    assert isinstance(decision, Deny)
    assert decision.reason.startswith(
        'arguments.sql ("DELETE FROM users") does not match the required pattern'
    )


def test_equal_results_go_to_first_rule() -> None:
    rules = [
        rule("first"),
        rule("second"),
        rule("third", decision="notify"),
        rule("fourth", decision="notify"),
    ]
    policy = PolicyEngine(rules, CLIENTS, SERVERS)

    decision = decide(policy, "desktop", "git", "git_status")

    assert decision == Allow(kind="notify", rule="third")


def test_first_deny_in_order_wins() -> None:
    rules = [
        rule("limited", arguments={"limit": {"maximum": 10}}),
        rule("blocked", decision="deny"),
    ]
    policy = PolicyEngine(rules, CLIENTS, SERVERS)

    decision = decide(policy, "desktop", "git", "git_status", {"limit": 99})

    assert decision.kind == "deny"
    assert decision.rule == "limited"


@pytest.mark.attack("call no rule grants")
def test_deny_rule_ignores_write_flag() -> None:
    # A deny rule with the default `write = false` still covers a tool that writes.
    rules = [rule("writes allowed", write=True), rule("no reset", tools=["git_reset"], decision="deny")]
    policy = PolicyEngine(rules, CLIENTS, SERVERS)

    decision = decide(policy, "desktop", "git", "git_reset")

    assert decision.rule == "no reset"
    assert decision.kind == "deny"


def test_server_wildcard_matches_any_server() -> None:
    policy = PolicyEngine([rule("all", server="*", tools=["read_file"], write=True)], CLIENTS, SERVERS)

    assert decide(policy, "intern", "files", "read_file").kind == "auto"
    assert decide(policy, "intern", "git", "read_file").kind == "auto"
    assert decide(policy, "intern", "git", "git_status").kind == "deny"


def test_unknown_client_matches_only_wildcard() -> None:
    rules = [rule("everyone"), rule("developers", clients=[], groups=["developers"], decision="deny")]
    policy = PolicyEngine(rules, CLIENTS, SERVERS)

    assert decide(policy, "stranger", "git", "git_status").kind == "auto"
    assert decide(policy, "desktop", "git", "git_status").kind == "deny"


def test_unknown_server_grants_only_write_rules() -> None:
    policy = PolicyEngine(
        [rule("read", server="*"), rule("write", server="mail", write=True)], CLIENTS, SERVERS
    )

    assert decide(policy, "intern", "other", "anything").kind == "deny"
    assert decide(policy, "intern", "mail", "send").kind == "auto"


def test_decisions_compare_by_value() -> None:
    assert decide(engine(), "desktop", "git", "git_status") == Allow(kind="auto", rule="git can be read")
    assert decide(engine(), "desktop", "git", "git_commit") == RequireApproval(
        rule="developers commit with approval"
    )


VISIBILITY = [
    ("desktop", "git", "git_status", None, True),
    ("desktop", "git", "git_commit", None, True),
    # A tool that an active deny rule names can never be called, so it is hidden.
    ("desktop", "git", "git_push", None, False),
    ("desktop", "git", "git_reset", READ_ONLY, False),
    ("intern", "git", "git_status", None, False),
    ("intern", "files", "read_file", None, True),
    ("intern", "files", "list_dir", READ_ONLY, True),
    ("intern", "files", "list_dir", None, False),
    ("ci", "files", "write_file", None, True),
    ("ci", "db", "query", None, True),
    ("ci", "db", "vacuum", None, False),
]


@pytest.mark.parametrize(("client", "server", "tool", "annotations", "expected"), VISIBILITY)
@pytest.mark.attack("hidden tool probing", params={"expected": False})
@pytest.mark.legitimate("hidden tool probing", params={"expected": True})
def test_visibility_table(
    client: str, server: str, tool: str, annotations: dict[str, Any] | None, expected: bool
) -> None:
    seen = engine().visible(client, server, tool, annotations=annotations, now=NOW, first_use={})

    assert seen is expected


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match="has no timezone"):
        engine().decide(
            "desktop",
            "git",
            "git_status",
            annotations=None,
            arguments=None,
            now=datetime(2026, 1, 1),
            first_use={},
        )


@pytest.mark.attack("approval skipped on the direct lane", params={"kind": "approve"})
@pytest.mark.parametrize(("client", "server", "tool", "arguments", "annotations", "kind", "rule_name"), CASES)
def test_rule_decisions_cover_decision(
    client: str,
    server: str,
    tool: str,
    arguments: Mapping[str, Any] | None,
    annotations: Mapping[str, Any] | None,
    kind: str,
    rule_name: str | None,
) -> None:
    policy = engine()

    decisions = policy.rule_decisions(client, server, tool, annotations=annotations, now=NOW, first_use={})

    # A call is decided as one of its matching rules decide, or denied. The direct lane relies
    # on this to keep every call that could need approval off its path, whatever the arguments.
    if kind != "deny":
        assert kind in decisions
    # The default deny: no rule applies at all.
    if rule_name is None:
        assert decisions == frozenset()
    if (client, server, tool) in {("desktop", "git", "git_status"), ("desktop", "db", "vacuum")}:
        assert decisions == {"auto"}
