"""Tests for the downstream fixture server in `tests/fixtures/fixture_server.py`.

Each test starts the fixture as a child process, over real stdio or over streamable HTTP on
127.0.0.1, and talks to it with the SDK's `Client`, as a handshake client (`mode="legacy"`) or as
a 2026-07-28 client.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.subscriptions import ToolsListChanged

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

FIXTURE_PATH = Path(__file__).resolve().parent / "fixtures" / "fixture_server.py"
MODES = ["legacy", "2026-07-28"]
TRANSPORTS = ["stdio", "http"]

# Bounds one conversation with the fixture, process start-up included. Each test here took under
# 2 s on the build machine (`pytest --durations`), so this leaves a wide margin.
CONVERSATION_TIMEOUT_S = 20
# Bounds the wait for the HTTP fixture to write its port file.
STARTUP_TIMEOUT_S = 15
# Bounds the wait for the HTTP fixture to exit after SIGTERM before it is killed.
SHUTDOWN_TIMEOUT_S = 5


def load_fixture_module() -> ModuleType:
    """Import the fixture by path: `tests/fixtures` is not a package."""
    spec = importlib.util.spec_from_file_location("fixture_server", FIXTURE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while the module body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fixture = load_fixture_module()

ServerTarget = StdioServerParameters | str
StartFixture = Callable[..., ServerTarget]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def start_fixture(tmp_path: Path) -> Iterator[StartFixture]:
    """Yield `start(transport, *args)`, which returns stdio parameters or the URL of a running server.

    HTTP servers run as child processes and are stopped by PID when the test ends.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def start(transport: str, *args: str) -> ServerTarget:
        if transport == "stdio":
            return StdioServerParameters(command=sys.executable, args=[str(FIXTURE_PATH), *args])
        port_file = tmp_path / f"port-{len(processes)}"
        with (tmp_path / f"http-{len(processes)}.log").open("wb") as log:
            command = [
                sys.executable,
                str(FIXTURE_PATH),
                "--transport",
                "http",
                "--port-file",
                str(port_file),
            ]
            process = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL, stderr=log)
        processes.append(process)
        return f"http://127.0.0.1:{wait_for_port(process, port_file)}/mcp"

    try:
        yield start
    finally:
        for process in processes:
            stop_process(process)


def wait_for_port(process: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not port_file.exists():
        if process.poll() is not None:
            pytest.fail(f"the HTTP fixture exited with status {process.returncode} before listening")
        if time.monotonic() > deadline:
            pytest.fail(f"the HTTP fixture wrote no port file within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.05)
    return int(port_file.read_text())


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def connect(target: ServerTarget, mode: str, **options: Any) -> Client:
    return Client(target, mode=mode, cache=None, **options)


def only_text(result: types.CallToolResult) -> str:
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def list_all_tools(client: Client) -> tuple[list[types.Tool], int]:
    """Return every tool, following `next_cursor`, and the number of pages."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return tools, pages


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
async def test_tools_list_paginates(start_fixture: StartFixture, transport: str, mode: str) -> None:
    target = start_fixture(transport, "--filler-tools", "5", "--page-size", "4")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            tools, pages = await list_all_tools(client)
            first_page = await client.list_tools()

    names = [tool.name for tool in tools]
    assert len(first_page.tools) == 4
    assert pages == -(-len(names) // 4)
    assert len(names) == len(set(names))
    assert names[-5:] == ["filler_000", "filler_001", "filler_002", "filler_003", "filler_004"]
    assert fixture.LONG_TOOL_NAME in names
    assert len(fixture.LONG_TOOL_NAME) == 70
    assert "dotted.name" in names
    assert all(tool.input_schema["type"] == "object" for tool in tools)


@pytest.mark.parametrize("mode", MODES)
async def test_resources_list_paginates(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio", "--name", "alpha", "--page-size", "1")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            first = await client.list_resources()
            assert first.next_cursor is not None
            second = await client.list_resources(cursor=first.next_cursor)

    assert [resource.uri for resource in first.resources] == ["fixture://alpha/readme"]
    assert [resource.uri for resource in second.resources] == ["fixture://alpha/logo"]
    assert second.next_cursor is None


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
async def test_echo_returns_text(start_fixture: StartFixture, transport: str, mode: str) -> None:
    target = start_fixture(transport)

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            result = await client.call_tool("echo", {"text": "hello, fixture"})

    assert result.is_error is False
    assert only_text(result) == "hello, fixture"


@pytest.mark.parametrize("mode", MODES)
async def test_text_tools_return_documented_text(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio", "--name", "alpha")
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("whoami", {}, "alpha"),
        ("search", {"query": "cats"}, "alpha results for cats"),
        ("unicode", {}, fixture.UNICODE_TEXT),
        ("env", {"name": "FIXTURE_SURELY_UNSET_VARIABLE"}, "<unset>"),
        ("path_has", {"program": sys.executable}, "yes"),
        ("path_has", {"program": "no-such-program-for-the-fixture"}, "no"),
        ("write_file", {"path": "/tmp/x", "content": "abc"}, "would write 3 characters to /tmp/x"),
        ("run_command", {"args": ["ls", "-l", "a b"]}, "would run: ls -l 'a b'"),
        ("nested", {"config": {"label": "cfg", "target": {"path": "/etc"}}}, "would apply cfg to /etc"),
        (fixture.LONG_TOOL_NAME, {"text": "x"}, '{"arguments": {"text": "x"}, "server": "alpha"}'),
        ("dotted.name", {}, '{"arguments": {}, "server": "alpha"}'),
    ]

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            results = [(name, await client.call_tool(name, arguments)) for name, arguments, _ in cases]

    for (name, result), (_, _, expected) in zip(results, cases, strict=True):
        assert only_text(result) == expected, name


@pytest.mark.parametrize("mode", MODES)
async def test_image_bytes_match_formula(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            image = (await client.call_tool("image", {"size": 300})).content[0]
            audio = (await client.call_tool("audio", {})).content[0]

    assert isinstance(image, types.ImageContent)
    assert image.mime_type == "image/png"
    assert base64.b64decode(image.data) == fixture.image_bytes(300)
    assert fixture.image_bytes(300)[-2:] == bytes([298 % 256, 299 % 256])
    assert fixture.TINY_PNG.startswith(b"\x89PNG\r\n\x1a\n")
    assert isinstance(audio, types.AudioContent)
    assert audio.mime_type == "audio/wav"
    assert base64.b64decode(audio.data) == fixture.AUDIO_WAV
    assert fixture.AUDIO_WAV.startswith(b"RIFF")


@pytest.mark.parametrize("mode", MODES)
async def test_resource_content_blocks(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio", "--name", "alpha")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            link = (await client.call_tool("resource_link", {})).content
            embedded = (await client.call_tool("embedded_resource", {})).content

    assert isinstance(link[0], types.ResourceLink)
    assert link[0].uri == "fixture://alpha/readme"
    assert isinstance(embedded[0], types.EmbeddedResource)
    assert isinstance(embedded[0].resource, types.TextResourceContents)
    assert embedded[0].resource.text == fixture.readme_text("alpha")
    assert isinstance(embedded[1], types.EmbeddedResource)
    assert isinstance(embedded[1].resource, types.BlobResourceContents)
    assert base64.b64decode(embedded[1].resource.blob) == fixture.TINY_PNG


@pytest.mark.parametrize("mode", MODES)
async def test_structured_and_annotated_results(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            structured = await client.call_tool("structured", {"value": 21})
            annotated = await client.call_tool("annotated", {})

    assert structured.structured_content == {"value": 21, "doubled": 42}
    assert json.loads(only_text(structured)) == {"value": 21, "doubled": 42}
    block = annotated.content[0]
    assert isinstance(block, types.TextContent)
    assert block.annotations == fixture.ANNOTATIONS
    assert annotated.meta is not None
    assert annotated.meta["fixture/trace"] == "abc"


@pytest.mark.parametrize("mode", MODES)
async def test_tool_and_protocol_errors(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            tool_error = await client.call_tool("fail_tool", {"message": "tool broke"})
            invalid = await client.call_tool("echo", {"text": 5})
            with pytest.raises(MCPError) as protocol_error:
                await client.call_tool("fail_protocol", {"message": "protocol broke"})
            with pytest.raises(MCPError) as unknown_tool:
                await client.call_tool("no_such_tool", {})

    assert tool_error.is_error is True
    assert only_text(tool_error) == "tool broke"
    assert invalid.is_error is True
    assert only_text(invalid).startswith("Invalid arguments for tool 'echo'")
    assert protocol_error.value.code == fixture.FAIL_PROTOCOL_CODE
    assert protocol_error.value.message == "protocol broke"
    assert unknown_tool.value.code == types.INVALID_PARAMS


async def test_big_returns_exact_size(start_fixture: StartFixture) -> None:
    target = start_fixture("stdio")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, "legacy") as client:
            result = await client.call_tool("big", {"megabytes": 1.5})

    assert only_text(result) == fixture.big_text(1.5)
    assert len(fixture.big_text(1.5)) == 1_572_864


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
async def test_slow_reports_progress(start_fixture: StartFixture, transport: str, mode: str) -> None:
    target = start_fixture(transport)
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            result = await client.call_tool(
                "slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
            )

    assert only_text(result) == "done after 3 steps"
    assert updates == [(1, 3, "step 1 of 3"), (2, 3, "step 2 of 3"), (3, 3, "step 3 of 3")]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_changed_reaches_legacy_client(start_fixture: StartFixture, transport: str) -> None:
    target = start_fixture(transport)
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, "legacy", message_handler=on_message) as client:
            advertised = client.server_capabilities.tools
            await client.list_tools()
            added = await client.call_tool("add_tool", {"name": "added_later"})
            await changed.wait()
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            echoed = await client.call_tool("added_later", {"text": "hi"})

    assert advertised is not None
    assert advertised.list_changed is True
    assert only_text(added) == "added tool added_later"
    assert "added_later" in tools
    assert only_text(echoed) == "hi"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_list_changed_reaches_2026_listener(start_fixture: StartFixture, transport: str) -> None:
    target = start_fixture(transport)

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, "2026-07-28") as client, client.listen(tools_list_changed=True) as events:
            await client.call_tool("set_description", {"text": "a new description"})
            event = await events.__anext__()
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert isinstance(event, ToolsListChanged)
    assert tools["echo"].description == "a new description"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
async def test_record_file_lists_events(
    start_fixture: StartFixture, tmp_path: Path, transport: str, mode: str
) -> None:
    record = tmp_path / "record.jsonl"
    target = start_fixture(transport, "--record", str(record))

    async def ignore_progress(progress: float, total: float | None, message: str | None) -> None:
        pass

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            await client.call_tool("write_file", {"path": "/data/x", "content": "abc"})
            await client.call_tool("slow", {"seconds": 0, "steps": 1}, progress_callback=ignore_progress)
            await client.read_resource("fixture://fixture/items/7")
            await client.get_prompt("greet", {"name": "Ada"})
            with anyio.move_on_after(0.5):
                await client.call_tool("slow", {"seconds": 10, "steps": 10})
            # The server records the cancellation after the client stops waiting. The file is
            # written by another process, so there is no event to wait on.
            while "cancelled" not in record.read_text():  # noqa: ASYNC110
                await anyio.sleep(0.05)

    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(events) == 10
    write_call, write_end, progress_call, progress_end = events[:4]
    read_start, read_end, prompt_start, prompt_end, slow_call, slow_end = events[4:]
    assert write_call == {
        "event": "call",
        "tool": "write_file",
        "arguments": {"path": "/data/x", "content": "abc"},
        "request_id": write_call["request_id"],
        "progress_token": None,
    }
    assert write_end == {"event": "finished", "tool": "write_file", "request_id": write_call["request_id"]}
    assert progress_call["progress_token"] is not None
    assert progress_end["event"] == "finished"
    assert read_start == {
        "event": "read",
        "uri": "fixture://fixture/items/7",
        "request_id": read_start["request_id"],
    }
    assert read_end["event"] == "finished"
    assert prompt_start["event"] == "get_prompt"
    assert prompt_start["arguments"] == {"name": "Ada"}
    assert prompt_end["event"] == "finished"
    assert slow_call["tool"] == "slow"
    assert slow_end == {"event": "cancelled", "tool": "slow", "request_id": slow_call["request_id"]}


async def test_banner_printed_before_json_rpc() -> None:
    command = [sys.executable, str(FIXTURE_PATH), "--banner", "Welcome to the fixture!"]
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with await anyio.open_process(command, stderr=subprocess.DEVNULL) as process:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send(json.dumps(initialize).encode() + b"\n")
            output = b""
            while output.count(b"\n") < 2:
                output += await process.stdout.receive()
            await process.stdin.aclose()

    banner, response = output.split(b"\n")[:2]
    assert banner == b"Welcome to the fixture!"
    assert json.loads(response)["id"] == 1
    assert json.loads(response)["result"]["serverInfo"]["name"] == "fixture"


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_client_survives_banner(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio", "--banner", "Welcome to the fixture!")
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode, message_handler=on_message) as client:
            result = await client.call_tool("echo", {"text": "after the banner"})

    assert only_text(result) == "after the banner"
    assert any(isinstance(message, Exception) and "Welcome" in str(message) for message in received)


async def test_scalar_output_reaches_2026_client(start_fixture: StartFixture) -> None:
    target = start_fixture("stdio", "--legacy-output-schema-bug")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, "2026-07-28") as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            result = await client.call_tool("scalar_output", {})

    assert tools["scalar_output"].output_schema == {"type": "integer"}
    assert result.structured_content == 42
    assert only_text(result) == "42"


async def test_scalar_output_schema_breaks_legacy_listing(start_fixture: StartFixture) -> None:
    target = start_fixture("stdio", "--legacy-output-schema-bug")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, "legacy") as client:
            with pytest.raises(MCPError) as listing_error:
                await client.list_tools()

    assert listing_error.value.code == types.INTERNAL_ERROR
    assert listing_error.value.message == "Handler returned an invalid result"


@pytest.mark.parametrize("mode", MODES)
async def test_resources_prompts_and_completion(start_fixture: StartFixture, mode: str) -> None:
    target = start_fixture("stdio", "--name", "alpha")
    template = types.ResourceTemplateReference(uri="fixture://alpha/items/{id}")

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, mode) as client:
            readme = await client.read_resource("fixture://alpha/readme")
            item = await client.read_resource("fixture://alpha/items/42")
            prompt = await client.get_prompt("greet", {"name": "Ada"})
            names = await client.complete(
                types.PromptReference(name="greet"), {"name": "name", "value": "Al"}
            )
            ids = await client.complete(template, {"name": "id", "value": "2"})
            with pytest.raises(MCPError) as missing:
                await client.read_resource("fixture://alpha/missing")

    assert isinstance(readme.contents[0], types.TextResourceContents)
    assert readme.contents[0].text == fixture.readme_text("alpha")
    assert isinstance(item.contents[0], types.TextResourceContents)
    assert item.contents[0].text == "item 42 from alpha"
    assert isinstance(prompt.messages[0].content, types.TextContent)
    assert prompt.messages[0].role == "user"
    assert prompt.messages[0].content.text == "Hello, Ada!"
    assert names.completion.values == ["Alice", "Albert"]
    assert ids.completion.values == ["2"]
    assert missing.value.code == (
        types.INVALID_PARAMS if mode != "legacy" else fixture.RESOURCE_NOT_FOUND_2025
    )


async def test_crash_ends_process_mid_call(start_fixture: StartFixture, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    target = start_fixture("stdio", "--record", str(record))

    with anyio.fail_after(CONVERSATION_TIMEOUT_S):
        async with connect(target, "legacy") as client:
            with pytest.raises(MCPError) as crash_error:
                await client.call_tool("crash", {"after_seconds": 0.1})

    assert crash_error.value.code == types.CONNECTION_CLOSED
    assert [json.loads(line)["event"] for line in record.read_text().splitlines()] == ["call"]
