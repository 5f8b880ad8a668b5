"""What passes through the gateway arrives as the downstream server sent it, in both eras."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fixtures.fixture_server import (
    ANNOTATIONS,
    DOTTED_TOOL_NAME,
    FAIL_PROTOCOL_CODE,
    LONG_TOOL_NAME,
    UNICODE_TEXT,
    big_text,
    image_bytes,
)
from mcp.shared.exceptions import MCPError
from support import ERAS, LEGACY, MODERN, fixture_server, stdio_gateway, write_policy

from mcp_guard.downstream.naming import EXPORTED_NAME

pytestmark = pytest.mark.anyio


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    servers = {
        "alpha": fixture_server(
            "alpha", "--legacy-output-schema-bug", "--filler-tools", "150", "--page-size", "40"
        ),
        "beta": fixture_server("beta"),
    }
    return write_policy(tmp_path, servers, {"page_size": 150})


async def all_tool_names(client) -> tuple[list[str], int]:  # type: ignore[no-untyped-def]
    names: list[str] = []
    pages = 0
    cursor = None
    while True:
        result = await client.list_tools(cursor=cursor, cache_mode="bypass")
        pages += 1
        names += [tool.name for tool in result.tools]
        cursor = result.next_cursor
        if cursor is None:
            return names, pages


@pytest.mark.parametrize("mode", ERAS)
async def test_tools_list_pages_end(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        names, pages = await all_tool_names(client)

    assert pages == 2
    assert len(names) == len(set(names))
    assert "alpha__filler_149" in names
    assert "beta__echo" in names
    assert all(EXPORTED_NAME.match(name) and len(name) <= 48 for name in names)


async def test_scalar_output_tool_only_modern(policy: Path) -> None:
    async with stdio_gateway(policy, LEGACY) as legacy:
        legacy_names, _ = await all_tool_names(legacy)
    async with stdio_gateway(policy, MODERN) as modern:
        modern_names, _ = await all_tool_names(modern)
        result = await modern.call_tool("alpha__scalar_output", {})

    assert "alpha__scalar_output" not in legacy_names
    assert "alpha__echo" in legacy_names
    assert "alpha__scalar_output" in modern_names
    assert result.structured_content == 42


@pytest.mark.parametrize("mode", ERAS)
async def test_image_audio_bytes_exact(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        image = await client.call_tool("alpha__image", {"size": 70_000})
        audio = await client.call_tool("alpha__audio", {})

    assert image.content[0].type == "image"
    assert base64.b64decode(image.content[0].data) == image_bytes(70_000)
    assert image.content[0].mime_type == "image/png"
    assert audio.content[0].type == "audio"
    assert audio.content[0].mime_type == "audio/wav"


@pytest.mark.parametrize("mode", ERAS)
async def test_resource_content_blocks(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        link = await client.call_tool("alpha__resource_link", {})
        embedded = await client.call_tool("alpha__embedded_resource", {})

    assert link.content[0].type == "resource_link"
    assert link.content[0].uri == "fixture://alpha/readme"
    kinds = [block.resource.__class__.__name__ for block in embedded.content]
    assert kinds == ["TextResourceContents", "BlobResourceContents"]


@pytest.mark.parametrize("mode", ERAS)
async def test_structured_annotations_meta(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        structured = await client.call_tool("alpha__structured", {"value": 21})
        annotated = await client.call_tool("alpha__annotated", {})

    assert structured.structured_content == {"value": 21, "doubled": 42}
    assert json.loads(structured.content[0].text) == {"value": 21, "doubled": 42}
    assert annotated.content[0].annotations == ANNOTATIONS
    assert annotated.meta is not None
    assert annotated.meta.get("fixture/trace") == "abc"


@pytest.mark.attack("downstream identity passed through")
async def test_downstream_identity_not_forwarded(policy: Path) -> None:
    async with stdio_gateway(policy, MODERN) as client:
        result = await client.call_tool("alpha__annotated", {})

    server_info = (result.meta or {}).get("io.modelcontextprotocol/serverInfo")
    assert server_info is not None
    assert server_info["name"] == "mcp-guard"


@pytest.mark.parametrize("mode", ERAS)
async def test_unicode_and_big_results(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        unicode = await client.call_tool("alpha__unicode", {})
        big = await client.call_tool("alpha__big", {"megabytes": 5})

    assert unicode.content[0].text == UNICODE_TEXT
    assert big.content[0].text == big_text(5)


@pytest.mark.parametrize("mode", ERAS)
async def test_tool_error_versus_protocol_error(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        failed = await client.call_tool("alpha__fail_tool", {"message": "disk full"})
        with pytest.raises(MCPError) as rejected:
            await client.call_tool("alpha__fail_protocol", {"message": "not today"})

    assert failed.is_error is True
    assert failed.content[0].text == "disk full"
    assert rejected.value.error.code == FAIL_PROTOCOL_CODE
    assert rejected.value.error.message == "not today"


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.legitimate("tool name shadowing")
async def test_long_and_dotted_names_callable(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        names, _ = await all_tool_names(client)
        long_name = next(name for name in names if name.startswith("alpha__a_very_long_tool_name"))
        dotted_name = next(name for name in names if name.startswith("alpha__dotted_name"))
        long_result = await client.call_tool(long_name, {"text": "x"})
        dotted_result = await client.call_tool(dotted_name, {"text": "y"})

    assert len(long_name) <= 48
    assert dotted_name != "alpha__dotted_name"  # mapped characters get a hash, so no name is shadowed
    assert json.loads(long_result.content[0].text) == {"arguments": {"text": "x"}, "server": "alpha"}
    assert json.loads(dotted_result.content[0].text) == {"arguments": {"text": "y"}, "server": "alpha"}
    assert len(LONG_TOOL_NAME) == 70
    assert DOTTED_TOOL_NAME == "dotted.name"


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.legitimate("tool name shadowing")
async def test_same_tool_on_two_servers(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        alpha = await client.call_tool("alpha__search", {"query": "q"})
        beta = await client.call_tool("beta__search", {"query": "q"})

    assert alpha.content[0].text == "alpha results for q"
    assert beta.content[0].text == "beta results for q"


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.attack("hidden tool probing", attempts=2)
async def test_unknown_tool_rejected(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("alpha__no_such_tool", {})
        with pytest.raises(MCPError) as downstream_name:
            await client.call_tool("echo", {"text": "x"})

    assert unknown.value.error.code == -32602
    assert "Unknown tool" in unknown.value.error.message
    assert downstream_name.value.error.code == -32602


@pytest.mark.parametrize("mode", ERAS)
async def test_resources_prompts_completion(policy: Path, mode: str) -> None:
    async with stdio_gateway(policy, mode) as client:
        resources = await client.list_resources()
        templates = await client.list_resource_templates()
        readme = await client.read_resource("fixture://beta/readme")
        item = await client.read_resource("fixture://alpha/items/7")
        prompts = await client.list_prompts()
        greeting = await client.get_prompt("beta__greet", {"name": "Ada"})
        completion = await client.complete(
            {"type": "ref/prompt", "name": "alpha__greet"}, {"name": "name", "value": "Al"}
        )

    uris = {resource.uri for resource in resources.resources}
    assert {"fixture://alpha/readme", "fixture://beta/logo"} <= uris
    assert {t.uri_template for t in templates.resource_templates} >= {"fixture://alpha/items/{id}"}
    assert readme.contents[0].uri == "fixture://beta/readme"
    assert item.contents[0].text == "item 7 from alpha"
    assert {prompt.name for prompt in prompts.prompts} == {"alpha__greet", "beta__greet"}
    assert greeting.messages[0].content.text == "Hello, Ada!"
    assert completion.completion.values == ["Alice", "Albert"]
