"""`mcp-guard init`: a policy and a client configuration from an existing MCP client setup.

Each test writes a client configuration into its own folder and runs the real command
line, which starts the configured servers (the fixture server, the published
`mcp-server-time`) to list their tools. The end-to-end test then starts the gateway with the
command, arguments and environment of the generated client configuration. init runs with a
home folder inside the test's folder and no XDG variables, unless a test sets them, so its
default outputs never touch the real home.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError, StdioServerParameters
from support import FIXTURE_SERVER, LEGACY, clean_env, http_fixture, read_records

from mcp_guard.config import load_config
from mcp_guard.setup.importing import import_servers, sanitize_server_id
from mcp_guard.setup.render import SYSTEM_PATH, gateway_path
from mcp_guard.setup.sources import read_client_file, strip_json_comments

pytestmark = pytest.mark.anyio

SECRET = "sk-test-0123456789abcdefghij"
TIME_TOOLS = ["get_current_time", "convert_time"]
VENV_BIN = str(Path(sys.executable).parent)
# Variables of the test's own environment that would move init's outputs out of the test's folder.
PLACEMENT_VARIABLES = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "MCP_GUARD_STATE_DIR")


def fixture_entry(record: Path) -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": [str(FIXTURE_SERVER), "--name", "fixture", "--record", str(record)],
        "env": {"FIXTURE_API_KEY": SECRET, "FIXTURE_MODE": "demo"},
    }


def write_desktop_config(folder: Path, record: Path) -> Path:
    path = folder / "claude_desktop_config.json"
    servers = {"fixture server": fixture_entry(record), "time": {"command": "mcp-server-time"}}
    path.write_text(json.dumps({"globalShortcut": "Ctrl+Space", "mcpServers": servers}), encoding="utf-8")
    return path


def init_env(home: Path, **env: str) -> dict[str, str]:
    """Return init's environment: `home` as HOME, no XDG folders unless `env` sets them."""
    # The venv's bin folder comes first, so a bare "mcp-server-time" is found as a client would find it.
    environ = clean_env(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in PLACEMENT_VARIABLES:
        environ.pop(name, None)
    return {**environ, **env}


async def run_init(
    folder: Path, *args: str, home: Path | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """Run init in `folder`, with `home` (default: `folder/home`) as the home folder."""
    environ = init_env(home or folder / "home", **env)
    command = [sys.executable, "-m", "mcp_guard", "--log-level", "warning", "init", *args]
    return await anyio.run_process(command, cwd=folder, env=environ, check=False)


def guard_folder(home: Path) -> Path:
    """Return where init writes by default for `home`: ~/.config/mcp-guard."""
    return home / ".config" / "mcp-guard"


def state_root(home: Path) -> Path:
    """Return the parent of the state folders init names for `home`: ~/.local/state/mcp-guard."""
    return home / ".local" / "state" / "mcp-guard"


@pytest.fixture(scope="module")
def desktop_init(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[bytes]]:
    """Run init once on a Claude Desktop configuration; the tests below read what it wrote.

    Returns:
        The home folder init ran with, and the finished process.
    """
    folder = tmp_path_factory.mktemp("desktop")
    source = write_desktop_config(folder, folder / "fixture.jsonl")
    completed = anyio.run(lambda: run_init(folder, "--from", str(source)))
    assert completed.returncode == 0, completed.stderr.decode()
    return folder / "home", completed


def read_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def rules_for(policy: dict[str, Any], server: str) -> dict[str, dict[str, Any]]:
    return {rule["decision"]: rule for rule in policy["rules"] if rule["server"] == server}


def test_desktop_config_becomes_policy(desktop_init: tuple[Path, Any]) -> None:
    home, _completed = desktop_init

    policy_path = guard_folder(home) / "claude-desktop.toml"
    config = load_config(policy_path, environ={"FIXTURE_API_KEY": "any"})
    assert config.gateway.default_client == "desktop"
    assert config.gateway.state_dir == str(state_root(home) / "claude-desktop")
    assert f'state_dir = "{state_root(home) / "claude-desktop"}"' in policy_path.read_text(encoding="utf-8")
    assert list(config.servers) == ["fixture-server", "time"]
    time_server = config.servers["time"]
    assert time_server.read_only_tools == TIME_TOOLS
    assert time_server.command == str(Path(VENV_BIN) / "mcp-server-time")  # type: ignore[union-attr]
    fixture = config.servers["fixture-server"]
    assert fixture.read_only_tools == []  # the fixture annotates no tool readOnlyHint
    assert fixture.env == {"FIXTURE_MODE": "demo"}  # type: ignore[union-attr]
    assert fixture.env_from == {"FIXTURE_API_KEY": "${FIXTURE_API_KEY}"}  # type: ignore[union-attr]
    assert fixture.allow_new_tools is False

    policy = read_toml(policy_path)
    fixture_rules = rules_for(policy, "fixture-server")
    assert fixture_rules["auto"]["tools"] == ["*"]
    assert fixture_rules["auto"].get("write", False) is False
    assert fixture_rules["approve"]["write"] is True
    assert "write_file" in fixture_rules["approve"]["tools"]
    assert "echo" in fixture_rules["approve"]["tools"]
    assert set(rules_for(policy, "time")) == {"auto"}
    assert "readOnlyHint annotations" in policy_path.read_text(encoding="utf-8")


def test_secret_stays_out_of_policy(desktop_init: tuple[Path, Any]) -> None:
    home, completed = desktop_init

    assert SECRET not in (guard_folder(home) / "claude-desktop.toml").read_text(encoding="utf-8")
    assert SECRET not in completed.stdout.decode()
    assert SECRET not in completed.stderr.decode()
    assert "FIXTURE_API_KEY" in completed.stdout.decode()


def test_client_config_routes_through_gateway(desktop_init: tuple[Path, Any]) -> None:
    home, _completed = desktop_init
    folder = home.parent

    client_path = guard_folder(home) / "claude-desktop.client.json"
    client = json.loads(client_path.read_text(encoding="utf-8"))
    assert list(client["mcpServers"]) == ["mcp-guard"]
    entry = client["mcpServers"]["mcp-guard"]
    assert Path(entry["command"]).is_absolute()
    assert entry["args"][-3:] == ["run", "--config", str(guard_folder(home) / "claude-desktop.toml")]
    assert entry["env"]["FIXTURE_API_KEY"] == SECRET
    # A desktop client's own PATH lacks the folder where init found the bare mcp-server-time.
    assert entry["env"]["PATH"].split(os.pathsep)[0] == VENV_BIN
    assert set(entry["env"]) == {"FIXTURE_API_KEY", "PATH"}
    assert client["globalShortcut"] == "Ctrl+Space"
    assert stat.S_IMODE(client_path.stat().st_mode) == 0o600
    source = folder / "claude_desktop_config.json"
    assert json.loads(source.read_text(encoding="utf-8"))["mcpServers"]["time"] == {
        "command": "mcp-server-time"
    }


class Human:
    """An elicitation callback with scripted answers, keeping the questions it was asked."""

    def __init__(self, *answers: types.ElicitResult) -> None:
        self.answers = list(answers)
        self.questions: list[str] = []

    async def __call__(self, ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.questions.append(params.message)
        return self.answers.pop(0)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_generated_setup_guards_calls(tmp_path: Path) -> None:
    record = tmp_path / "fixture.jsonl"
    completed = await run_init(tmp_path, "--from", str(write_desktop_config(tmp_path, record)))
    assert completed.returncode == 0, completed.stderr.decode()
    policy = guard_folder(tmp_path / "home") / "claude-desktop.toml"
    # The server gains a tool after init ran; no rule names it.
    text = policy.read_text(encoding="utf-8").replace('"--record"', '"--filler-tools", "1", "--record"')
    policy.write_text(text, encoding="utf-8")
    client_config = guard_folder(tmp_path / "home") / "claude-desktop.client.json"
    entry = json.loads(client_config.read_text(encoding="utf-8"))["mcpServers"]["mcp-guard"]
    # Only what a desktop client would give: its own minimal PATH, overridden by the entry's env.
    client_env = {"PATH": "/usr/bin:/bin", **entry["env"]}
    parameters = StdioServerParameters(command=entry["command"], args=entry["args"], env=client_env)
    approve_once = types.ElicitResult(action="accept", content={"decision": "approve once"})
    human = Human(approve_once, types.ElicitResult(action="decline"))

    async with Client(parameters, mode=LEGACY, elicitation_callback=human) as client:
        visible = {tool.name for tool in (await client.list_tools()).tools}
        read = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        questions_after_read = len(human.questions)
        env = await client.call_tool("fixture-server__env", {"name": "FIXTURE_API_KEY"})
        write = await client.call_tool("fixture-server__write_file", {"path": "/tmp/a.txt", "content": "x"})
        with pytest.raises(MCPError):
            await client.call_tool("fixture-server__filler_000", {})

    assert "time__get_current_time" in visible
    assert "fixture-server__write_file" in visible
    assert "fixture-server__filler_000" not in visible
    assert read.is_error is False
    assert questions_after_read == 0
    # env_from gave the server the secret from the client's env block, and the gateway withholds
    # a result that carries it.
    assert env.is_error is True
    assert "(a credential of server 'fixture-server')" in text_of(env)
    assert SECRET not in text_of(env)
    assert write.is_error is True
    assert "Tool: write_file" in human.questions[1]
    called = [event["tool"] for event in read_records(record) if event["event"] == "call"]
    assert called == ["env"]


async def test_vscode_http_input_header(tmp_path: Path) -> None:
    with http_fixture(tmp_path, "tickets") as url:
        servers = {
            "tickets": {
                "type": "http",
                "url": url,
                "headers": {"Authorization": "Bearer ${input:tickets-token}", "X-Team": "ops"},
            },
            "old-events": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
            "broken": {
                "type": "stdio",
                "command": sys.executable,
                "args": ["-c", "raise SystemExit(3)"],
                "cwd": "${workspaceFolder}",
            },
        }
        inputs = [{"type": "promptString", "id": "tickets-token", "description": "Token", "password": True}]
        folder = tmp_path / "project" / ".vscode"
        folder.mkdir(parents=True)
        body = json.dumps({"inputs": inputs, "servers": servers}, indent=2)
        # VS Code accepts comments and trailing commas in mcp.json.
        (folder / "mcp.json").write_text("// my servers\n" + body[:-2] + ",\n}\n", encoding="utf-8")

        completed = await run_init(
            tmp_path / "project", "--from", "vscode", home=tmp_path / "home", TICKETS_TOKEN="abc"
        )

    assert completed.returncode == 0, completed.stderr.decode()
    output = completed.stdout.decode()
    policy_path = guard_folder(tmp_path / "home") / "vscode-project.toml"
    policy = read_toml(policy_path)
    assert list(policy["servers"]) == ["tickets", "broken"]
    tickets = policy["servers"]["tickets"]
    assert tickets["headers_from"] == {"Authorization": "Bearer ${TICKETS_TOKEN}"}
    assert tickets["headers"] == {"X-Team": "ops"}
    assert "echo" in rules_for(policy, "tickets")["approve"]["tools"]
    assert rules_for(policy, "broken")["approve"]["tools"] == ["*"]
    # In a workspace's .vscode/mcp.json, ${workspaceFolder} is the folder that contains .vscode.
    assert policy["servers"]["broken"]["cwd"] == str(tmp_path / "project")
    assert "init could not reach this server" in policy_path.read_text(encoding="utf-8")
    assert "NOT IMPORTED 'old-events'" in output
    assert "streamable HTTP only" in output
    assert "${input:tickets-token}" in output
    client = json.loads(policy_path.with_name("vscode-project.client.json").read_text(encoding="utf-8"))
    assert list(client["servers"]) == ["mcp-guard"]
    assert client["servers"]["mcp-guard"]["type"] == "stdio"
    assert client["servers"]["mcp-guard"]["env"] == {
        "TICKETS_TOKEN": "${input:tickets-token}",
        "PATH": os.pathsep.join(dict.fromkeys([VENV_BIN, *SYSTEM_PATH])),
    }
    assert client["inputs"] == inputs


async def test_init_names_unset_input(tmp_path: Path) -> None:
    entry = fixture_entry(tmp_path / "fixture.jsonl")
    entry["env"] = {"FIXTURE_API_KEY": "${input:api-token}"}
    inputs = [{"type": "promptString", "id": "api-token", "description": "Token", "password": True}]
    folder = tmp_path / ".vscode"
    folder.mkdir()
    (folder / "mcp.json").write_text(json.dumps({"inputs": inputs, "servers": {"fixture": entry}}), "utf-8")
    environ = init_env(tmp_path / "home", PATH=os.environ.get("PATH", ""))
    command = [sys.executable, "-m", "mcp_guard", "init", "--from", "vscode"]

    unreached = await anyio.run_process(command, cwd=tmp_path, env=environ, check=False)
    # Following the hint: export the variable and run init again with --force.
    reached = await anyio.run_process(
        [*command, "--force"], cwd=tmp_path, env={**environ, "API_TOKEN": "abc"}, check=False
    )

    assert unreached.returncode == 0, unreached.stderr.decode()
    output = unreached.stdout.decode()
    not_reached = [line for line in output.splitlines() if "fixture: NOT REACHED" in line]
    assert len(not_reached) == 1
    assert "variable API_TOKEN" in not_reached[0]
    assert "not set" in not_reached[0]
    assert "read -rs API_TOKEN && export API_TOKEN" in output
    assert "API_TOKEN=" not in output
    assert "run init again with --force" in output
    # The summary reports the failure. Log lines would repeat it, so init writes them only with --log-level.
    assert unreached.stderr == b""
    assert reached.returncode == 0, reached.stderr.decode()
    assert "NOT REACHED" not in reached.stdout.decode()
    policy = read_toml(guard_folder(tmp_path / "home") / f"vscode-{tmp_path.name}.toml")
    assert "echo" in rules_for(policy, "fixture")["approve"]["tools"]  # listed, not the offline "*"


async def test_existing_output_needs_force(tmp_path: Path) -> None:
    source = write_desktop_config(tmp_path, tmp_path / "fixture.jsonl")
    policy = guard_folder(tmp_path / "home") / "claude-desktop.toml"
    policy.parent.mkdir(parents=True)
    policy.write_text("# mine\n", encoding="utf-8")

    refused = await run_init(tmp_path, "--from", str(source), "--offline")

    assert refused.returncode == 2
    assert "already exists" in refused.stderr.decode()
    assert "--force" in refused.stderr.decode()
    assert policy.read_text(encoding="utf-8") == "# mine\n"
    assert not policy.with_name("claude-desktop.client.json").exists()

    forced = await run_init(tmp_path, "--from", str(source), "--offline", "--force")

    assert forced.returncode == 0, forced.stderr.decode()
    assert "[servers.time]" in policy.read_text(encoding="utf-8")


async def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    source = tmp_path / "claude_desktop_config.json"
    source.write_text('{\n  "mcpServers": {\n    "time": {"command": "mcp-server-time"}\n    "x": 1\n}\n')

    completed = await run_init(tmp_path, "--from", str(source))

    assert completed.returncode == 2
    error = completed.stderr.decode()
    assert str(source) in error
    assert "invalid JSON at line 4" in error
    assert "nothing was written" in error
    assert os.listdir(tmp_path) == ["claude_desktop_config.json"]


async def test_missing_desktop_config_is_reported(tmp_path: Path) -> None:
    completed = await run_init(tmp_path, "--from", "claude-desktop", XDG_CONFIG_HOME=str(tmp_path / "config"))

    assert completed.returncode == 2
    error = completed.stderr.decode()
    assert str(tmp_path / "config" / "Claude" / "claude_desktop_config.json") in error
    assert "does not exist" in error


async def test_offline_puts_every_tool_on_approve(tmp_path: Path) -> None:
    record = tmp_path / "fixture.jsonl"
    source = write_desktop_config(tmp_path, record)

    completed = await run_init(tmp_path, "--from", str(source), "--offline")

    assert completed.returncode == 0, completed.stderr.decode()
    policy = read_toml(guard_folder(tmp_path / "home") / "claude-desktop.toml")
    for server_id in ("fixture-server", "time"):
        assert policy["servers"][server_id]["read_only_tools"] == []
        approve = rules_for(policy, server_id)["approve"]
        assert approve["tools"] == ["*"]
        assert approve["write"] is True
    assert not record.exists()  # no server was started
    assert "--offline" in completed.stdout.decode()


def test_path_includes_node_folder(tmp_path: Path) -> None:
    node_tools, python_tools, runtime = (
        tmp_path / "node-tools",
        tmp_path / "python-tools",
        tmp_path / "runtime",
    )
    programs = {
        node_tools / "server-files": "#!/usr/bin/env node\n",
        python_tools / "server-notes": "#!/usr/bin/python3\n",
        runtime / "node": "",
    }
    for program, text in programs.items():
        program.parent.mkdir(exist_ok=True)
        program.write_text(text, encoding="utf-8")
        program.chmod(0o755)
    servers = {"files": {"command": "server-files"}, "notes": {"command": "server-notes"}}
    source = tmp_path / "claude_desktop_config.json"
    source.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    imported = import_servers(read_client_file(str(source), {}), {})

    path = gateway_path(imported, search_path=os.pathsep.join(map(str, (node_tools, python_tools, runtime))))

    assert path == os.pathsep.join([str(node_tools), str(python_tools), str(runtime), *SYSTEM_PATH])


@pytest.mark.parametrize(
    ("name", "taken", "expected"),
    [
        ("github", set(), "github"),
        ("my server", set(), "my-server"),
        ("1password", set(), "server-1password"),
        ("sandbox", set(), "sandbox-2"),
        ("git", {"Git"}, "git-2"),
        ("a" * 40, set(), "a" * 32),
        ("a" * 40, {"a" * 32}, "a" * 30 + "-2"),
        ("日本", set(), "server"),
    ],
)
def test_server_id_sanitized(name: str, taken: set[str], expected: str) -> None:
    assert sanitize_server_id(name, taken) == expected


def test_json_comments_keep_positions() -> None:
    text = '{\n  // note\n  "a": "x // not a comment", /* gone */\n}'

    stripped = strip_json_comments(text)

    assert json.loads(stripped) == {"a": "x // not a comment"}
    assert stripped.count("\n") == text.count("\n")
    assert len(stripped) == len(text)
