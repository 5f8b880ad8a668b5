"""The gateway in front of published servers and clients that this project did not write."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from support import (
    ERAS,
    LEGACY_PYTHON,
    LEGACY_SERVER,
    NODE_BIN,
    ROOT,
    fixture_server,
    gateway_command,
    stdio_gateway,
    write_policy,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SCRIPTS = Path(sysconfig.get_path("scripts"))
TS_CLIENT = ROOT / "tests" / "node" / "ts_client.mjs"
TS_CLIENT_SECONDS = 60


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "notes.txt").write_text("first\n")
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Add notes"], check=True)
    return repo


@pytest.fixture
def policy(tmp_path: Path, repository: Path) -> Path:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "hello.txt").write_text("hello from scratch\n")
    servers = {
        "git": {"command": str(SCRIPTS / "mcp-server-git"), "args": ["--repository", str(repository)]},
        "fs": {"command": str(NODE_BIN / "mcp-server-filesystem"), "args": [str(scratch)]},
        "everything": {"command": str(NODE_BIN / "mcp-server-everything"), "args": ["stdio"]},
        "old": {"command": str(LEGACY_PYTHON), "args": [str(LEGACY_SERVER)]},
    }
    return write_policy(tmp_path, servers)


@pytest.mark.parametrize("mode", ERAS)
async def test_published_servers_through_gateway(
    policy: Path, repository: Path, tmp_path: Path, mode: str
) -> None:
    async with stdio_gateway(policy, mode) as client:
        log = await client.call_tool("git__git_log", {"repo_path": str(repository)})
        listing = await client.call_tool("fs__list_directory", {"path": str(tmp_path / "scratch")})
        read = await client.call_tool("fs__read_text_file", {"path": str(tmp_path / "scratch" / "hello.txt")})
        escape = await client.call_tool("fs__read_text_file", {"path": "/etc/hostname"})
        echo = await client.call_tool("everything__echo", {"message": "hi"})
        added = await client.call_tool("old__add", {"a": 2, "b": 3})

    assert "Add notes" in log.content[0].text
    assert "hello.txt" in listing.content[0].text
    assert read.content[0].text == "hello from scratch\n"
    assert escape.is_error is True
    assert echo.content[0].text == "Echo: hi"
    assert added.structured_content == {"result": 5}


def test_typescript_client_through_gateway(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js 20 is needed: install it (Debian package nodejs)"
    policy = write_policy(
        tmp_path,
        {
            "alpha": fixture_server("alpha"),
            "old": {"command": str(LEGACY_PYTHON), "args": [str(LEGACY_SERVER)]},
        },
    )
    script = tmp_path / "script.json"
    steps = [
        {"op": "list_tools"},
        {"op": "call_tool", "name": "alpha__echo", "arguments": {"text": "from TypeScript"}},
        {"op": "call_tool", "name": "old__add", "arguments": {"a": 20, "b": 22}},
        {
            "op": "call_tool",
            "name": "alpha__slow",
            "arguments": {"seconds": 0.2, "steps": 2},
            "progress": True,
        },
        {"op": "call_tool", "name": "alpha__no_such_tool", "arguments": {}},
    ]
    script.write_text(json.dumps({"steps": steps}))

    completed = subprocess.run(
        [node, str(TS_CLIENT), str(script), "--", *gateway_command(policy)],
        capture_output=True,
        cwd=ROOT,
        timeout=TS_CLIENT_SECONDS,
        check=False,
    )
    output = json.loads(completed.stdout)
    tools, echo, added, slow, unknown = output["results"]

    assert completed.returncode == 0, completed.stderr.decode()[-2000:]
    assert output["server"]["name"] == "mcp-guard"
    assert {"alpha__echo", "old__add"} <= {tool["name"] for tool in tools["tools"]}
    assert echo["content"][0]["text"] == "from TypeScript"
    assert added["structuredContent"] == {"result": 42}
    assert slow["content"][0]["text"] == "done after 2 steps"
    assert [entry["progress"] for entry in output["progress"]] == [1, 2]
    assert unknown["error"]["code"] == -32602
    assert sys.executable  # the gateway ran under this interpreter
