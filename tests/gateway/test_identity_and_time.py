"""Who a client is (API keys over HTTP) and how long it may act (time-limited rules, a clock that never runs back)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import structlog.testing
from mcp import Client
from mcp.shared.exceptions import MCPError
from support import (
    HTTP_HEADERS,
    INITIALIZE,
    fixture_server,
    gateway_command,
    http_gateway,
    read_records,
    stdio_gateway,
    write_policy,
)

from mcp_guard.config import load_config
from mcp_guard.errors import ConfigError
from mcp_guard.gateway.identity import MissingTokenLog, hash_api_key
from mcp_guard.gateway.serve import running_gateway
from mcp_guard.state.clock import HighWaterClock, ManualClock

pytestmark = pytest.mark.anyio

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
KEY_A = "mcpg_test-key-for-client-a"
KEY_B = "mcpg_test-key-for-client-b"


def keyed_policy(tmp_path: Path, record: Path) -> Path:
    clients = {"a": {"api_key_hashes": [hash_api_key(KEY_A)]}, "b": {"api_key_hashes": [hash_api_key(KEY_B)]}}
    rules = [
        {
            "name": "a echoes",
            "clients": ["a"],
            "server": "alpha",
            "tools": ["echo"],
            "decision": "auto",
            "write": True,
        },
        {
            "name": "b asks",
            "clients": ["b"],
            "server": "alpha",
            "tools": ["whoami"],
            "decision": "auto",
            "write": True,
        },
    ]
    return write_policy(
        tmp_path, {"alpha": fixture_server("alpha", record=record)}, rules=rules, clients=clients
    )


@pytest.mark.attack("missing or wrong API key", attempts=2)
async def test_http_requires_valid_key(tmp_path: Path) -> None:
    policy = keyed_policy(tmp_path, tmp_path / "alpha.jsonl")

    with http_gateway(policy, tmp_path) as (_process, url):
        async with httpx2.AsyncClient() as http:
            missing = await http.post(url, json=INITIALIZE, headers=HTTP_HEADERS)
            wrong = await http.post(
                url, json=INITIALIZE, headers={**HTTP_HEADERS, "Authorization": "Bearer nope"}
            )
            right = await http.post(
                url, json=INITIALIZE, headers={**HTTP_HEADERS, "Authorization": f"Bearer {KEY_A}"}
            )

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert right.status_code == 200


def authentication_failures(log: Path) -> list[dict[str, Any]]:
    """Return the gateway's `authentication_failed` log lines, parsed."""
    return [json.loads(line) for line in log.read_text().splitlines() if "authentication_failed" in line]


async def test_missing_token_logged_once_a_minute(tmp_path: Path) -> None:
    policy = keyed_policy(tmp_path, tmp_path / "alpha.jsonl")

    with http_gateway(policy, tmp_path) as (_process, url):
        async with httpx2.AsyncClient() as http:
            statuses = [
                (await http.post(url, json=INITIALIZE, headers=HTTP_HEADERS)).status_code for _ in range(3)
            ]
            basic = await http.post(
                url, json=INITIALIZE, headers={**HTTP_HEADERS, "Authorization": "Basic eA=="}
            )
    lines = authentication_failures(tmp_path / "gateway.log")

    assert statuses == [401, 401, 401]
    assert basic.status_code == 401
    assert [(line["reason"], line["peer"], line["since_last_line"]) for line in lines] == [
        ("no Authorization header", "127.0.0.1", 0)
    ]


async def test_unknown_key_logged_with_its_peer(tmp_path: Path) -> None:
    policy = keyed_policy(tmp_path, tmp_path / "alpha.jsonl")

    with http_gateway(policy, tmp_path) as (_process, url):
        async with httpx2.AsyncClient() as http:
            wrong = await http.post(
                url, json=INITIALIZE, headers={**HTTP_HEADERS, "Authorization": "Bearer not-a-key"}
            )
    lines = authentication_failures(tmp_path / "gateway.log")

    assert wrong.status_code == 401
    assert [(line["reason"], line["peer"]) for line in lines] == [("unknown API key", "127.0.0.1")]
    assert "not-a-key" not in (tmp_path / "gateway.log").read_text()


async def test_missing_token_log_counts_quiet_requests() -> None:
    now = [0.0]
    passed: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["path"])

    gate = MissingTokenLog(app, "/mcp", clock=lambda: now[0])
    scope = {"type": "http", "path": "/mcp", "headers": [], "client": ("127.0.0.1", 5000)}

    with structlog.testing.capture_logs() as captured:
        for moment in (0.0, 10.0, 30.0, 61.0):
            now[0] = moment
            await gate(scope, None, None)  # type: ignore[arg-type]

    assert [(entry["peer"], entry["since_last_line"]) for entry in captured] == [
        ("127.0.0.1", 0),
        ("127.0.0.1", 2),
    ]
    assert passed == ["/mcp"] * 4


@pytest.mark.attack("client impersonation")
async def test_key_decides_client_not_client_info(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = keyed_policy(tmp_path, record)

    with http_gateway(policy, tmp_path) as (_process, url):
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY_B}"}) as http_b,
            Client(
                url_transport(url, http_b),
                mode="legacy",
                client_info=types.Implementation(name="a", version="1"),
            ) as client_b,
        ):
            names_b = {tool.name for tool in (await client_b.list_tools()).tools}
            with pytest.raises(MCPError) as refused:
                await client_b.call_tool("alpha__echo", {"text": "from b"})
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY_A}"}) as http_a,
            Client(url_transport(url, http_a), mode="2026-07-28") as client_a,
        ):
            echoed = await client_a.call_tool("alpha__echo", {"text": "from a"})

    assert names_b == {"alpha__whoami"}
    assert refused.value.error.message.startswith("Unknown tool")
    assert echoed.content[0].text == "from a"
    assert [event["arguments"] for event in read_records(record) if event["event"] == "call"] == [
        {"text": "from a"}
    ]


@pytest.mark.attack("client impersonation")
def test_shared_key_hash_is_rejected(tmp_path: Path) -> None:
    # A client table copied from another keeps its hash, which would give one key two clients' rights.
    clients = {
        "reader": {"api_key_hashes": [hash_api_key(KEY_A)]},
        "writer": {"api_key_hashes": [hash_api_key(KEY_B), hash_api_key(KEY_A)]},
    }
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, clients=clients)

    with pytest.raises(ConfigError) as refused:
        load_config(policy)

    assert refused.value.problems == [
        "clients.writer.api_key_hashes[1]: the same hash is listed by client 'reader'; a key must "
        "identify one client, so list it under one client only and give the other client a key of "
        "its own (`mcp-guard keys new`)"
    ]


@pytest.mark.attack("client impersonation")
async def test_shared_key_hash_from_environment_stops_gateway(tmp_path: Path) -> None:
    clients = {
        "reader": {"api_key_hashes": [hash_api_key(KEY_A)]},
        "writer": {"api_key_hashes_from": "WRITER_KEY_HASHES"},
    }
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, clients=clients)
    environment = {**os.environ, "WRITER_KEY_HASHES": f"{hash_api_key(KEY_B)},{hash_api_key(KEY_A)}"}

    started = await anyio.run_process(
        [*gateway_command(policy), "--transport", "http", "--port", "0"], env=environment, check=False
    )

    assert started.returncode == 2
    error = started.stderr.decode()
    assert "clients 'reader' and 'writer' list the same API key hash" in error
    assert hash_api_key(KEY_A) not in error


def url_transport(url: str, http: httpx2.AsyncClient) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    return streamable_http_client(url, http_client=http)


def window_policy(tmp_path: Path) -> Path:
    rules = [
        {
            "name": "write for five minutes",
            "clients": ["*"],
            "server": "alpha",
            "tools": ["write_file"],
            "decision": "auto",
            "write": True,
            "active_for_seconds": 300,
        },
        {
            "name": "echo until ten",
            "clients": ["*"],
            "server": "alpha",
            "tools": ["echo"],
            "decision": "auto",
            "write": True,
            "not_after": START + timedelta(hours=1),
        },
    ]
    return write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=rules)


async def call(config: Any, clock: ManualClock, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    gateway = running_gateway(config, client="default", clock=HighWaterClock(clock))
    async with gateway as (_gateway, server), Client(server) as client:
        try:
            return await client.call_tool(name, arguments)
        except MCPError as exc:
            text = types.TextContent(type="text", text=exc.error.message)
            return types.CallToolResult(content=[text], is_error=True)


@pytest.mark.attack("expired time-limited rule revived", attempts=2)
async def test_grant_expires_and_stays_expired(tmp_path: Path) -> None:
    config = load_config(window_policy(tmp_path))
    clock = ManualClock(START)
    write = {"path": "/tmp/x", "content": "x"}

    first = await call(config, clock, "alpha__write_file", write)
    clock.current = START + timedelta(seconds=200)
    within = await call(config, clock, "alpha__write_file", write)
    clock.current = START + timedelta(seconds=301)
    expired = await call(config, clock, "alpha__write_file", write)
    clock.current = START + timedelta(seconds=100)  # the wall clock is stepped back
    stepped_back = await call(config, clock, "alpha__write_file", write)

    assert not first.is_error
    assert not within.is_error
    assert expired.is_error
    assert stepped_back.is_error


@pytest.mark.attack("expired time-limited rule revived", attempts=2)
async def test_not_after_not_revived(tmp_path: Path) -> None:
    config = load_config(window_policy(tmp_path))
    clock = ManualClock(START + timedelta(minutes=30))

    before = await call(config, clock, "alpha__echo", {"text": "x"})
    clock.current = START + timedelta(hours=2)
    after = await call(config, clock, "alpha__echo", {"text": "x"})
    clock.current = START + timedelta(minutes=30)
    back = await call(config, clock, "alpha__echo", {"text": "x"})

    assert not before.is_error
    assert after.is_error
    assert back.is_error


async def test_window_end_announced(tmp_path: Path) -> None:
    # Long enough for the gateway and its server to start on a busy machine before the window ends.
    ends = datetime.now(UTC) + timedelta(seconds=8)
    rules = [
        {
            "name": "echo briefly",
            "clients": ["*"],
            "server": "alpha",
            "tools": ["echo"],
            "decision": "auto",
            "write": True,
            "not_after": ends,
        },
        {
            "name": "whoami always",
            "clients": ["*"],
            "server": "alpha",
            "tools": ["whoami"],
            "decision": "auto",
            "write": True,
        },
    ]
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, rules=rules)
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with stdio_gateway(policy, message_handler=on_message) as client:
        before = {tool.name for tool in (await client.list_tools()).tools}
        with anyio.fail_after(20):
            await changed.wait()
        after = {tool.name for tool in (await client.list_tools()).tools}

    assert before == {"alpha__echo", "alpha__whoami"}
    assert after == {"alpha__whoami"}
    assert datetime.now(UTC) >= ends
