"""A downstream tools/list_changed refreshes the catalogue and reaches clients of both eras."""

from __future__ import annotations

from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from support import LEGACY, MODERN, fixture_server, http_gateway, stdio_gateway, write_policy

pytestmark = pytest.mark.anyio

# Bounds the wait for a notification to travel downstream -> gateway -> client.
NOTIFY_SECONDS = 10


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    # New tools are withheld until reviewed unless the server allows them; these tests are about
    # the notification, so they allow them.
    servers = {name: fixture_server(name) | {"allow_new_tools": True} for name in ("alpha", "beta")}
    return write_policy(tmp_path, servers)


async def test_legacy_client_told_over_stdio(policy: Path) -> None:
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with stdio_gateway(policy, LEGACY, message_handler=on_message) as client:
        assert client.server_capabilities.tools is not None
        assert client.server_capabilities.tools.list_changed is True
        await client.call_tool("alpha__add_tool", {"name": "fresh"})
        with anyio.fail_after(NOTIFY_SECONDS):
            await changed.wait()
        tools = await client.list_tools()
        result = await client.call_tool("alpha__fresh", {"text": "new"})

    assert "alpha__fresh" in {tool.name for tool in tools.tools}
    assert result.content[0].text == "new"


async def test_modern_client_told_over_stdio(policy: Path) -> None:
    async with stdio_gateway(policy, MODERN) as client:
        async with client.listen(tools_list_changed=True) as events:
            await client.call_tool("beta__add_tool", {"name": "fresh"})
            with anyio.fail_after(NOTIFY_SECONDS):
                event = await events.__anext__()
        tools = await client.list_tools(cache_mode="bypass")

    assert type(event).__name__ == "ToolsListChanged"
    assert "beta__fresh" in {tool.name for tool in tools.tools}


async def test_both_eras_told_over_http(policy: Path, tmp_path: Path) -> None:
    legacy_changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            legacy_changed.set()

    with http_gateway(policy, tmp_path) as (_process, url):
        async with (
            Client(url, mode=LEGACY, message_handler=on_message) as legacy,
            Client(url, mode=MODERN) as modern,
            modern.listen(tools_list_changed=True) as events,
        ):
            await legacy.list_tools()  # a legacy client is known once it has sent a request
            await modern.call_tool("alpha__add_tool", {"name": "over_http"})
            with anyio.fail_after(NOTIFY_SECONDS):
                event = await events.__anext__()
                await legacy_changed.wait()
            tools = await legacy.list_tools()

    assert type(event).__name__ == "ToolsListChanged"
    assert "alpha__over_http" in {tool.name for tool in tools.tools}
