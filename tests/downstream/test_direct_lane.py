"""Tool calls to a stdio server take the direct lane, with the SDK's checks and cancellation kept."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from support import ERAS, fixture_server, read_records, wait_until

from mcp_guard.config.models import StdioServerConfig
from mcp_guard.downstream.connection import DownstreamConnection, ServerState
from mcp_guard.downstream.stdio import DIRECT_ID_PREFIX, checked_result
from mcp_guard.errors import DownstreamCrashed, DownstreamProtocolError, DownstreamRejected, DownstreamTimeout

pytestmark = pytest.mark.anyio

# A server that writes its JSON-RPC lines by hand, so that it can respond in ways the SDK never would.
SCRIPTED_SERVER = textwrap.dedent(
    """
    import json, sys

    TOOL = {"name": "answer", "inputSchema": {"type": "object"}}

    def send(message):
        sys.stdout.write(json.dumps(message) + "\\n")
        sys.stdout.flush()

    for line in sys.stdin:
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": request_id, "result": {
                "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": request_id, "result": {"tools": [TOOL]}})
        elif method == "tools/call":
            kind = message["params"]["arguments"]["kind"]
            if kind == "error":
                send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32000, "message": "no such record"}})
            elif kind == "malformed":
                send({"jsonrpc": "2.0", "id": request_id, "result": {"content": "not a list"}})
            elif kind == "exit":
                sys.exit(3)
            else:
                send({"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": kind}]}})
    """
)


@asynccontextmanager
async def connected(config: StdioServerConfig) -> AsyncIterator[DownstreamConnection]:
    connection = DownstreamConnection("alpha", config)
    async with anyio.create_task_group() as tasks:
        await tasks.start(connection.run)
        assert connection.state is ServerState.READY, connection.last_error
        yield connection
        tasks.cancel_scope.cancel()


def fixture_config(record: Path, mode: str, **settings: Any) -> StdioServerConfig:
    return StdioServerConfig(**fixture_server("alpha", record=record), protocol=mode, **settings)


def scripted_config(tmp_path: Path) -> StdioServerConfig:
    script = tmp_path / "scripted_server.py"
    script.write_text(SCRIPTED_SERVER)
    return StdioServerConfig(command=sys.executable, args=[str(script)], protocol="legacy")


def calls(record: Path) -> list[dict[str, Any]]:
    return [event for event in read_records(record) if event["event"] == "call"]


@pytest.mark.parametrize("mode", ERAS)
async def test_call_without_progress_takes_direct_lane(tmp_path: Path, mode: str) -> None:
    record = tmp_path / "alpha.jsonl"
    async with connected(fixture_config(record, mode)) as connection:
        result = await connection.call_tool("echo", {"text": "grüße"})
        steps: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            steps.append(progress)

        await connection.call_tool("slow", {"seconds": 0.1, "steps": 1}, progress_callback=on_progress)

    assert result["content"] == [{"type": "text", "text": "grüße"}]
    direct, with_progress = calls(record)
    assert str(direct["request_id"]).startswith(DIRECT_ID_PREFIX)
    # Progress is routed by the SDK session, so that call keeps the session's own numbering.
    assert not str(with_progress["request_id"]).startswith(DIRECT_ID_PREFIX)
    assert steps == [1]


@pytest.mark.parametrize("mode", ERAS)
async def test_timed_out_call_is_cancelled_on_server(tmp_path: Path, mode: str) -> None:
    record = tmp_path / "alpha.jsonl"
    async with connected(fixture_config(record, mode, call_timeout_seconds=0.5)) as connection:
        with pytest.raises(DownstreamTimeout):
            await connection.call_tool("slow", {"seconds": 30, "steps": 3})
        await wait_until(lambda: any(r["event"] == "cancelled" for r in read_records(record)), 5, "cancel")
        after = await connection.call_tool("echo", {"text": "still here"})

    cancelled = next(r for r in read_records(record) if r["event"] == "cancelled")
    assert cancelled["request_id"] == calls(record)[0]["request_id"]
    assert after["content"][0]["text"] == "still here"


async def test_abandoned_call_is_cancelled_on_server(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    async with connected(fixture_config(record, "legacy")) as connection:
        with anyio.move_on_after(0.5):
            await connection.call_tool("slow", {"seconds": 30, "steps": 3})
        await wait_until(lambda: any(r["event"] == "cancelled" for r in read_records(record)), 5, "cancel")

    cancelled = next(r for r in read_records(record) if r["event"] == "cancelled")
    assert cancelled["request_id"] == calls(record)[0]["request_id"]


async def test_concurrent_calls_get_their_own_results(tmp_path: Path) -> None:
    results: dict[int, dict[str, Any]] = {}
    async with connected(fixture_config(tmp_path / "alpha.jsonl", "legacy")) as connection:

        async def call(number: int) -> None:
            results[number] = await connection.call_tool("echo", {"text": f"call {number}"})

        async with anyio.create_task_group() as tasks:
            for number in range(40):
                tasks.start_soon(call, number)

    assert {number: result["content"][0]["text"] for number, result in results.items()} == {
        number: f"call {number}" for number in range(40)
    }


async def test_error_response_is_rejection(tmp_path: Path) -> None:
    async with connected(scripted_config(tmp_path)) as connection:
        with pytest.raises(DownstreamRejected) as caught:
            await connection.call_tool("answer", {"kind": "error"})
        plain = await connection.call_tool("answer", {"kind": "fine"})

    assert (caught.value.code, caught.value.error_message) == (-32000, "no such record")
    assert plain["content"] == [{"type": "text", "text": "fine"}]


async def test_malformed_result_is_protocol_error(tmp_path: Path) -> None:
    async with connected(scripted_config(tmp_path)) as connection:
        with pytest.raises(DownstreamProtocolError, match="'alpha'"):
            await connection.call_tool("answer", {"kind": "malformed"})


async def test_exit_mid_call_fails_at_once(tmp_path: Path) -> None:
    async with connected(scripted_config(tmp_path)) as connection:
        with anyio.fail_after(2):
            with pytest.raises(DownstreamCrashed):
                await connection.call_tool("answer", {"kind": "exit"})


def test_checked_result_drops_later_revision_fields() -> None:
    result = {"content": [], "resultType": "complete", "requestState": "opaque"}

    checked = checked_result("alpha", "tools/call", "2025-11-25", result)

    assert checked == {"content": []}
    assert checked_result("alpha", "tools/call", "2026-07-28", dict(result)) == result
