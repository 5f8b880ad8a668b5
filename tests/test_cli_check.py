"""`mcp-guard check`: what each client would see, including tools withheld for review."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from support import ROOT, fixture_server, stdio_gateway, write_policy

from mcp_guard.state.clock import HighWaterClock
from mcp_guard.state.usage import UsageStore

pytestmark = pytest.mark.anyio

RULES = [
    {
        "name": "agent echoes",
        "clients": ["agent"],
        "server": "alpha",
        "tools": ["echo", "filler_000"],
        "decision": "auto",
        "write": True,
    }
]


async def test_check_lists_tools_per_client(tmp_path: Path) -> None:
    clients = {"agent": {}, "other": {}}
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients=clients)

    output = await run_check(policy)

    assert "client agent sees 1 tool:\n  alpha__echo\n" in output
    assert "client other sees 0 tools:" in output
    assert "No tool definitions are pinned yet" in output


async def test_check_without_servers_skips_pin_note(tmp_path: Path) -> None:
    sandbox_rule = {**RULES[0], "server": "sandbox", "tools": ["run_code"]}
    policy = write_policy(tmp_path, {}, rules=[sandbox_rule], clients={"agent": {}}, sandbox={})

    output = await run_check(policy)

    assert "client agent sees 1 tool:\n  run_code\n" in output
    assert "pinned" not in output


async def test_check_marks_tools_that_ask_or_notify(tmp_path: Path) -> None:
    rules = [
        *RULES,
        {**RULES[0], "name": "agent writes", "tools": ["write_file"], "decision": "approve"},
        {**RULES[0], "name": "agent runs sql", "tools": ["execute_sql"], "decision": "notify"},
    ]
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=rules, clients={"agent": {}})

    output = await run_check(policy)

    assert "  alpha__write_file  (asks for approval)\n" in output
    assert "  alpha__execute_sql  (notifies the client)\n" in output
    assert "  alpha__echo\n" in output


async def test_check_lists_limits_per_client(tmp_path: Path) -> None:
    clients = {"agent": {"groups": ["bots"]}, "other": {}}
    limits = {
        "rules": [
            {
                "name": "bots",
                "groups": ["bots"],
                "server": "alpha",
                "tools": ["echo"],
                "requests_per_minute": 5,
            },
            {"name": "everyone", "per": "global", "concurrent_calls": 8},
        ]
    }
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients=clients, limits=limits
    )

    output = await run_check(policy)

    agent, other = output.split("client other")
    assert "limit 'bots' on alpha (echo), counted per client: requests_per_minute = 5" in agent
    assert "limit 'everyone', shared by all clients: concurrent_calls = 8" in agent
    assert "limit 'bots'" not in other
    assert "limit 'everyone'" in other


async def test_check_marks_withheld_tools(tmp_path: Path) -> None:
    clients = {"agent": {}}
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients=clients)
    async with stdio_gateway(policy) as client:  # the first start pins alpha's tools
        await client.list_tools()
    grown = write_policy(
        tmp_path, {"alpha": fixture_server("alpha", "--filler-tools", "1")}, rules=RULES, clients=clients
    )

    output = await run_check(grown)

    assert "  alpha__echo\n" in output
    assert "  alpha__filler_000  (withheld: new definition" in output


async def run_check(policy: Path, expect_code: int = 0) -> str:
    completed = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", "check", str(policy)], cwd=ROOT, check=False
    )
    assert completed.returncode == expect_code, completed.stderr.decode()[-2000:]
    return completed.stdout.decode()


async def test_check_reports_sandbox(tmp_path: Path) -> None:
    rules = [*RULES, {**RULES[0], "name": "agent runs code", "server": "sandbox", "tools": ["run_code"]}]
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        rules=rules,
        clients={"agent": {}, "other": {}},
        sandbox={"backend": "local"},
    )

    output = await run_check(policy)

    assert "[sandbox] local backend ready, languages: javascript, python, shell" in output
    assert "client agent sees 2 tools:\n  run_code\n  alpha__echo\n" in output
    assert "client other sees 0 tools:" in output


async def test_check_fails_on_hosts_the_sandbox_cannot_reach(tmp_path: Path) -> None:
    # "auto" picks the local backend when no E2B key is set, and that backend has no network.
    sandbox = {"backend": "auto", "allowed_hosts": ["pypi.org"], "e2b": {"api_key_from": "UNSET_E2B_KEY_VAR"}}
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}}, sandbox=sandbox
    )

    output = await run_check(policy, expect_code=1)

    assert (
        "[sandbox] NOT AVAILABLE: The 'local' sandbox cannot run code here: the local sandbox has no network"
        in output
    )
    assert "Remove [sandbox] allowed_hosts" in output


def _closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_check_logs_no_info_lines(tmp_path: Path) -> None:
    # The report lists which servers started, so info log lines would only interleave with it.
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}})
    environment = {name: value for name, value in os.environ.items() if name != "MCP_GUARD_LOG_LEVEL"}

    completed = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", "check", str(policy)], cwd=ROOT, check=False, env=environment
    )

    assert completed.returncode == 0, completed.stderr.decode()[-2000:]
    assert '"level": "info"' not in completed.stderr.decode()
    assert "[alpha] ready" in completed.stdout.decode()


async def test_check_names_undefined_stdio_client(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}})

    output = await run_check(policy)

    assert (
        'stdio client: default, which the policy does not define, so only rules with clients = ["*"]'
        in output
    )


async def test_check_fails_when_redis_limit_store_is_unreachable(tmp_path: Path) -> None:
    # A gateway starts without its Redis and then rejects every limited call, so check must not pass.
    limits = {
        "store": "redis",
        "redis_url": f"redis://127.0.0.1:{_closed_port()}/0",
        "rules": [{"name": "each", "requests_per_minute": 5}],
    }
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}}, limits=limits
    )

    output = await run_check(policy, expect_code=1)

    assert "[limits] NOT AVAILABLE: The rate-limit store (Redis at redis://127.0.0.1:" in output
    assert "the gateway rejects every call that a limit applies to" in output
    assert "[alpha] ready" in output  # the servers are still checked


async def test_check_reports_reachable_redis_limit_store(tmp_path: Path) -> None:
    limits = {
        "store": "redis",
        "redis_url": "redis://127.0.0.1:6379/0",
        "key_prefix": f"check-test-{os.getpid()}",
        "rules": [{"name": "each", "requests_per_minute": 5}],
    }
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}}, limits=limits
    )

    output = await run_check(policy)

    assert "[limits] Redis at redis://127.0.0.1:6379/0 answers" in output


async def test_offline_check_rejects_unreachable_hosts(tmp_path: Path) -> None:
    sandbox = {"backend": "auto", "allowed_hosts": ["pypi.org"], "e2b": {"api_key_from": "TRIAL_E2B_KEY"}}
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}}, sandbox=sandbox
    )

    without_key = await check_offline(policy)
    with_key = await check_offline(policy, TRIAL_E2B_KEY="e2b_made_up_for_this_test")

    assert without_key.returncode == 1
    output = without_key.stdout.decode()
    assert "run_code backend: local (auto: $TRIAL_E2B_KEY is not set)\n" in output
    assert "[sandbox] NOT AVAILABLE: The 'local' sandbox cannot run code here" in output
    assert with_key.returncode == 0
    assert "run_code backend: e2b (auto: $TRIAL_E2B_KEY is set)\n" in with_key.stdout.decode()
    assert "e2b_made_up_for_this_test" not in with_key.stdout.decode()


async def test_check_explains_tool_hidden_for_want_of_write(tmp_path: Path) -> None:
    read_only_rule = {**RULES[0], "name": "agent runs code", "server": "sandbox", "tools": ["run_code"]}
    del read_only_rule["write"]
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        rules=[*RULES, read_only_rule],
        clients={"agent": {}, "other": {}},
        sandbox={"backend": "local"},
    )

    output = await run_check(policy)

    agent, other = output.split("client other")
    assert "client agent sees 1 tool:\n  alpha__echo\n" in agent
    assert (
        "  hidden: run_code, which rule 'agent runs code' names without write = true. Such a rule grants "
        "only read-only tools; add write = true to it to grant this one."
    ) in agent
    assert "hidden:" not in other


async def test_check_fails_without_sandbox(tmp_path: Path) -> None:
    sandbox = {"backend": "local", "local": {"bwrap": str(tmp_path / "missing-bwrap")}}
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}}, sandbox=sandbox
    )

    output = await run_check(policy, expect_code=1)

    assert "[sandbox] NOT AVAILABLE: The 'local' sandbox cannot run code here: bubblewrap" in output


async def test_check_names_http_clients(tmp_path: Path) -> None:
    # `later` names a variable that is not set, so it has no key yet.
    keyed = {
        "agent": {"api_key_hashes": ["sha256:" + "a" * 64]},
        "later": {"api_key_hashes_from": "MCP_GUARD_TEST_UNSET_KEY_HASHES"},
        "other": {},
    }
    (tmp_path / "keys").mkdir()
    (tmp_path / "none").mkdir()
    with_keys = write_policy(
        tmp_path / "keys", {"alpha": fixture_server("alpha")}, rules=RULES, clients=keyed
    )
    without_keys = write_policy(
        tmp_path / "none", {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}}
    )

    listed = await check_offline(with_keys)
    unkeyed = await check_offline(without_keys)

    assert listed.returncode == 0
    assert "HTTP clients: agent with API keys\n" in listed.stdout.decode()
    assert unkeyed.returncode == 0
    assert (
        "HTTP clients: none, which matters only for `mcp-guard run --transport http`"
        in unkeyed.stdout.decode()
    )


async def test_check_rejects_malformed_hash_from_environment(tmp_path: Path) -> None:
    clients = {"agent": {"api_key_hashes_from": "AGENT_KEY_HASHES"}}
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients=clients)

    completed = await check_offline(policy, AGENT_KEY_HASHES="mcpg_pasted-key-by-mistake")

    assert completed.returncode == 2
    assert "$AGENT_KEY_HASHES (API key hashes of client 'agent'): entry [0]" in completed.stderr.decode()
    assert "mcpg_pasted-key-by-mistake" not in completed.stderr.decode()


async def test_check_warns_on_server_given_gateway_files(tmp_path: Path) -> None:
    # The server is given the folder of the policy and its state directory, and a folder of its own.
    data = tmp_path / "data"
    data.mkdir()
    server = {**fixture_server("alpha"), "args": [*fixture_server("alpha")["args"], str(tmp_path), str(data)]}
    policy = write_policy(tmp_path, {"alpha": server}, rules=RULES, clients={"agent": {}})

    completed = await check_offline(policy, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    warnings = [line for line in completed.stdout.decode().splitlines() if "WARNING server 'alpha'" in line]

    assert completed.returncode == 0
    assert len(warnings) == 1
    assert (
        f"is given {tmp_path}, which contains mcp-guard's state directory ({tmp_path / 'state'}), "
        f"mcp-guard's folder of policies and client settings ({tmp_path / 'xdg' / 'mcp-guard'}) and "
        f"mcp-guard's policy file ({policy})." in warnings[0]
    )
    assert "a tool that searches or lists the folder can still reach them" in warnings[0]
    assert "git work tree" not in warnings[0]


async def test_check_warns_once_for_servers_given_one_folder(tmp_path: Path) -> None:
    servers = {
        name: {**fixture_server(name), "args": [*fixture_server(name)["args"], str(tmp_path)]}
        for name in ("alpha", "beta")
    }
    policy = write_policy(tmp_path, servers, rules=RULES, clients={"agent": {}})

    completed = await check_offline(policy)
    warnings = [line for line in completed.stdout.decode().splitlines() if "WARNING" in line]

    assert len(warnings) == 1
    assert f"WARNING servers 'alpha' and 'beta' are given {tmp_path}, which contains" in warnings[0]
    assert "give each server a folder without them" in warnings[0]


@pytest.mark.parametrize("ignored", [False, True])
async def test_state_dir_in_work_tree(tmp_path: Path, ignored: bool) -> None:
    await anyio.run_process(["git", "-C", str(tmp_path), "init", "-q"])
    if ignored:
        (tmp_path / ".gitignore").write_text("state/\n")
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=RULES, clients={"agent": {}})

    completed = await check_offline(policy)
    warnings = [line for line in completed.stdout.decode().splitlines() if "WARNING" in line]

    if ignored:
        assert warnings == []
    else:
        assert warnings == [
            f"  WARNING the state directory {tmp_path / 'state'} is inside the git work tree {tmp_path}, "
            "which does not ignore it: `git add` there would commit the audit and approval keys. List it "
            "in .gitignore, or move gateway.state_dir out of the work tree"
        ]


async def test_check_warns_on_git_work_tree(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    server = {**fixture_server("alpha"), "args": [*fixture_server("alpha")["args"], str(tmp_path)]}
    policy = write_policy(tmp_path, {"alpha": server}, rules=RULES, clients={"agent": {}})

    completed = await check_offline(policy)
    warnings = [line for line in completed.stdout.decode().splitlines() if "WARNING server 'alpha'" in line]

    assert len(warnings) == 1
    assert warnings[0].endswith(
        f"{tmp_path} is a git work tree, so `git add .` there would commit them too: move "
        "gateway.state_dir and the policy out of it"
    )


async def test_check_shows_stderr_of_failed_server(tmp_path: Path) -> None:
    fixture = fixture_server("alpha")
    starts_noisily = (
        "import runpy, sys; print('alpha warming up', file=sys.stderr); "
        f"sys.argv = [{fixture['args'][0]!r}]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    fails = "import sys; print('reading settings', file=sys.stderr); sys.exit('no token in $BETA_TOKEN')"
    servers = {
        "alpha": {"command": sys.executable, "args": ["-c", starts_noisily]},
        "beta": {"command": sys.executable, "args": ["-c", fails]},
    }
    policy = write_policy(tmp_path, servers, rules=RULES, clients={"agent": {}})

    command = [sys.executable, "-m", "mcp_guard", "check", str(policy)]
    completed = await anyio.run_process(command, cwd=ROOT, check=False)
    output, errors = completed.stdout.decode(), completed.stderr.decode()

    assert completed.returncode == 1
    assert "[alpha] ready" in output
    assert "[beta] NOT AVAILABLE" in output
    assert "  its last lines on stderr:\n    reading settings\n    no token in $BETA_TOKEN\n" in output
    assert "warming up" not in output
    assert "warming up" not in errors
    assert "reading settings" not in errors


async def check_offline(policy: Path, **environment: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "mcp_guard", "check", "--offline", str(policy)]
    return await anyio.run_process(command, cwd=ROOT, env={**os.environ, **environment}, check=False)


async def test_check_warns_on_unknown_tools(tmp_path: Path) -> None:
    deny = {
        "name": "nobody writes",
        "clients": ["*"],
        "server": "alpha",
        "tools": ["write_fil", "alpha__write_file", "write_*", "read_file"],
        "decision": "deny",
    }
    server = {**fixture_server("alpha"), "read_only_tools": ["echo", "serch", "read_*"]}
    policy = write_policy(tmp_path, {"alpha": server}, rules=[*RULES, deny], clients={"agent": {}})

    output = await run_check(policy)

    assert (
        "  WARNING rule 'nobody writes' names tool 'write_fil', which server 'alpha' does not list, so that "
        "entry matches no tool (did you mean 'write_file'?)\n"
    ) in output
    assert (
        "  WARNING rule 'nobody writes' names tool 'alpha__write_file', which server 'alpha' does not list, "
        "so that entry matches no tool. It looks like an exported name, but rules and read_only_tools take "
        "the name the server lists (did you mean 'write_file'?)\n"
    ) in output
    assert (
        "  WARNING rule 'nobody writes' names tool 'write_*', which server 'alpha' does not list, so that "
        'entry matches no tool. Names are exact, not patterns: list each tool, or use "*" (tools matching '
        "it now: write_file)\n"
    ) in output
    assert (
        "  WARNING servers.alpha.read_only_tools names 'serch', which server 'alpha' does not list, so that "
        "entry makes no tool read-only (did you mean 'search'?)\n"
    ) in output
    assert (
        "  WARNING servers.alpha.read_only_tools names 'read_*', which server 'alpha' does not list, so that "
        "entry makes no tool read-only. Names are exact, not patterns: list each tool (tools matching it "
        "now: read_file)\n"
    ) in output
    assert "'read_file', which" not in output
    assert "'echo', which" not in output


async def test_check_skips_unavailable_servers(tmp_path: Path) -> None:
    broken = {"command": str(tmp_path / "missing-server")}
    rule = {**RULES[0], "name": "typo on a broken server", "server": "broken", "tools": ["ech"]}
    wildcard = {**RULES[0], "name": "typo on every server", "server": "*", "tools": ["ech"]}
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha"), "broken": broken},
        rules=[*RULES, rule, wildcard],
        clients={"agent": {}},
    )

    output = await run_check(policy, expect_code=1)

    assert "[broken] NOT AVAILABLE" in output
    assert "'typo on a broken server' names tool" not in output
    assert "'typo on every server' names tool" not in output
    assert "'agent echoes' names tool 'filler_000'" in output  # alpha started, so its rules are checked


async def test_check_warns_on_unknown_arguments(tmp_path: Path) -> None:
    rule = {
        "name": "agent reads files",
        "clients": ["agent"],
        "server": "alpha",
        "tools": ["read_file", "nested"],
        "decision": "auto",
        "write": True,
        "arguments": {
            "pth": {"path_under": ["/srv"]},
            "MODE": {"one_of": ["read"]},  # nested: config.target.mode, in another spelling
            "Text": {"max_length": 10},  # only echo takes it, which this rule does not grant
        },
    }
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=[rule], clients={"agent": {}})

    output = await run_check(policy)

    assert (
        "  WARNING rule 'agent reads files' constrains argument 'pth', which no tool it grants takes "
        "(read_file, nested), so the constraint never applies (did you mean 'path'?)\n"
    ) in output
    assert "constrains argument 'Text', which no tool it grants takes" in output
    assert "argument 'MODE'" not in output


async def test_check_warns_on_unfenced_paths(tmp_path: Path) -> None:
    rule = {
        "name": "agent runs commands",
        "clients": ["agent"],
        "server": "alpha",
        "tools": ["run_command", "read_file"],
        "decision": "auto",
        "write": True,
        "arguments": {"args": {"path_under": ["/srv"]}},
    }
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=[rule], clients={"agent": {}})

    output = await run_check(policy)

    assert (
        "  WARNING rule 'agent runs commands' fences 'args' with path_under, but tool 'read_file' also "
        "takes 'path', which no path_under in the rule covers\n"
    ) in output
    assert "constrains argument" not in output


async def test_check_suggests_read_only_tools(tmp_path: Path) -> None:
    reads = {**RULES[0], "name": "agent reads", "tools": ["read_file", "echo"]}
    del reads["write"]
    server = {**fixture_server("alpha"), "read_only_tools": ["echo", "read_fil"]}
    policy = write_policy(tmp_path, {"alpha": server}, rules=[reads], clients={"agent": {}})

    output = await run_check(policy)

    assert "client agent sees 1 tool:\n  alpha__echo\n" in output
    assert (
        "  hidden: alpha__read_file, which rule 'agent reads' names without write = true. Such a rule "
        "grants only read-only tools; add write = true to it to grant this one. If it only reads, add "
        "'read_file' to servers.alpha.read_only_tools instead. That list has 'read_fil', which may be a "
        "typo of it.\n"
    ) in output


async def test_check_applies_time_windows(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ended = now - timedelta(days=2)
    starts = now + timedelta(days=2)
    first_call = now - timedelta(hours=1)
    rules = [
        {**RULES[0], "name": "echo ended", "tools": ["echo"], "not_after": ended},
        {**RULES[0], "name": "search starts later", "tools": ["search"], "not_before": starts},
        {**RULES[0], "name": "whoami for a minute", "tools": ["whoami"], "active_for_seconds": 60},
        {**RULES[0], "name": "env for a day", "tools": ["env"], "active_for_seconds": 86400},
    ]
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=rules, clients={"agent": {}})
    async with UsageStore(tmp_path / "state" / "state.sqlite3", HighWaterClock()) as usage:
        await usage.record_first_use("agent", "whoami for a minute", first_call)
        await usage.record_first_use("agent", "env for a day", first_call)

    output = await run_check(policy)
    offline = (await check_offline(policy)).stdout.decode()

    assert "client agent sees 1 tool:\n  alpha__env\n" in output
    assert f"  rule 'echo ended' ended at {ended.isoformat()} (not_after)\n" in output
    assert f"  rule 'echo ended' ended at {ended.isoformat()} (not_after)\n" in offline
    assert f"  rule 'search starts later' starts at {starts.isoformat()} (not_before)\n" in output
    closed = first_call + timedelta(seconds=60)
    assert (
        f"  rule 'whoami for a minute': the window of client 'agent' closed at {closed.isoformat()} "
        f"(active_for_seconds from its first call at {first_call.isoformat()})\n"
    ) in output
    assert "'env for a day'" not in output


async def test_check_never_creates_state_file(tmp_path: Path) -> None:
    rules = [{**RULES[0], "active_for_seconds": 60}]
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=rules, clients={"agent": {}})

    output = await run_check(policy)

    assert "client agent sees 1 tool:\n  alpha__echo\n" in output
    assert "time windows" not in output
    assert not (tmp_path / "state" / "state.sqlite3").exists()


async def test_check_names_missing_command(tmp_path: Path) -> None:
    servers = {
        "alpha": fixture_server("alpha"),
        "bare": {"command": "mcp-guard-no-such-server"},
        "absolute": {"command": str(tmp_path / "no-such-server")},
    }
    policy = write_policy(tmp_path, servers, rules=RULES, clients={"agent": {}})

    output = await run_check(policy, expect_code=1)

    assert (
        "[bare] NOT AVAILABLE: command not found: 'mcp-guard-no-such-server'; give its absolute path"
        in output
    )
    assert f"[absolute] NOT AVAILABLE: not found: '{tmp_path / 'no-such-server'}' does not exist" in output
    assert "give its absolute path" not in output.split("[absolute]")[1].split("\n")[0]


async def test_check_names_exit_status(tmp_path: Path) -> None:
    script = "import sys; print('config file conf.json not found', file=sys.stderr); sys.exit(2)"
    servers = {
        "alpha": fixture_server("alpha"),
        "broken": {"command": sys.executable, "args": ["-c", script]},
    }
    policy = write_policy(tmp_path, servers, rules=RULES, clients={"agent": {}})

    output = await run_check(policy, expect_code=1)

    line = next(line for line in output.splitlines() if line.startswith("[broken]"))
    assert line.startswith("[broken] NOT AVAILABLE: ")
    assert line.endswith(
        "(the server exited with status 2; its last stderr line: config file conf.json not found)"
    )
