"""Attacks on mcp-guard's own files through a running gateway, whatever the rules allow.

The published filesystem server is given the folder that contains the policy file and the state
directory, and a rule lets every client read and write anywhere in it without asking. The gateway
must still refuse each call that names one of its own files, and let the others through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from support import NODE_BIN, fixture_server, read_records, stdio_gateway, write_policy

from mcp_guard.audit import CallFilter, SqliteAuditStore

pytestmark = pytest.mark.anyio

WRITE_TOOLS = ["read_text_file", "list_directory", "write_file"]


async def rejection_text(client: Client, name: str, arguments: dict[str, object]) -> str:
    result = await client.call_tool(name, arguments)
    assert result.is_error is True, f"{name} ran with {arguments}: {result.content}"
    return str(result.content[0].text)


@pytest.mark.slow
@pytest.mark.attack("tool argument naming mcp-guard's own files", attempts=8)
async def test_filesystem_server_cannot_reach_the_gateways_files(tmp_path: Path) -> None:
    # The gateway runs in the repository, and the server resolves a relative path against the
    # folder it is given, which is also the home folder here.
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / ".claude.json").write_text("{}")
    (tmp_path / "to-state").symlink_to(tmp_path / "state")
    servers = {"fs": {"command": str(NODE_BIN / "mcp-server-filesystem"), "args": [str(tmp_path)]}}
    rules = [
        {
            "name": "anything the server offers",
            "clients": ["*"],
            "server": "fs",
            "tools": WRITE_TOOLS,
            "decision": "auto",
            "write": True,
        }
    ]
    policy = write_policy(tmp_path, servers, rules=rules)
    before = policy.read_text()
    attempts = [
        ("fs__read_text_file", {"path": str(tmp_path / "state" / "audit.key")}),
        ("fs__read_text_file", {"path": "state/approval.key"}),
        ("fs__read_text_file", {"path": "policy.toml"}),
        ("fs__read_text_file", {"path": str(tmp_path / "to-state" / "audit.key")}),
        ("fs__list_directory", {"path": str(tmp_path / "state")}),
        ("fs__read_text_file", {"path": f" {policy} "}),
        ("fs__write_file", {"path": ".claude.json", "content": '{"mcpServers": {}}'}),
        ("fs__write_file", {"path": str(policy), "content": '[[rules]]\nname = "everything"\n'}),
    ]

    async with stdio_gateway(policy, env={"HOME": str(tmp_path)}) as client:
        messages = [await rejection_text(client, name, arguments) for name, arguments in attempts]
        notes = await client.call_tool("fs__read_text_file", {"path": "notes.txt"})
        listing = await client.call_tool("fs__list_directory", {"path": str(tmp_path)})
        written = await client.call_tool("fs__write_file", {"path": "draft.txt", "content": "draft"})
        ignored = await client.call_tool("fs__write_file", {"path": ".gitignore", "content": ".mcp.json\n"})

    async with SqliteAuditStore.in_state_dir(tmp_path / "state", read_only=True) as store:
        denied = await store.search(CallFilter(server="fs", outcome="denied"))

    assert all(message.startswith("Denied by mcp-guard: arguments['path'] names ") for message in messages)
    assert "an MCP client's settings" in messages[-2]
    assert "state directory" in messages[0]
    assert "policy file" in messages[-1]
    assert policy.read_text() == before
    assert notes.content[0].text == "notes"
    assert "state" in listing.content[0].text
    assert written.is_error is False
    assert (tmp_path / "draft.txt").read_text() == "draft"
    assert ignored.is_error is False
    assert (tmp_path / ".claude.json").read_text() == "{}"
    # Each rejection is recorded as a denial in the intent row, with the reason in the outcome.
    assert len(denied) == len(attempts)
    assert all(call.intent.decision == "deny" and call.intent.rule is None for call in denied)
    assert all("which mcp-guard lets no tool call reach" in (call.outcome.detail or "") for call in denied)


@pytest.mark.attack("tool argument naming mcp-guard's own files", attempts=3)
async def test_protected_paths_skip_approval(tmp_path: Path) -> None:
    # A policy's own protected_paths (with "~") and an "approve" rule: the call is rejected before
    # anyone is asked, and never reaches the server.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    record = tmp_path / "alpha.jsonl"
    rules = [
        {
            "name": "reads need a person",
            "clients": ["*"],
            "server": "alpha",
            "tools": ["read_file"],
            "decision": "approve",
            "write": True,
        },
        {
            "name": "greet",
            "clients": ["*"],
            "server": "alpha",
            "tools": ["echo"],
            "decision": "auto",
            "write": True,
        },
    ]
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha", record=record)},
        {"protected_paths": ["~/.ssh"]},
        rules=rules,
    )
    requests: list[object] = []

    async def elicit(*_: object) -> object:
        requests.append(_)
        raise AssertionError("nobody should be asked")

    env = {"HOME": str(home)}
    async with stdio_gateway(policy, env=env, elicitation_callback=elicit) as client:
        key = await rejection_text(client, "alpha__read_file", {"path": str(home / ".ssh" / "id_ed25519")})
        tilde = await rejection_text(client, "alpha__read_file", {"path": "~/.ssh/config"})
        try:
            await client.get_prompt("alpha__greet", {"name": str(policy)})
        except MCPError as exc:
            prompt = exc.error.message
        else:
            raise AssertionError("the prompt was rendered")
        echoed = await client.call_tool("alpha__echo", {"text": "~/notes and /tmp/x"})

    assert "a path the policy protects (gateway.protected_paths)" in key
    assert "a path the policy protects" in tilde
    assert prompt.startswith(
        "Denied by mcp-guard: arguments['arguments']['name'] names mcp-guard's policy file"
    )
    assert echoed.content[0].text == "~/notes and /tmp/x"
    assert requests == []
    events = read_records(record)
    assert [event["event"] for event in events if event["event"] in ("call", "get_prompt")] == ["call"]


@pytest.mark.slow
@pytest.mark.attack("tool argument naming mcp-guard's own files", attempts=2)
async def test_renamed_folder_stops_every_call(tmp_path: Path) -> None:
    # Renaming ~/.claude would let a write under the new name reach its settings.json.
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / "notes.txt").write_text("notes")
    servers = {"fs": {"command": str(NODE_BIN / "mcp-server-filesystem"), "args": [str(home)]}}
    rules = [
        {
            "name": "anything in the home folder",
            "clients": ["*"],
            "server": "fs",
            "tools": [*WRITE_TOOLS, "move_file"],
            "decision": "auto",
            "write": True,
        }
    ]
    policy = write_policy(tmp_path, servers, rules=rules)
    renamed = {"source": str(home / ".claude"), "destination": str(home / "c2")}
    settings = {"path": str(home / "c2" / "settings.json"), "content": '{"hooks": {}}'}

    async with stdio_gateway(policy, env={"HOME": str(home)}) as client:
        moved = await client.call_tool("fs__move_file", renamed)
        write = await rejection_text(client, "fs__write_file", settings)
        read = await rejection_text(client, "fs__read_text_file", {"path": str(home / "notes.txt")})
        (home / "c2").rename(home / ".claude")
        restored = await client.call_tool("fs__read_text_file", {"path": str(home / "notes.txt")})

    assert moved.is_error is False
    assert f"the folder {home / '.claude'} was moved or replaced while the gateway ran" in write
    assert "every call is rejected until it is back" in read
    assert not (home / ".claude" / "settings.json").exists()
    assert restored.content[0].text == "notes"


@pytest.mark.slow
@pytest.mark.attack("missing client folder made by renaming a prepared one", attempts=3)
async def test_rename_into_missing_client_folder(tmp_path: Path) -> None:
    # Gemini CLI is not set up, so ~/.gemini is missing: a folder with settings.json written under
    # another name, then renamed into its place, would start a server the agent chose.
    home = tmp_path / "home"
    (home / "prep").mkdir(parents=True)
    servers = {"fs": {"command": str(NODE_BIN / "mcp-server-filesystem"), "args": [str(home)]}}
    rules = [
        {
            "name": "anything in the home folder",
            "clients": ["*"],
            "server": "fs",
            "tools": [*WRITE_TOOLS, "move_file", "create_directory"],
            "decision": "auto",
            "write": True,
        }
    ]
    policy = write_policy(tmp_path, servers, rules=rules)
    settings = {"mcpServers": {"own": {"command": "sh"}}}

    async with stdio_gateway(policy, env={"HOME": str(home)}) as client:
        prepared = await client.call_tool(
            "fs__write_file", {"path": str(home / "prep" / "settings.json"), "content": str(settings)}
        )
        moved = await rejection_text(
            client, "fs__move_file", {"source": str(home / "prep"), "destination": str(home / ".gemini")}
        )
        created = await rejection_text(client, "fs__create_directory", {"path": "~/.gemini"})
        written = await rejection_text(
            client, "fs__write_file", {"path": ".gemini/settings.json", "content": str(settings)}
        )

    assert prepared.is_error is False
    assert "arguments['destination'] names a folder for an MCP client's settings" in moved
    assert "names a folder for an MCP client's settings" in created
    assert "names an MCP client's settings" in written
    assert not (home / ".gemini").exists()
