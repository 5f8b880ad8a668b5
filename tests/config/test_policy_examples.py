"""The policy files shipped in policies/ load, and their rules decide calls as their comments describe."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import ROOT

from mcp_guard.config import GatewayConfig, StdioServerConfig, load_config
from mcp_guard.gateway.identity import ClientDirectory
from mcp_guard.policy import Allow, Decision, Deny, PolicyEngine, RequireApproval

EXAMPLE = ROOT / "policies" / "example.toml"
DEMO = ROOT / "policies" / "demo.toml"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SQL_RULE = "agent runs read-only SQL with approval"
WRITE_RULE = "agent writes reports for an hour"
# The folders the example's path rules name, resolved against policies/ as the loader does.
SHARED = ROOT / "example-work" / "shared"
REPORTS = SHARED / "reports"


@pytest.fixture(scope="module")
def example() -> GatewayConfig:
    return load_config(EXAMPLE, environ={})


@pytest.fixture(scope="module")
def demo() -> GatewayConfig:
    return load_config(DEMO, environ={})


def engine_of(config: GatewayConfig) -> PolicyEngine:
    return PolicyEngine(config.rules, config.clients, config.servers)


def decide(
    config: GatewayConfig,
    client: str,
    server: str,
    tool: str,
    arguments: dict[str, Any] | None = None,
    first_use: dict[str, datetime] | None = None,
) -> Decision:
    return engine_of(config).decide(
        client, server, tool, annotations=None, arguments=arguments, now=NOW, first_use=first_use or {}
    )


def visible(config: GatewayConfig, client: str, server: str, tool: str) -> bool:
    return engine_of(config).visible(client, server, tool, annotations=None, now=NOW, first_use={})


def test_example_defines_clients_and_rules(example: GatewayConfig) -> None:
    assert [rule.name for rule in example.rules] == [
        "analysts read the database",
        SQL_RULE,
        "nobody deletes records",
        "agent reads the shared folder",
        WRITE_RULE,
        "agent runs commands with a notice",
    ]
    assert set(example.clients) == {"agent", "dashboard"}
    assert example.gateway.default_client == "agent"
    assert set(example.servers) == {"db", "files"}


def test_example_servers_run_from_repository_root(example: GatewayConfig) -> None:
    for server in example.servers.values():
        assert isinstance(server, StdioServerConfig)
        assert server.cwd == str(ROOT)
        assert (ROOT / server.command).exists()
        assert (ROOT / server.args[0]).exists()


def test_example_dashboard_authenticates_by_key(example: GatewayConfig) -> None:
    assert ClientDirectory(example, environ={}).has_credentials
    assert example.clients["dashboard"].api_key_hashes
    assert not example.clients["agent"].api_key_hashes


def test_example_denies_delete_record(example: GatewayConfig) -> None:
    for client in ("agent", "dashboard"):
        decision = decide(example, client, "db", "delete_record", {"id": 7})

        assert isinstance(decision, Deny)
        assert decision.rule == "nobody deletes records"
        assert not visible(example, client, "db", "delete_record")


def test_example_sql_needs_approval(example: GatewayConfig) -> None:
    decision = decide(example, "agent", "db", "execute_sql", {"query": "SELECT id FROM customers"})

    assert isinstance(decision, RequireApproval)
    assert decision.kind == "approve"
    assert decision.rule == SQL_RULE
    assert visible(example, "agent", "db", "execute_sql")


@pytest.mark.parametrize(
    "query",
    [
        "DROP TABLE customers",
        "SELECT 1; DROP TABLE customers",
        "SELECT * FROM customers -- and more",
        "WITH gone AS (DELETE FROM customers RETURNING id) SELECT * FROM gone",
        "SELECT " + "x" * 4000,
    ],
)
def test_example_sql_fence_denies(example: GatewayConfig, query: str) -> None:
    decision = decide(example, "agent", "db", "execute_sql", {"query": query})

    assert isinstance(decision, Deny)
    assert decision.rule == SQL_RULE


def test_example_sql_hidden_from_dashboard(example: GatewayConfig) -> None:
    decision = decide(example, "dashboard", "db", "execute_sql", {"query": "SELECT 1"})

    assert isinstance(decision, Deny)
    assert decision.rule is None
    assert not visible(example, "dashboard", "db", "execute_sql")


def test_example_reads_are_automatic(example: GatewayConfig) -> None:
    for client in ("agent", "dashboard"):
        for tool in ("read_file", "search"):
            decision = decide(example, client, "db", tool, {"path": "/any"})

            assert isinstance(decision, Allow)
            assert decision.kind == "auto"
            assert decision.rule == "analysts read the database"


def test_example_reads_exclude_write_tools(example: GatewayConfig) -> None:
    for tool in ("echo", "write_file", "run_command"):
        decision = decide(example, "dashboard", "db", tool)

        assert isinstance(decision, Deny)
        assert decision.rule is None
        assert "read_only_tools" in decision.reason


def test_example_reads_stay_in_shared_folder(example: GatewayConfig) -> None:
    for path in ("notes.txt", str(SHARED / "notes.txt")):
        assert decide(example, "agent", "files", "read_file", {"path": path}).kind == "auto"

    for path in ("../../etc/passwd", "/etc/passwd", str(ROOT / "example-work" / "shared-other" / "x")):
        decision = decide(example, "agent", "files", "read_file", {"path": path})

        assert isinstance(decision, Deny)
        assert decision.rule == "agent reads the shared folder"


def test_example_write_grant_lasts_an_hour(example: GatewayConfig) -> None:
    arguments = {"path": str(REPORTS / "summary.txt"), "content": "done"}

    first = decide(example, "agent", "files", "write_file", arguments)
    within = decide(
        example, "agent", "files", "write_file", arguments, {WRITE_RULE: NOW - timedelta(minutes=59)}
    )
    after = decide(example, "agent", "files", "write_file", arguments, {WRITE_RULE: NOW - timedelta(hours=1)})

    assert isinstance(first, Allow)
    assert first.starts_rule == WRITE_RULE
    assert isinstance(within, Allow)
    assert within.starts_rule is None
    assert isinstance(after, Deny)
    assert after.rule is None


def test_example_write_grant_fenced(example: GatewayConfig) -> None:
    outside = decide(example, "agent", "files", "write_file", {"path": str(SHARED / "x"), "content": "x"})
    too_long = decide(
        example, "agent", "files", "write_file", {"path": str(REPORTS / "x"), "content": "x" * 100_001}
    )

    assert isinstance(outside, Deny)
    assert outside.rule == WRITE_RULE
    assert isinstance(too_long, Deny)
    assert too_long.rule == WRITE_RULE


def test_example_commands_notify(example: GatewayConfig) -> None:
    allowed = decide(example, "agent", "files", "run_command", {"args": ["wc", "reports/summary.txt"]})

    assert isinstance(allowed, Allow)
    assert allowed.kind == "notify"
    for args in (["rm", "-rf", "/"], ["sh", "-c", "x"], ["echo", "$HOME"], ["a"] * 9):
        decision = decide(example, "agent", "files", "run_command", {"args": args})

        assert isinstance(decision, Deny), args
        assert decision.rule == "agent runs commands with a notice"


def test_example_audit_settings(example: GatewayConfig) -> None:
    assert example.audit.on_failure == "deny"
    assert example.audit.retention_days == 90
    assert "customer-id" in example.audit.redact_patterns


def test_demo_rules(demo: GatewayConfig) -> None:
    assert [rule.name for rule in demo.rules] == [
        "read the repository",
        "work in the scratch folder",
        "a person approves each write",
        "run code in the sandbox",
    ]
    assert demo.gateway.default_client == "demo"
    assert demo.sandbox is not None
    assert demo.sandbox.backend == "local"


def test_demo_git_reads_only(demo: GatewayConfig) -> None:
    status = decide(demo, "demo", "git", "git_status", {"repo_path": "demo-work/repo"})
    commit = decide(demo, "demo", "git", "git_commit", {"message": "x"})

    assert isinstance(status, Allow)
    assert status.kind == "auto"
    assert isinstance(commit, Deny)
    assert commit.rule is None


def test_demo_files_fenced(demo: GatewayConfig) -> None:
    inside = ROOT / "demo-work" / "files" / "notes.txt"
    outside = ROOT / "README.md"

    read = decide(demo, "demo", "files", "read_text_file", {"path": str(inside)})
    write = decide(demo, "demo", "files", "write_file", {"path": str(inside), "content": "x"})
    outside_write = decide(demo, "demo", "files", "write_file", {"path": str(outside), "content": "x"})

    assert read.kind == "auto"
    assert write.kind == "approve"
    assert isinstance(outside_write, Deny)
    assert outside_write.rule == "a person approves each write"


@pytest.mark.parametrize("policy", [EXAMPLE, DEMO], ids=["example", "demo"])
def test_check_offline_accepts(policy: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mcp_guard", "check", "--offline", str(policy.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert "valid, 2 servers configured" in completed.stdout
