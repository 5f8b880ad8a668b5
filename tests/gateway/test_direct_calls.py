"""The direct lane for stdio tool calls: same responses as the SDK's path, and only for plain calls.

Each test drives the gateway over raw stdio lines. That way it can send the same call once on
the lane and once on the SDK's path, because a progress token keeps a call on the SDK's path.
The gateway's debug log shows which path served each call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import (
    ALLOW_ALL,
    ERAS,
    MODERN,
    MODERN_ENVELOPE,
    fixture_server,
    raw_stdio_gateway,
    read_records,
    wait_until,
    write_policy,
)

pytestmark = pytest.mark.anyio

NOTIFY_SEARCH = {
    "name": "searches notify",
    "clients": ["*"],
    "server": "alpha",
    "tools": ["search"],
    "decision": "notify",
    "write": True,
}
# Calls whose responses cover every kind of content and both kinds of error.
SAME_ON_BOTH_PATHS = [
    ("alpha__echo", {"text": "grüße 👋"}),
    ("alpha__image", {"size": 1000}),
    ("alpha__structured", {"value": 21}),
    ("alpha__annotated", {}),
    ("alpha__embedded_resource", {}),
    ("alpha__resource_link", {}),
    ("alpha__unicode", {}),
    ("alpha__fail_tool", {"message": "tool failed"}),
    ("alpha__fail_protocol", {"message": "protocol failed"}),
    ("alpha__no_such_tool", {}),
]


def served_directly(log: Path) -> list[bool]:
    """Return, for each call the gateway received in order, whether the direct lane served it."""
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [bool(event.get("direct")) for event in events if event.get("event") == "tool_call_received"]


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    record = tmp_path / "alpha.jsonl"
    return write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha", record=record)},
        rules=[NOTIFY_SEARCH, {**ALLOW_ALL, "write": True}],
    )


@pytest.mark.parametrize("mode", ERAS)
async def test_lane_responses_match_sdk_path(policy: Path, tmp_path: Path, mode: str) -> None:
    log = tmp_path / "gateway.log"
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    async with raw_stdio_gateway(policy, mode, log=log) as client:
        await client.request("tools/list", {})
        for name, arguments in SAME_ON_BOTH_PATHS:
            params = {"name": name, "arguments": arguments}
            direct = await client.request("tools/call", params)
            through_sdk = await client.request("tools/call", params, progress=True)
            pairs.append((direct, through_sdk))

    for (name, _arguments), (direct, through_sdk) in zip(SAME_ON_BOTH_PATHS, pairs, strict=True):
        assert {**direct, "id": 0} == {**through_sdk, "id": 0}, name
    assert pairs[0][0]["result"]["content"] == [{"type": "text", "text": "grüße 👋"}]
    assert "error" in pairs[-2][0]
    assert "error" in pairs[-1][0]
    # The unknown name is rejected before the pipeline, so it is not a received call.
    assert served_directly(log) == [True, False] * (len(SAME_ON_BOTH_PATHS) - 1)


@pytest.mark.parametrize("mode", ERAS)
async def test_call_needing_client_keeps_sdk_path(policy: Path, tmp_path: Path, mode: str) -> None:
    log = tmp_path / "gateway.log"
    async with raw_stdio_gateway(policy, mode, log=log) as client:
        await client.request("tools/list", {})
        request_id = await client.send_request(
            "tools/call", {"name": "alpha__search", "arguments": {"query": "q"}}
        )
        messages = await client.messages_for(3)

    response = next(message for message in messages if message.get("id") == request_id)
    assert response["result"]["content"][0]["text"] == "alpha results for q"
    assert served_directly(log) == [False]
    if mode != MODERN:
        # Handshake-era clients get the notify rule's log message. 2026-07-28 clients must opt in to logs.
        notices = [message for message in messages if message.get("method") == "notifications/message"]
        assert "which notifies" in notices[0]["params"]["data"]


async def test_no_lane_before_handshake(policy: Path, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    echo = {"name": "alpha__echo", "arguments": {"text": "too early"}}
    async with raw_stdio_gateway(policy, "legacy", log=log, handshake=False) as client:
        first = await client.request("tools/call", echo)
        second = await client.request("tools/call", echo)

    assert first["error"]["code"] == second["error"]["code"]
    assert "result" not in second
    assert served_directly(log) == []
    assert read_records(tmp_path / "alpha.jsonl") == []


async def test_modern_envelope_on_legacy_rejected(policy: Path, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    async with raw_stdio_gateway(policy, "legacy", log=log) as client:
        await client.request("tools/list", {})
        enveloped = {"name": "alpha__echo", "arguments": {"text": "hi"}, "_meta": MODERN_ENVELOPE}
        response = await client.request("tools/call", enveloped)

    assert "error" in response
    assert served_directly(log) == []


@pytest.mark.parametrize("mode", ERAS)
async def test_invalid_arguments_get_sdk_error(policy: Path, tmp_path: Path, mode: str) -> None:
    log = tmp_path / "gateway.log"
    async with raw_stdio_gateway(policy, mode, log=log) as client:
        await client.request("tools/list", {})
        response = await client.request(
            "tools/call", {"name": "alpha__echo", "arguments": ["not", "an", "object"]}
        )

    assert response["error"]["code"] == -32602
    assert served_directly(log) == []


@pytest.mark.parametrize("mode", ERAS)
async def test_cancelled_direct_call_gets_no_response(policy: Path, tmp_path: Path, mode: str) -> None:
    log, record = tmp_path / "gateway.log", tmp_path / "alpha.jsonl"
    async with raw_stdio_gateway(policy, mode, log=log) as client:
        await client.request("tools/list", {})
        slow = await client.send_request(
            "tools/call", {"name": "alpha__slow", "arguments": {"seconds": 30, "steps": 3}}
        )
        await wait_until(lambda: any(r["event"] == "call" for r in read_records(record)), 10, "call")
        await client.send(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": slow, "reason": "test"},
            }
        )
        await wait_until(lambda: any(r["event"] == "cancelled" for r in read_records(record)), 10, "cancel")
        after = await client.request("tools/call", {"name": "alpha__echo", "arguments": {"text": "after"}})
        late = await client.messages_for(1)

    assert after["result"]["content"][0]["text"] == "after"
    assert not any(message.get("id") == slow for message in late)
    assert served_directly(log) == [True, True]


@pytest.mark.attack("approval skipped on the direct lane", attempts=2)
@pytest.mark.parametrize("mode", ERAS)
async def test_approval_call_never_runs_directly(tmp_path: Path, mode: str) -> None:
    log, record = tmp_path / "gateway.log", tmp_path / "alpha.jsonl"
    approve_writes = {
        "name": "writes need approval",
        "clients": ["*"],
        "server": "alpha",
        "tools": ["write_file"],
        "decision": "approve",
        "write": True,
    }
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha", record=record)},
        rules=[approve_writes, {**ALLOW_ALL, "write": True}],
    )
    write = {"name": "alpha__write_file", "arguments": {"path": "/tmp/x", "content": "data"}}
    async with raw_stdio_gateway(policy, mode, log=log) as client:
        await client.request("tools/list", {})
        await client.request("tools/call", {"name": "alpha__echo", "arguments": {"text": "lane is open"}})
        # The client declared no elicitation, so the call waits for an approval out of band.
        response = await client.request("tools/call", write)

    assert "would write" not in json.dumps(response)
    assert [event["tool"] for event in read_records(record) if event["event"] == "call"] == ["echo"]
    assert served_directly(log) == [True, False]
