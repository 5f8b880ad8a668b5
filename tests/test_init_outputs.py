"""Where `mcp-guard init` writes, and the warnings about outputs that a server or git can reach.

The tests run the real command line with a home folder inside the test's folder. The Claude
Code project runs the published `mcp-server-filesystem` on its own folder, the setup where
files written into the project would be readable by the agent.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from support import LEGACY, NODE_BIN
from test_init import (
    fixture_entry,
    guard_folder,
    init_env,
    read_toml,
    run_init,
    state_root,
    write_desktop_config,
)

from mcp_guard.setup.outputs import plan_outputs
from mcp_guard.setup.sources import ClientFile

pytestmark = pytest.mark.anyio

FILESYSTEM_SERVER = NODE_BIN / "mcp-server-filesystem"


def filesystem_server() -> str:
    """Return the filesystem server's path, or fail naming the make target that installs it."""
    if not FILESYSTEM_SERVER.exists():
        pytest.fail(f"{FILESYSTEM_SERVER} is missing: run `make tests/node/node_modules/.installed`")
    return str(FILESYSTEM_SERVER)


def write_project(folder: Path, servers: dict[str, Any]) -> Path:
    """Create a Claude Code project folder whose .mcp.json has `servers`; return the folder."""
    folder.mkdir(parents=True)
    (folder / ".mcp.json").write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return folder


def log_events(completed: subprocess.CompletedProcess[bytes], event: str) -> list[dict[str, Any]]:
    """Return the JSON log lines that init wrote to stderr for `event`."""
    lines = [json.loads(line) for line in completed.stderr.decode().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def warnings_of(completed: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [line for line in completed.stdout.decode().splitlines() if line.startswith("WARNING:")]


async def test_claude_code_project_stays_clean(tmp_path: Path) -> None:
    home = tmp_path / "home"
    project = write_project(
        tmp_path / "myproject",
        {
            "files": {"command": filesystem_server(), "args": ["."]},
            "fixture": fixture_entry(tmp_path / "fixture.jsonl"),
        },
    )

    completed = await run_init(project, "--from", "claude-code", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    assert sorted(os.listdir(project)) == [".mcp.json"]
    policy_path = guard_folder(home) / "claude-code-myproject.toml"
    client_config = guard_folder(home) / "claude-code-myproject.client.json"
    assert stat.S_IMODE(client_config.stat().st_mode) == 0o600
    assert stat.S_IMODE(guard_folder(home).stat().st_mode) == 0o700
    policy = read_toml(policy_path)
    assert policy["gateway"]["state_dir"] == str(state_root(home) / "claude-code-myproject")
    assert policy["servers"]["files"]["args"] == ["."]
    assert "read_text_file" in policy["servers"]["files"]["read_only_tools"]
    assert warnings_of(completed) == []
    assert f"Project folder: {project}" in policy_path.read_text(encoding="utf-8")


async def test_default_outputs_follow_xdg(tmp_path: Path) -> None:
    source = write_desktop_config(tmp_path, tmp_path / "fixture.jsonl")
    config_home, state_home = tmp_path / "xdg-config", tmp_path / "xdg-state"

    completed = await run_init(
        tmp_path,
        "--from",
        str(source),
        "--offline",
        XDG_CONFIG_HOME=str(config_home),
        XDG_STATE_HOME=str(state_home),
    )

    assert completed.returncode == 0, completed.stderr.decode()
    policy = read_toml(config_home / "mcp-guard" / "claude-desktop.toml")
    assert policy["gateway"]["state_dir"] == str(state_home / "mcp-guard" / "claude-desktop")
    assert (config_home / "mcp-guard" / "claude-desktop.client.json").exists()
    assert not (tmp_path / "home").exists()


async def test_output_in_served_folder_warns(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "myproject", {"files": {"command": filesystem_server(), "args": ["."]}}
    )
    await anyio.run_process(["git", "init", "-q", str(project)], check=True)
    policy = project / "guard.toml"
    client_config = project / "guard.client.json"

    completed = await run_init(
        project, "--from", "claude-code", "--output", str(policy), "--offline", home=tmp_path / "home"
    )

    assert completed.returncode == 0, completed.stderr.decode()
    warnings = warnings_of(completed)
    served = [line for line in warnings if "server 'files' is given" in line]
    assert len(served) == 2
    assert f"policy {policy} is inside {project}" in served[0]
    assert f"client configuration {client_config} is inside {project}" in served[1]
    assert "carries any credentials" in served[1]
    assert "a tool that searches or lists that folder can still reach it" in served[1]
    assert all("--output FILE outside" in line for line in served)
    in_git = [line for line in warnings if "git work tree" in line]
    assert len(in_git) == 2
    assert all("do not commit it" in line for line in in_git)
    assert not (project / ".gitignore").exists()
    logged = log_events(completed, "init_output_readable_by_server")
    assert [(event["output"], event["server"], event["folder"]) for event in logged] == [
        ("policy", "files", str(project)),
        ("client configuration", "files", str(project)),
    ]
    assert len(log_events(completed, "init_output_in_git_work_tree")) == 2


async def test_served_home_warns_for_state(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    entry = fixture_entry(tmp_path / "fixture.jsonl")
    entry["args"] += ["--root", str(home)]
    source = tmp_path / "claude_desktop_config.json"
    source.write_text(json.dumps({"mcpServers": {"notes": entry}}), encoding="utf-8")

    completed = await run_init(tmp_path, "--from", str(source), "--offline", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    warnings = warnings_of(completed)
    assert len(warnings) == 3
    state = [line for line in warnings if "state directory" in line]
    assert len(state) == 1
    assert str(state_root(home) / "claude-desktop") in state[0]
    assert f"inside {home}, a folder that server 'notes' is given" in state[0]
    assert "set gateway.state_dir in the policy" in state[0]


async def test_policies_in_one_folder_run_together(tmp_path: Path) -> None:
    home = tmp_path / "home"
    guard = home / "guard"
    desktop_source = tmp_path / "claude_desktop_config.json"
    desktop_source.write_text(json.dumps({"mcpServers": {"time": {"command": "mcp-server-time"}}}), "utf-8")
    vscode_source = tmp_path / "mcp.json"  # a user-profile file, outside any .vscode folder
    vscode_source.write_text(json.dumps({"servers": {"time": {"command": "mcp-server-time"}}}), "utf-8")

    desktop = await run_init(tmp_path, "--from", str(desktop_source), "--output", str(guard / "desktop.toml"))
    vscode = await run_init(tmp_path, "--from", str(vscode_source), "--output", str(guard / "vscode.toml"))

    assert desktop.returncode == 0, desktop.stderr.decode()
    assert vscode.returncode == 0, vscode.stderr.decode()
    desktop_state = Path(read_toml(guard / "desktop.toml")["gateway"]["state_dir"])
    vscode_state = Path(read_toml(guard / "vscode.toml")["gateway"]["state_dir"])
    assert desktop_state != vscode_state
    assert desktop_state.parent == state_root(home)
    assert desktop_state.name.startswith("desktop-")
    assert vscode_state.name.startswith("vscode-")
    # Both gateways at once: each writes its own audit trail, so neither denies the other's calls.
    desktop_entry = json.loads((guard / "desktop.client.json").read_text())["mcpServers"]["mcp-guard"]
    vscode_entry = json.loads((guard / "vscode.client.json").read_text())["servers"]["mcp-guard"]
    async with (
        Client(client_parameters(desktop_entry), mode=LEGACY) as first,
        Client(client_parameters(vscode_entry), mode=LEGACY) as second,
    ):
        first_result = await first.call_tool("time__get_current_time", {"timezone": "UTC"})
        second_result = await second.call_tool("time__get_current_time", {"timezone": "UTC"})

    assert first_result.is_error is False
    assert second_result.is_error is False


def client_parameters(entry: dict[str, Any]) -> StdioServerParameters:
    """Return how a client starts the gateway entry init wrote, with a desktop client's minimal PATH."""
    return StdioServerParameters(
        command=entry["command"], args=entry["args"], env={"PATH": "/usr/bin:/bin", **entry["env"]}
    )


def test_same_stem_elsewhere_gets_own_state(tmp_path: Path) -> None:
    client = ClientFile(kind="claude-desktop", path=tmp_path / "source.json", data={}, servers={})
    environ = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}

    first = plan_outputs(str(tmp_path / "a" / "policy.toml"), client, environ)
    second = plan_outputs(str(tmp_path / "b" / "policy.toml"), client, environ)
    default = plan_outputs(None, client, environ)

    assert first.state_dir != second.state_dir
    assert first.state_dir.parent == tmp_path / "state" / "mcp-guard"
    assert first.state_dir.name.startswith("policy-")
    assert default.state_dir == tmp_path / "state" / "mcp-guard" / "claude-desktop"
    assert default.policy == tmp_path / "config" / "mcp-guard" / "claude-desktop.toml"


async def test_same_named_project_not_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    time_server = {"time": {"command": "mcp-server-time"}}
    first = write_project(tmp_path / "a" / "app", time_server)
    second = write_project(tmp_path / "b" / "app", time_server)
    policy = guard_folder(home) / "claude-code-app.toml"

    written = await run_init(first, "--from", "claude-code", "--offline", home=home)
    rejected = await run_init(second, "--from", "claude-code", "--offline", "--force", home=home)

    assert written.returncode == 0, written.stderr.decode()
    assert rejected.returncode == 2
    error = rejected.stderr.decode()
    assert f"written for the project folder {first}" in error
    assert "--output FILE" in error
    assert f"Project folder: {first}" in policy.read_text(encoding="utf-8")


async def test_check_hint_keeps_values_off_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = write_desktop_config(tmp_path, tmp_path / "fixture.jsonl")

    completed = await run_init(tmp_path, "--from", str(source), "--offline", home=home)

    assert completed.returncode == 0, completed.stderr.decode()
    output = completed.stdout.decode()
    assert "read -rs FIXTURE_API_KEY && export FIXTURE_API_KEY" in output
    assert "FIXTURE_API_KEY=" not in output
    # Following the hint: the shell reads the value from standard input, as if pasted.
    lines = output.split("\nNext:\n")[1].splitlines()
    script = "\n".join(line.strip() for line in lines if line.startswith("       "))
    checked = await anyio.run_process(
        ["bash", "-c", script],
        input=b"sk-test-abcdefghij0123456789\n",
        env=init_env(home),
        check=False,
    )
    assert checked.returncode == 0, checked.stderr.decode()
    assert "fixture-server__write_file" in checked.stdout.decode()
    assert "FIXTURE_API_KEY" not in checked.stderr.decode()
