"""Tests against MCP servers and clients that are not mcp-guard's own code.

They check that the outside programs the gateway tests rely on install and talk over real stdio.
Those are a server built on the 1.x Python SDK (`tests/fixtures/legacy_server.py` in `.venv-legacy`),
the npm servers `server-filesystem` and `server-everything`, the published 2.x-based
`mcp-server-time`, and the TypeScript SDK client driver `tests/node/ts_client.mjs`. A missing
prerequisite fails the test with the make target that installs it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sysconfig
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent, TextContent, TextResourceContents

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent

LEGACY_VENV_TARGET = ".venv-legacy/.installed"
LEGACY_PYTHON = REPO_ROOT / ".venv-legacy" / "bin" / "python"
LEGACY_SERVER = REPO_ROOT / "tests" / "fixtures" / "legacy_server.py"

NODE_TARGET = "tests/node/node_modules/.installed"
NODE_DIR = REPO_ROOT / "tests" / "node"
NODE_BIN = NODE_DIR / "node_modules" / ".bin"
TS_CLIENT = NODE_DIR / "ts_client.mjs"

TIME_SERVER = Path(sysconfig.get_path("scripts")) / "mcp-server-time"

LEGACY_TOOLS = {"echo", "add", "image", "slow"}

# SHA-256 of the PNG that the legacy server's image() tool returns. The fixture's docstring gives the
# formula and the fixture defines the same value as IMAGE_SHA256.
LEGACY_IMAGE_SHA256 = "2eb65c59ea015834551e7945d7e5175ea284f6257608b508e58909736ffce9ee"

# Bounds one test's whole conversation, process start-up included. Each test here took under one
# second on the build machine (`pytest --durations`), so this leaves a wide margin.
CONVERSATION_TIMEOUT_S = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def require_file(path: Path, make_target: str) -> Path:
    """Return the path, or fail the test naming the make target that creates it."""
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make {make_target}` from {REPO_ROOT}", pytrace=False)
    return path


def legacy_server_params() -> StdioServerParameters:
    require_file(REPO_ROOT / LEGACY_VENV_TARGET, LEGACY_VENV_TARGET)
    return StdioServerParameters(command=str(LEGACY_PYTHON), args=[str(LEGACY_SERVER)])


def node_bin(name: str) -> str:
    require_file(REPO_ROOT / NODE_TARGET, NODE_TARGET)
    return str(require_file(NODE_BIN / name, NODE_TARGET))


def node_executable() -> str:
    """Return the path of `node`, or fail the test if Node.js or the driver's packages are missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: install Node.js 20, which the Makefile does not install", pytrace=False
        )
    require_file(REPO_ROOT / NODE_TARGET, NODE_TARGET)
    return node


@asynccontextmanager
async def connected(params: StdioServerParameters) -> AsyncIterator[Client]:
    """Start a stdio server and connect to it with a 2.x client over the initialize handshake."""
    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with Client(params, mode="legacy") as client:
            yield client


async def run_ts_client(tmp_path: Path, script: dict[str, Any], *command: str) -> dict[str, Any]:
    """Run the TypeScript SDK driver with a step script against a stdio command and return its output."""
    node = node_executable()
    script_path = tmp_path / "ts_client_script.json"
    script_path.write_text(json.dumps(script))

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        completed = await anyio.run_process(
            [node, str(TS_CLIENT), str(script_path), "--", *command], cwd=REPO_ROOT, check=False
        )

    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode == 0, f"ts_client.mjs exited with {completed.returncode}; stderr:\n{stderr}"
    output: dict[str, Any] = json.loads(completed.stdout)
    return output


def text_of(content: object) -> str:
    assert isinstance(content, TextContent), f"expected text content, got {content!r}"
    return content.text


async def test_legacy_server_handshake_and_listings() -> None:
    async with connected(legacy_server_params()) as client:
        tools = await client.list_tools()
        resources = await client.list_resources()
        prompts = await client.list_prompts()

        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None
        assert client.server_info.name == "legacy-server"
    assert {tool.name for tool in tools.tools} == LEGACY_TOOLS
    assert tools.next_cursor is None
    assert [resource.uri for resource in resources.resources] == ["legacy://motd"]
    assert [prompt.name for prompt in prompts.prompts] == ["summarize"]


async def test_legacy_server_tool_calls() -> None:
    async with connected(legacy_server_params()) as client:
        echo = await client.call_tool("echo", {"text": "hello"})
        total = await client.call_tool("add", {"a": 2, "b": 3})
        image = await client.call_tool("image", {})

    assert text_of(echo.content[0]) == "hello"
    assert echo.structured_content is None
    assert total.structured_content == {"result": 5}
    assert text_of(total.content[0]) == "5"
    assert isinstance(image.content[0], ImageContent)
    assert image.content[0].mime_type == "image/png"
    assert hashlib.sha256(base64.b64decode(image.content[0].data)).hexdigest() == LEGACY_IMAGE_SHA256


async def test_legacy_server_reports_progress() -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def record(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with connected(legacy_server_params()) as client:
        result = await client.call_tool("slow", {"seconds": 0.2}, progress_callback=record)

    assert result.is_error is False
    assert [(progress, total) for progress, total, _ in updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_legacy_server_rejects_negative_sleep() -> None:
    async with connected(legacy_server_params()) as client:
        result = await client.call_tool("slow", {"seconds": -1})

    assert result.is_error is True
    assert "seconds must be zero or more" in text_of(result.content[0])


async def test_legacy_server_resource_and_prompt() -> None:
    async with connected(legacy_server_params()) as client:
        resource = await client.read_resource("legacy://motd")
        prompt = await client.get_prompt("summarize", {"text": "MCP is a protocol."})

    assert isinstance(resource.contents[0], TextResourceContents)
    assert resource.contents[0].text == "Served by a 1.x MCP SDK server."
    assert prompt.messages[0].role == "user"
    assert text_of(prompt.messages[0].content).endswith("MCP is a protocol.")


async def test_filesystem_server_lists_and_reads(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("written by the test\n")
    params = StdioServerParameters(command=node_bin("mcp-server-filesystem"), args=[str(shared)])

    async with connected(params) as client:
        written = await client.call_tool(
            "write_file", {"path": str(shared / "reply.txt"), "content": "written by the server\n"}
        )
        listing = await client.call_tool("list_directory", {"path": str(shared)})
        reply = await client.call_tool("read_text_file", {"path": str(shared / "reply.txt")})
        notes = await client.call_tool("read_text_file", {"path": str(shared / "notes.txt")})

    assert written.is_error is False
    assert (shared / "reply.txt").read_text() == "written by the server\n"
    assert sorted(text_of(listing.content[0]).splitlines()) == ["[FILE] notes.txt", "[FILE] reply.txt"]
    assert text_of(reply.content[0]) == "written by the server\n"
    assert text_of(notes.content[0]) == "written by the test\n"


async def test_filesystem_server_rejects_path_outside_root(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "outside.txt").write_text("not shared\n")
    params = StdioServerParameters(command=node_bin("mcp-server-filesystem"), args=[str(shared)])

    async with connected(params) as client:
        result = await client.call_tool("read_text_file", {"path": str(tmp_path / "outside.txt")})

    assert result.is_error is True
    assert "not shared" not in text_of(result.content[0])


async def test_everything_server_echo() -> None:
    params = StdioServerParameters(command=node_bin("mcp-server-everything"), args=["stdio"])

    async with connected(params) as client:
        tools = await client.list_tools()
        result = await client.call_tool("echo", {"message": "hello"})

    assert "echo" in {tool.name for tool in tools.tools}
    assert text_of(result.content[0]) == "Echo: hello"


async def test_ts_client_against_legacy_server(tmp_path: Path) -> None:
    require_file(REPO_ROOT / LEGACY_VENV_TARGET, LEGACY_VENV_TARGET)
    script = {
        "steps": [
            {"op": "list_tools"},
            {"op": "call_tool", "name": "add", "arguments": {"a": 2, "b": 3}},
            {"op": "call_tool", "name": "slow", "arguments": {"seconds": 0.2}, "progress": True},
            {"op": "list_prompts"},
            {"op": "read_resource", "uri": "legacy://motd"},
            {"op": "read_resource", "uri": "legacy://missing"},
        ]
    }

    output = await run_ts_client(tmp_path, script, str(LEGACY_PYTHON), str(LEGACY_SERVER))

    tools, total, slow, prompts, motd, missing = output["results"]
    assert output["server"]["name"] == "legacy-server"
    assert {tool["name"] for tool in tools["tools"]} == LEGACY_TOOLS
    assert total["structuredContent"] == {"result": 5}
    assert slow["isError"] is False
    assert [update["progress"] for update in output["progress"]] == [1, 2, 3, 4]
    assert {update["step"] for update in output["progress"]} == {2}
    assert [prompt["name"] for prompt in prompts["prompts"]] == ["summarize"]
    assert motd["contents"][0]["text"] == "Served by a 1.x MCP SDK server."
    assert "Unknown resource" in missing["error"]["message"]
    assert output["elicitations"] == []


async def test_ts_client_against_time_server(tmp_path: Path) -> None:
    time_server = require_file(TIME_SERVER, "install")
    arguments = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    script = {
        "steps": [{"op": "list_tools"}, {"op": "call_tool", "name": "convert_time", "arguments": arguments}]
    }

    output = await run_ts_client(tmp_path, script, str(time_server))

    tools, converted = output["results"]
    assert output["server"]["name"] == "mcp-time"
    assert "convert_time" in {tool["name"] for tool in tools["tools"]}
    assert converted["isError"] is False
    # Japan has no daylight saving time, so 12:00 UTC is 21:00 in Tokyo on any date.
    assert converted["structuredContent"]["target"]["datetime"].endswith("T21:00:00+09:00")


@pytest.mark.parametrize(
    ("answer", "expected_text"),
    [
        ({"action": "accept", "content": {"name": "Ada"}}, "Name: Ada"),
        ({"action": "decline"}, "declined"),
    ],
    ids=["accept", "decline"],
)
async def test_ts_client_responds_to_elicitation(
    tmp_path: Path, answer: dict[str, Any], expected_text: str
) -> None:
    script = {"elicitation": answer, "steps": [{"op": "call_tool", "name": "trigger-elicitation-request"}]}

    output = await run_ts_client(tmp_path, script, node_bin("mcp-server-everything"), "stdio")

    (result,) = output["results"]
    assert len(output["elicitations"]) == 1
    assert "requestedSchema" in output["elicitations"][0]
    assert expected_text in "\n".join(block["text"] for block in result["content"])


async def test_ts_client_reports_missing_command(tmp_path: Path) -> None:
    node = node_executable()
    script_path = tmp_path / "script.json"
    script_path.write_text(json.dumps({"steps": [{"op": "list_tools"}]}))

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        completed = await anyio.run_process(
            [node, str(TS_CLIENT), str(script_path), "--", str(tmp_path / "no-such-server")], check=False
        )

    assert completed.returncode == 1
    assert "no-such-server" in json.loads(completed.stdout)["fatal"]
