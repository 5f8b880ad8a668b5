"""Rate limits in a running gateway: rejections, audit rows, sizes, restarts, replicas and a lost Redis.

Gateways are real processes in front of the fixture server. The SQLite store is
the state directory's file, and the Redis store is the Redis at 127.0.0.1:6379,
under a key prefix of the test's own. The test that stops Redis runs a
redis-server of its own on a free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from support import (
    MODERN,
    PROCESS_WAIT_SECONDS,
    fixture_server,
    free_port,
    gateway_command,
    http_gateway,
    read_records,
    stdio_gateway,
    wait_until,
    write_policy,
)

from mcp_guard.audit import CallFilter, CallRecord, SqliteAuditStore
from mcp_guard.gateway.identity import hash_api_key

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
ALLOW = {
    "name": "allow",
    "clients": ["*"],
    "server": "*",
    "tools": ["*"],
    "decision": "auto",
    "write": True,
    "arguments": {"text": {"never_contains": "forbidden"}},
}


def limited_policy(
    folder: Path, *limits: dict[str, Any], record: Path | None = None, **settings: Any
) -> Path:
    return write_policy(
        folder,
        {"alpha": fixture_server("alpha", record=record)},
        rules=[ALLOW],
        limits={"rules": list(limits), **settings},
    )


async def read_trail(state_dir: Path) -> list[CallRecord]:
    async with SqliteAuditStore.in_state_dir(state_dir, read_only=True) as store:
        return await store.search(CallFilter(), limit=1000, oldest_first=True)


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.attack("rate-limit burst")
async def test_limited_call_names_limit_and_retry(tmp_path: Path) -> None:
    policy = limited_policy(tmp_path, {"name": "per-client", "requests_per_minute": 3})

    async with stdio_gateway(policy) as client:
        results = [await client.call_tool("alpha__echo", {"text": f"call {index}"}) for index in range(4)]

    assert [result.is_error for result in results] == [False, False, False, True]
    message = text_of(results[3])
    assert "would exceed limit 'per-client' (your limit is 3 calls per minute, 3 used)" in message
    assert "retry in" in message
    trail = await read_trail(tmp_path / "state")
    assert [call.outcome.outcome for call in trail if call.outcome] == ["succeeded"] * 3 + ["rate_limited"]
    assert (
        trail[3].outcome is not None and trail[3].outcome.detail == "limit 'per-client': requests_per_minute"
    )


@pytest.mark.legitimate("rate-limit burst")
async def test_denied_calls_spend_no_budget(tmp_path: Path) -> None:
    policy = limited_policy(tmp_path, {"name": "per-client", "requests_per_minute": 2})

    async with stdio_gateway(policy) as client:
        denied = [await client.call_tool("alpha__echo", {"text": "forbidden"}) for _ in range(5)]
        allowed = [await client.call_tool("alpha__echo", {"text": "ok"}) for _ in range(2)]

    assert [text_of(result)[:19] for result in denied] == ["Denied by mcp-guard"] * 5
    assert [result.is_error for result in allowed] == [False, False]


@pytest.mark.attack("oversized or pathological input")
async def test_oversized_input_never_forwarded(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = limited_policy(tmp_path, {"name": "small-calls", "max_input_tokens": 50}, record=record)

    async with stdio_gateway(policy) as client:
        small = await client.call_tool("alpha__echo", {"text": "fits"})
        large = await client.call_tool("alpha__echo", {"text": "x" * 1000})

    assert small.is_error is False
    assert large.is_error is True
    assert "over the 50 tokens per call" in text_of(large)
    echoed = [event for event in read_records(record) if event["event"] == "call" and event["tool"] == "echo"]
    assert [event["arguments"]["text"] for event in echoed] == ["fits"]


async def test_oversized_output_cut_validly(tmp_path: Path) -> None:
    policy = limited_policy(tmp_path, {"name": "short-answers", "max_output_tokens": 8})

    async with stdio_gateway(policy) as client:
        big = await client.call_tool("alpha__big", {"megabytes": 0.01})
        # {"value":5,"doubled":10} fits as text but not twice, so the structure goes; the tool has an
        # output schema, so the SDK client checks that the result is an error or carries it.
        structured = await client.call_tool("alpha__structured", {"value": 5})

    assert len(big.content) == 2
    assert len(big.content[0].text.encode()) <= 32
    assert "result cut to about 8 of its" in big.content[1].text
    assert structured.is_error is True
    assert structured.structured_content is None
    assert "structured content dropped" in text_of(structured)
    async with SqliteAuditStore.in_state_dir(tmp_path / "state", read_only=True) as store:
        calls = await store.search(CallFilter(tool="big"))
    assert calls[0].outcome is not None
    assert calls[0].outcome.detail == "result cut to about 8 tokens by limit 'short-answers'"


@pytest.mark.attack("rate-limit burst")
async def test_slow_call_holds_its_slot(tmp_path: Path) -> None:
    policy = limited_policy(tmp_path, {"name": "one-at-a-time", "concurrent_calls": 1})

    async with stdio_gateway(policy) as client, anyio.create_task_group() as tasks:
        tasks.start_soon(client.call_tool, "alpha__slow", {"seconds": 2, "steps": 0})
        await anyio.sleep(0.5)
        second = await client.call_tool("alpha__echo", {"text": "meanwhile"})
    async with stdio_gateway(policy) as client:
        after = await client.call_tool("alpha__echo", {"text": "afterwards"})

    assert second.is_error is True
    assert "in flight" in text_of(second)
    assert after.is_error is False


BACK_TO_BACK_CALLS = 30


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
@pytest.mark.legitimate("rate-limit burst")
async def test_back_to_back_calls_fit_one_slot(tmp_path: Path, store: str, redis_prefix: str) -> None:
    # A call's slot is given back after its result is sent; the next call must still find it free.
    limits = {"store": store, "key_prefix": redis_prefix} if store == "redis" else {"store": store}
    policy = limited_policy(tmp_path, {"name": "one-at-a-time", "concurrent_calls": 1}, **limits)

    async with stdio_gateway(policy) as client:
        results = [
            await client.call_tool("alpha__echo", {"text": f"call {number}"})
            for number in range(BACK_TO_BACK_CALLS)
        ]

    assert [text_of(result) for result in results if result.is_error] == []


@pytest.mark.parametrize("store", ["sqlite", "redis"])
@pytest.mark.attack("rate-limit reset by restart or clock")
async def test_killed_gateway_keeps_window_count(tmp_path: Path, store: str, redis_prefix: str) -> None:
    limits = {"store": store, "key_prefix": redis_prefix}
    policy = limited_policy(tmp_path, {"name": "per-client", "requests_per_hour": 5}, **limits)

    with http_gateway(policy, tmp_path) as (process, url):
        async with Client(url) as client:
            for _ in range(3):
                assert (await client.call_tool("alpha__echo", {"text": "before"})).is_error is False
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=PROCESS_WAIT_SECONDS)
    (tmp_path / "gateway.port").unlink()  # so the restarted gateway's port is read, not the old one
    with http_gateway(policy, tmp_path) as (_process, url):
        async with Client(url) as client:
            after = [await client.call_tool("alpha__echo", {"text": "after"}) for _ in range(3)]

    assert [result.is_error for result in after] == [False, False, True]


@pytest.mark.legitimate("rate-limit burst")
async def test_killed_gateway_frees_its_slots(tmp_path: Path) -> None:
    # The killed gateway's call can no longer run, so its slot must not block the restarted one.
    record = tmp_path / "alpha.jsonl"
    policy = limited_policy(tmp_path, {"name": "one-at-a-time", "concurrent_calls": 1}, record=record)

    # The client's session ends with the gateway, so its error is expected.
    with http_gateway(policy, tmp_path) as (process, url), suppress(Exception):
        async with Client(url) as client, anyio.create_task_group() as tasks:
            tasks.start_soon(client.call_tool, "alpha__slow", {"seconds": 30, "steps": 0})
            await wait_until(
                lambda: any(line.get("tool") == "slow" for line in read_records(record)), 10, "slow call"
            )
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=PROCESS_WAIT_SECONDS)
    (tmp_path / "gateway.port").unlink()
    with http_gateway(policy, tmp_path) as (_process, url):
        async with Client(url) as client:
            after = await client.call_tool("alpha__echo", {"text": "after the kill"})

    assert after.is_error is False, text_of(after)


@pytest.mark.attack("rate limits split across replicas", attempts=30)
async def test_two_gateways_share_redis_limit(tmp_path: Path, redis_prefix: str) -> None:
    limits = {"store": "redis", "key_prefix": redis_prefix}
    policies = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        policies.append(limited_policy(folder, {"name": "shared", "requests_per_minute": 10}, **limits))
    outcomes: list[bool] = []

    async def burst(url: str) -> None:
        async with Client(url) as client, anyio.create_task_group() as tasks:
            for _ in range(15):
                tasks.start_soon(one_call, client)

    async def one_call(client: Client) -> None:
        result = await client.call_tool("alpha__echo", {"text": "burst"})
        outcomes.append(result.is_error)

    with (
        http_gateway(policies[0], tmp_path / "first") as (_first, first_url),
        http_gateway(policies[1], tmp_path / "second") as (_second, second_url),
    ):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(burst, first_url)
            tasks.start_soon(burst, second_url)

    assert len(outcomes) == 30
    assert outcomes.count(False) == 10


@contextmanager
def redis_server(port: int, folder: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a redis-server of the test's own on 127.0.0.1:`port`, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; `make test` needs Debian's redis-server package")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=PROCESS_WAIT_SECONDS)


@pytest.mark.attack("rate-limit store down")
async def test_lost_redis_fails_closed_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    policy = limited_policy(
        tmp_path, {"name": "per-client", "requests_per_minute": 100}, store="redis", redis_url=url
    )

    async with stdio_gateway(policy) as client:
        with redis_server(port, tmp_path):
            before = await client.call_tool("alpha__echo", {"text": "redis is up"})
        during = await client.call_tool("alpha__echo", {"text": "redis is down"})
        with redis_server(port, tmp_path):
            after = await client.call_tool("alpha__echo", {"text": "redis is back"})

    assert before.is_error is False
    assert during.is_error is True
    assert "the rate-limit store cannot be reached, so calls are rejected until it is back" in text_of(during)
    assert url not in text_of(during)
    assert after.is_error is False
    trail = await read_trail(tmp_path / "state")
    assert [call.outcome.outcome for call in trail if call.outcome] == [
        "succeeded",
        "rate_limited",
        "succeeded",
    ]


async def test_store_failure_may_allow_calls(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    policy = limited_policy(
        tmp_path,
        {"name": "per-client", "requests_per_minute": 100},
        store="redis",
        redis_url=url,
        on_store_failure="allow",
    )

    async with stdio_gateway(policy) as client:
        result = await client.call_tool("alpha__echo", {"text": "uncounted"})

    assert result.is_error is False


async def test_limits_command_shows_usage(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        clients={"default": {"organisation": "acme"}, "other": {}},
        rules=[ALLOW],
        limits={
            "rules": [
                {"name": "per-client", "requests_per_hour": 50, "concurrent_calls": 4},
                {"name": "acme", "clients": ["default"], "per": "organisation", "requests_per_day": 900},
            ]
        },
    )
    async with stdio_gateway(policy) as client:
        for _ in range(2):
            await client.call_tool("alpha__echo", {"text": "counted"})

    listing = await anyio.run_process([*gateway_command(policy)[:3], "limits", "--config", str(policy)])
    rows = [line.split() for line in listing.stdout.decode().splitlines()]
    assert rows[0] == ["CLIENT", "LIMIT", "DIMENSION", "COUNTED", "PER", "USED", "OF"]
    assert ["default", "per-client", "requests_per_hour", "client", "2", "50"] in rows
    assert ["default", "per-client", "concurrent_calls", "client", "0", "4"] in rows
    assert ["default", "acme", "requests_per_day", "organisation", "2", "900"] in rows
    assert ["other", "per-client", "requests_per_hour", "client", "0", "50"] in rows


async def test_limits_command_needs_no_server_secrets(tmp_path: Path) -> None:
    # The server's secret is for starting the server, which `limits` never does.
    alpha = {**fixture_server("alpha"), "env_from": {"TOKEN": "${MCP_GUARD_TEST_UNSET_TOKEN}"}}
    policy = write_policy(
        tmp_path,
        {"alpha": alpha},
        rules=[ALLOW],
        limits={"rules": [{"name": "hourly", "requests_per_hour": 5}]},
    )
    environment = {name: value for name, value in os.environ.items() if name != "MCP_GUARD_TEST_UNSET_TOKEN"}

    listing = await anyio.run_process(
        [*gateway_command(policy)[:3], "limits", "--config", str(policy)], env=environment, check=False
    )

    assert listing.returncode == 0, listing.stderr.decode()
    assert ["default", "hourly", "requests_per_hour", "client", "0", "5"] in [
        line.split() for line in listing.stdout.decode().splitlines()
    ]
    # The gateway never ran, and reading the counts creates no file.
    assert not (tmp_path / "state" / "limits.sqlite3").exists()


async def test_limits_command_names_missing_password(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        rules=[ALLOW],
        limits={
            "store": "redis",
            "redis_url": "redis://127.0.0.1:6379/0",
            "redis_password_from": "MCP_GUARD_TEST_UNSET_PASSWORD",
            "rules": [{"name": "hourly", "requests_per_hour": 5}],
        },
    )
    environment = {
        name: value for name, value in os.environ.items() if name != "MCP_GUARD_TEST_UNSET_PASSWORD"
    }

    listing = await anyio.run_process(
        [*gateway_command(policy)[:3], "limits", "--config", str(policy)], env=environment, check=False
    )

    assert listing.returncode == 2
    assert "MCP_GUARD_TEST_UNSET_PASSWORD is not set" in listing.stderr.decode()
    assert listing.stdout == b""


@pytest.mark.attack("approval flood")
async def test_approval_requests_limited_first(tmp_path: Path) -> None:
    needs_approval = {**ALLOW, "name": "writes need approval", "tools": ["write_file"], "decision": "approve"}
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        rules=[ALLOW, needs_approval],
        limits={"rules": [{"name": "fatigue", "approvals_per_hour": 2}]},
    )

    async with stdio_gateway(policy) as client:
        first = await client.call_tool("alpha__write_file", {"path": "/tmp/x", "content": "1"})
        # The same call again joins the request already waiting, so it asks nobody and counts nothing.
        repeated = await client.call_tool("alpha__write_file", {"path": "/tmp/x", "content": "1"})
        second = await client.call_tool("alpha__write_file", {"path": "/tmp/x", "content": "2"})
        third = await client.call_tool("alpha__write_file", {"path": "/tmp/x", "content": "3"})
        echo = await client.call_tool("alpha__echo", {"text": "not an approval"})
    listing = await anyio.run_process(
        [*gateway_command(policy)[:3], "approvals", "--config", str(policy), "list"]
    )

    assert "Approval pending" in text_of(first)
    assert "Approval pending" in text_of(repeated)
    assert "Approval pending" in text_of(second)
    assert "would exceed limit 'fatigue'" in text_of(third)
    assert "approval requests per hour" in text_of(third)
    assert listing.stdout.decode().count("  pending  ") == 2  # nobody is asked about the third
    assert echo.is_error is False


@pytest.mark.attack("rate-limit reset by new session", attempts=6)
async def test_unauthenticated_http_share_bucket(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        rules=[ALLOW],
        limits={"unauthenticated_requests_per_minute": 3},
    )
    outcomes = []

    with http_gateway(policy, tmp_path) as (_process, url):
        for _ in range(3):
            async with Client(url) as client:  # a new session each time
                outcomes += [
                    (await client.call_tool("alpha__echo", {"text": "anon"})).is_error for _ in range(2)
                ]

    assert outcomes == [False, False, False, True, True, True]


@pytest.mark.attack("rate-limit reset by new session", attempts=50)
async def test_fifty_sessions_share_client_limit(tmp_path: Path) -> None:
    key = "test-key-for-the-session-rotation-test"
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        clients={"agent": {"api_key_hashes": [hash_api_key(key)]}},
        rules=[ALLOW],
        limits={"rules": [{"name": "per-client", "requests_per_hour": 20}]},
    )
    outcomes = []

    with http_gateway(policy, tmp_path) as (_process, url):
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
            for session in range(50):
                transport = streamable_http_client(url, http_client=http)
                name = types.Implementation(name=f"fresh-client-{session}", version="1")
                async with Client(transport, mode="legacy", client_info=name) as client:
                    outcomes.append((await client.call_tool("alpha__echo", {"text": "again"})).is_error)

    assert outcomes.count(False) == 20
    assert outcomes[:20] == [False] * 20


async def test_session_cap_follows_real_sessions_only(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        {"alpha": fixture_server("alpha")},
        rules=[ALLOW],
        limits={"rules": [{"name": "per-session", "per": "global", "calls_per_session": 2}]},
    )
    legacy: list[bool] = []
    modern: list[bool] = []

    with http_gateway(policy, tmp_path) as (_process, url):
        async with Client(url, mode="legacy") as client:
            legacy += [(await client.call_tool("alpha__echo", {"text": "x"})).is_error for _ in range(3)]
        for attempt in range(3):
            # A 2026-07-28 request has no session, whatever Mcp-Session-Id header it sends.
            headers = {"Mcp-Session-Id": f"chosen-by-the-client-{attempt}"}
            async with httpx2.AsyncClient(headers=headers) as http:
                transport = streamable_http_client(url, http_client=http)
                async with Client(transport, mode=MODERN) as client:
                    modern.append((await client.call_tool("alpha__echo", {"text": "y"})).is_error)

    assert legacy == [False, False, True]
    assert modern == [False, False, False]
