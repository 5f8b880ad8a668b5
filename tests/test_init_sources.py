"""Where `mcp-guard init` finds servers: Claude Code's scopes and VS Code's profile files.

Claude Code keeps user-scope servers at the top of `~/.claude.json` and local-scope servers
under `projects["/abs/path"]`. A VS Code user-profile `mcp.json` has no workspace of its own,
so `${workspaceFolder}` needs `--workspace`. Each test runs the real command line with a home
folder inside the test's folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from support import FIXTURE_SERVER
from test_init import fixture_entry, guard_folder, read_toml, run_init

pytestmark = pytest.mark.anyio

TIME_SERVER = {"command": "mcp-server-time"}


def write_claude_json(home: Path, data: dict[str, Any]) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / ".claude.json"
    path.write_text(json.dumps({"numStartups": 3, **data}), encoding="utf-8")
    return path


async def test_claude_json_reads_local_scope(tmp_path: Path) -> None:
    home, project, other = tmp_path / "home", tmp_path / "myproject", tmp_path / "other"
    project.mkdir()
    user_file = write_claude_json(
        home,
        {
            "mcpServers": {"time": TIME_SERVER, "fixture": TIME_SERVER},
            "projects": {
                str(project): {"mcpServers": {"fixture": fixture_entry(tmp_path / "fixture.jsonl")}},
                str(other): {"mcpServers": {"notes": TIME_SERVER}},
                str(tmp_path / "empty"): {"mcpServers": {}},
            },
        },
    )

    completed = await run_init(project, "--from", str(user_file), "--offline", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    output = completed.stdout.decode()
    policy = read_toml(guard_folder(home) / "claude-code-myproject.toml")
    assert list(policy["servers"]) == ["time", "fixture"]
    assert str(FIXTURE_SERVER) in policy["servers"]["fixture"]["args"]  # the local-scope entry won
    assert "  time (user scope): " in output
    assert "  fixture (local scope): " in output
    assert "user-scope server 'fixture' is not imported" in output
    assert f"local-scope servers of other folders are not imported ({other})" in output
    assert str(tmp_path / "empty") not in output
    assert f"projects[{str(project)!r}].mcpServers of {user_file} (fixture)" in output


@pytest.mark.parametrize("source", ["~/.claude.json", "claude-code"])
async def test_other_folders_named(tmp_path: Path, source: str) -> None:
    home, current, other = tmp_path / "home", tmp_path / "current", tmp_path / "other"
    current.mkdir()
    write_claude_json(home, {"projects": {str(other): {"mcpServers": {"notes": TIME_SERVER}}}})

    completed = await run_init(current, "--from", source, "--offline", home=home)

    assert completed.returncode == 2
    error = completed.stderr.decode()
    assert f"no local-scope servers for the current folder {current}" in error
    assert f"Local-scope servers are kept for {other}: run init from that folder" in error
    assert "is this an MCP client configuration" not in error
    assert not guard_folder(home).exists()


async def test_claude_code_without_mcp_json(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "myproject"
    project.mkdir()
    write_claude_json(home, {"projects": {str(project): {"mcpServers": {"time": TIME_SERVER}}}})

    completed = await run_init(project, "--from", "claude-code", "--offline", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    output = completed.stdout.decode()
    assert f"{project} has no .mcp.json, so init read" in output
    assert str(home / ".claude.json") in output
    assert "  time (local scope): " in output
    assert list(read_toml(guard_folder(home) / "claude-code-myproject.toml")["servers"]) == ["time"]


async def test_mcp_json_names_claude_json_servers(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "myproject"
    project.mkdir()
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"time": TIME_SERVER}}), "utf-8")
    write_claude_json(home, {"mcpServers": {"search": TIME_SERVER}})

    completed = await run_init(project, "--from", "claude-code", "--offline", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    output = completed.stdout.decode()
    assert "Claude Code also starts the servers that" in output
    assert "'search' (user scope)" in output
    assert list(read_toml(guard_folder(home) / "claude-code-myproject.toml")["servers"]) == ["time"]


def write_profile_config(home: Path) -> Path:
    """Write a VS Code user-profile mcp.json whose server runs in ${workspaceFolder}."""
    path = home / ".config" / "Code" / "User" / "mcp.json"
    path.parent.mkdir(parents=True)
    server = {"command": sys.executable, "args": [str(FIXTURE_SERVER)], "cwd": "${workspaceFolder}"}
    path.write_text(json.dumps({"servers": {"notes": server}}), encoding="utf-8")
    return path


async def test_profile_workspace_folder_needs_option(tmp_path: Path) -> None:
    home = tmp_path / "home"
    profile = write_profile_config(home)

    completed = await run_init(tmp_path, "--from", str(profile), "--offline", home=home)

    assert completed.returncode == 2
    error = completed.stderr.decode()
    assert str(profile) in error
    assert "server 'notes': cwd uses ${workspaceFolder}" in error
    assert "--workspace DIR" in error
    assert not guard_folder(home).exists()


async def test_profile_workspace_option_sets_folder(tmp_path: Path) -> None:
    home, workspace = tmp_path / "home", tmp_path / "webapp"
    workspace.mkdir()
    profile = write_profile_config(home)

    completed = await run_init(
        tmp_path, "--from", str(profile), "--workspace", str(workspace), "--offline", home=home
    )

    assert completed.returncode == 0, completed.stderr.decode()
    policy = read_toml(guard_folder(home) / "vscode-webapp.toml")
    assert policy["servers"]["notes"]["cwd"] == str(workspace)


async def test_workspace_option_needs_vscode(tmp_path: Path) -> None:
    source = tmp_path / "claude_desktop_config.json"
    source.write_text(json.dumps({"mcpServers": {"time": TIME_SERVER}}), encoding="utf-8")

    completed = await run_init(tmp_path, "--from", str(source), "--workspace", str(tmp_path), "--offline")

    assert completed.returncode == 2
    assert "--workspace sets VS Code's ${workspaceFolder}" in completed.stderr.decode()


async def test_second_init_keeps_the_guarded_policy(tmp_path: Path) -> None:
    # After the client file was replaced with init's own, a second init must neither import
    # mcp-guard as a server (the gateway would start itself) nor replace the policy it runs.
    home = tmp_path / "home"
    source = tmp_path / "claude_desktop_config.json"
    source.write_text(
        json.dumps({"mcpServers": {"fixture": fixture_entry(tmp_path / "fixture.jsonl")}}), encoding="utf-8"
    )
    first = await run_init(tmp_path, "--from", str(source), "--offline", home=home)
    policy = guard_folder(home) / "claude-desktop.toml"
    generated = json.loads((guard_folder(home) / "claude-desktop.client.json").read_text(encoding="utf-8"))
    generated["mcpServers"]["time"] = TIME_SERVER
    source.write_text(json.dumps(generated), encoding="utf-8")
    before = policy.read_text(encoding="utf-8")

    second = await run_init(tmp_path, "--from", str(source), "--offline", "--force", home=home)

    assert first.returncode == 0, first.stderr.decode()
    assert second.returncode == 2
    error = second.stderr.decode()
    assert "the client's entry 'mcp-guard' runs mcp-guard with this policy" in error
    assert policy.read_text(encoding="utf-8") == before


async def test_guard_entry_alone_is_not_imported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = tmp_path / "claude_desktop_config.json"
    guard = {
        "command": "/opt/guard/.venv/bin/mcp-guard",
        "args": ["run", "--config", str(tmp_path / "p.toml")],
    }
    source.write_text(json.dumps({"mcpServers": {"mcp-guard": guard}}), encoding="utf-8")

    completed = await run_init(tmp_path, "--from", str(source), "--offline", home=home)

    assert completed.returncode == 2
    assert "no server could be imported" in completed.stderr.decode()
    assert "it runs mcp-guard itself" in completed.stderr.decode()


async def test_project_servers_start_in_the_project(tmp_path: Path) -> None:
    # Claude Code starts a project's servers in its folder, so "." there means the project.
    home, project = tmp_path / "home", tmp_path / "myproject"
    project.mkdir()
    entry = {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."]}
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"files": entry}}), encoding="utf-8")

    completed = await run_init(project, "--from", "claude-code", "--offline", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    policy = read_toml(guard_folder(home) / "claude-code-myproject.toml")
    assert policy["servers"]["files"]["cwd"] == str(project)
    # The entry sets no credential, so the next step must not claim it does.
    assert "contains your credentials" not in completed.stdout.decode()
    assert "where the agent could change the entry" in " ".join(completed.stdout.decode().split())


async def test_next_step_names_credentials_it_carries(tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "myproject"
    project.mkdir()
    entry = {
        "command": "npx",
        "args": ["-y", "@modelcontextprotocol/server-memory"],
        "env": {"API_TOKEN": "x1"},
    }
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"memory": entry}}), encoding="utf-8")

    completed = await run_init(project, "--from", "claude-code", "--offline", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    assert "the entry contains your credentials" in " ".join(completed.stdout.decode().split())
