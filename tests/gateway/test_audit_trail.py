"""The audit trail as a running gateway writes it: one intent and one outcome per call.

Each test starts real gateway processes in front of the fixture server and reads the SQLite
trail in the policy's state directory afterwards, with the read-only store or with
`mcp-guard audit`. Tests that need the gateway's stderr, or that must kill it, start it
themselves and speak JSON-RPC to it directly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from support import (
    ERAS,
    PROCESS_WAIT_SECONDS,
    ROOT,
    RawStdioClient,
    descendants,
    fixture_server,
    http_gateway,
    raw_stdio_gateway,
    read_records,
    stdio_gateway,
    wait_until,
    write_policy,
)

from mcp_guard.audit import CallFilter, CallRecord, ChainBroken, SqliteAuditStore

pytestmark = pytest.mark.anyio

# More rows than any test here writes, so one query reads the whole trail.
TRAIL_LIMIT = 10_000
QUERY_RULE = "alpha queries are lower-case words"
RULES = [
    {
        "name": QUERY_RULE,
        "clients": ["*"],
        "server": "alpha",
        "tools": ["*"],
        "decision": "auto",
        "write": True,
        "arguments": {"query": {"full_match": "[a-z ]+"}},
    }
]
UNKNOWN_TOOL = "alpha__no_such_tool"
LEGACY_VERSION = "2025-11-25"
HTTP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


# Reading the trail ------------------------------------------------------------------------


async def read_trail(state_dir: Path) -> list[CallRecord]:
    """Return every recorded call, oldest first, read as `mcp-guard audit` reads it."""
    async with SqliteAuditStore.in_state_dir(state_dir, read_only=True) as store:
        return await store.search(CallFilter(), limit=TRAIL_LIMIT, oldest_first=True)


async def row_kinds(state_dir: Path) -> dict[str, list[str]]:
    """Return the kinds of the rows stored for each call id, in row order."""
    async with SqliteAuditStore.in_state_dir(state_dir, read_only=True) as store:
        rows = await store.rows_after(0, limit=TRAIL_LIMIT)
    kinds: dict[str, list[str]] = {}
    for row in rows:
        kinds.setdefault(row.record.call_id, []).append(row.kind)
    return kinds


def by_tool(calls: Sequence[CallRecord], tool: str) -> list[CallRecord]:
    return [call for call in calls if call.intent.tool == tool]


async def wait_for_outcome(state_dir: Path, tool: str, seconds: float = 10.0) -> CallRecord:
    """Poll the trail until the one call of `tool` has an outcome, and return it."""
    with anyio.move_on_after(seconds):
        while True:
            calls = by_tool(await read_trail(state_dir), tool)
            if calls and calls[0].outcome is not None:
                return calls[0]
            await anyio.sleep(0.1)
    raise AssertionError(f"no outcome for {tool!r} within {seconds} s")


async def audit_command(policy: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run `mcp-guard audit` on the policy's state directory."""
    command = [sys.executable, "-m", "mcp_guard", "audit", "--config", str(policy), *args]
    return await anyio.run_process(command, cwd=ROOT, check=False)


def calls_received(record: Path, tool: str | None = None) -> list[dict[str, Any]]:
    """Return the tools/call requests the fixture server received."""
    events = [event for event in read_records(record) if event["event"] == "call"]
    return [event for event in events if tool is None or event["tool"] == tool]


def log_events(log: Path) -> list[str]:
    """Return the event names of the gateway's JSON log lines, skipping lines that are not JSON."""
    names = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "event" in entry:
            names.append(str(entry["event"]))
    return names


# Every way a call can end --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.attack("unaudited call", attempts=7)
async def test_each_outcome_recorded_once(tmp_path: Path, mode: str) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha", record=record)}, rules=RULES)
    state_dir = tmp_path / "state"

    async with stdio_gateway(policy, mode) as client:
        echo = await client.call_tool("alpha__echo", {"text": "allowed"})
        tool_error = await client.call_tool("alpha__fail_tool", {"message": "failed on purpose"})
        denied = await client.call_tool("alpha__search", {"query": "DROP TABLE notes"})
        with pytest.raises(MCPError):
            await client.call_tool(UNKNOWN_TOOL, {"text": "probe"})
        with pytest.raises(MCPError):
            await client.call_tool("alpha__fail_protocol", {"message": "rejected on purpose"})
        with anyio.move_on_after(1.0):
            await client.call_tool("alpha__slow", {"seconds": 30, "steps": 0})
        # The outcome must come from the cancellation, not from the shutdown below.
        cancelled = await wait_for_outcome(state_dir, "slow")
        crashed = await client.call_tool("alpha__crash", {"after_seconds": 0})
    calls = await read_trail(state_dir)
    kinds = await row_kinds(state_dir)

    assert echo.is_error is False
    assert tool_error.is_error is True
    assert denied.is_error is True
    assert crashed.is_error is True
    assert cancelled.outcome is not None
    assert cancelled.outcome.outcome == "cancelled"
    expected = {
        "echo": "succeeded",
        "fail_tool": "tool_error",
        "search": "denied",
        UNKNOWN_TOOL: "denied",
        "fail_protocol": "downstream_failed",
        "slow": "cancelled",
        "crash": "downstream_failed",
    }
    assert sorted(call.intent.tool for call in calls) == sorted(expected)
    for call in calls:
        assert kinds[call.intent.call_id] == ["intent", "outcome"], call.intent.tool
        assert call.outcome is not None, call.intent.tool
        assert call.outcome.outcome == expected[call.intent.tool], call.intent.tool
    allowed, search, unknown = (by_tool(calls, name)[0] for name in ("echo", "search", UNKNOWN_TOOL))
    assert (allowed.intent.decision, allowed.intent.rule) == ("auto", QUERY_RULE)
    assert (search.intent.decision, search.intent.rule) == ("deny", QUERY_RULE)
    assert (unknown.intent.server, unknown.intent.decision) == ("", "deny")
    rejected = by_tool(calls, "fail_protocol")[0]
    assert rejected.outcome is not None
    assert rejected.outcome.detail is not None
    assert "rejected on purpose" in rejected.outcome.detail
    assert calls_received(record, "search") == []


@pytest.mark.attack("unaudited call")
async def test_stdin_closed_mid_call_recorded_once(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha", record=record)})

    async with raw_stdio_gateway(policy, log=tmp_path / "gateway.log") as gateway:
        await gateway.send_request(
            "tools/call", {"name": "alpha__slow", "arguments": {"seconds": 30, "steps": 0}}
        )
        await wait_until(lambda: calls_received(record, "slow"), 10, "slow call forwarded")
        await gateway.close_stdin()
        with anyio.fail_after(PROCESS_WAIT_SECONDS):
            await gateway.process.wait()
    calls = await read_trail(tmp_path / "state")
    kinds = await row_kinds(tmp_path / "state")

    assert [call.intent.tool for call in calls] == ["slow"]
    assert kinds[calls[0].intent.call_id] == ["intent", "outcome"]
    assert calls[0].outcome is not None
    assert calls[0].outcome.outcome == "gateway_shutdown"
    assert calls[0].outcome.detail == "the gateway stopped during the call (stdin closed)"


async def test_sigterm_mid_call_recorded_once(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha", record=record)})
    params = {"name": "alpha__slow", "arguments": {"seconds": 30, "steps": 0}}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}

    with http_gateway(policy, tmp_path) as (process, url):
        async with httpx2.AsyncClient(timeout=PROCESS_WAIT_SECONDS * 2) as http:
            headers = await legacy_http_session(http, url)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(post_until_disconnected, http, url, call, headers)
                await wait_until(lambda: calls_received(record, "slow"), 10, "slow call forwarded")
                process.send_signal(signal.SIGTERM)
                exit_status = await anyio.to_thread.run_sync(process.wait, PROCESS_WAIT_SECONDS)
    calls = await read_trail(tmp_path / "state")
    kinds = await row_kinds(tmp_path / "state")

    assert exit_status == 0
    assert [call.intent.tool for call in calls] == ["slow"]
    assert kinds[calls[0].intent.call_id] == ["intent", "outcome"]
    assert calls[0].outcome is not None
    assert calls[0].outcome.outcome == "gateway_shutdown"
    assert calls[0].outcome.detail == "the gateway stopped during the call (SIGTERM)"


@pytest.mark.parametrize("mode", ERAS)
async def test_sigterm_answers_http_call(tmp_path: Path, mode: str) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha", record=record)})
    results: list[Any] = []

    with http_gateway(policy, tmp_path) as (process, url):
        async with Client(url, mode=mode) as client, anyio.create_task_group() as tasks:

            async def slow_call() -> None:
                results.append(await client.call_tool("alpha__slow", {"seconds": 30, "steps": 0}))

            tasks.start_soon(slow_call)
            await wait_until(lambda: calls_received(record, "slow"), 10, "slow call forwarded")
            process.send_signal(signal.SIGTERM)
        exit_status = await anyio.to_thread.run_sync(process.wait, PROCESS_WAIT_SECONDS)
    log = (tmp_path / "gateway.log").read_text()

    assert exit_status == 0
    assert results[0].is_error is True
    assert results[0].content[0].text.startswith("mcp-guard is stopping, so this call was stopped")
    assert "Exception in ASGI application" not in log


@pytest.mark.parametrize("progress", [False, True], ids=["direct lane", "through the SDK"])
async def test_sigterm_answers_stdio_call(tmp_path: Path, progress: bool) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha", record=record)})
    slow = {"name": "alpha__slow", "arguments": {"seconds": 60, "steps": 0}}

    async with raw_stdio_gateway(policy) as gateway:
        # The direct lane opens once the SDK has served a tool request. A call asking for progress
        # stays on the SDK's path.
        await gateway.call("alpha__echo", {"text": "first"})
        request_id = await gateway.send_request("tools/call", slow, progress=progress)
        await wait_until(lambda: calls_received(record, "slow"), 10, "slow call forwarded")
        gateway.process.send_signal(signal.SIGTERM)
        response = await gateway.response(request_id)
    calls = await read_trail(tmp_path / "state")

    assert response["result"]["isError"] is True
    assert response["result"]["content"][0]["text"].startswith(
        "mcp-guard is stopping, so this call was stopped"
    )
    [stopped] = [call for call in calls if call.intent.tool == "slow"]
    assert stopped.outcome is not None
    assert stopped.outcome.outcome == "gateway_shutdown"


async def legacy_http_session(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """Complete a 2025-11-25 handshake over HTTP and return the headers later requests need."""
    params = {
        "protocolVersion": LEGACY_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    }
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    response = await http.post(url, json=initialize, headers=HTTP_HEADERS)
    response.raise_for_status()
    headers = {
        **HTTP_HEADERS,
        "Mcp-Session-Id": response.headers["mcp-session-id"],
        "MCP-Protocol-Version": LEGACY_VERSION,
    }
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    (await http.post(url, json=initialized, headers=headers)).raise_for_status()
    return headers


async def post_until_disconnected(
    http: httpx2.AsyncClient, url: str, message: dict[str, Any], headers: dict[str, str]
) -> None:
    """Send a request whose response the test ignores, because the gateway may drop the connection."""
    with suppress(httpx2.TransportError):
        await http.post(url, json=message, headers=headers)


# SIGKILL in the middle of many calls ----------------------------------------------------------

SIGKILL_CALLS = 500
# Responses read before the kill, and requests in flight at once.
SIGKILL_AFTER_RESPONSES = 200
SIGKILL_WINDOW = 16


@pytest.mark.attack("unaudited call", attempts=SIGKILL_CALLS)
async def test_sigkill_loses_no_intent(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha", record=record)})
    state_dir = tmp_path / "state"
    texts = [f"call {number:03d}" for number in range(SIGKILL_CALLS)]

    async with raw_stdio_gateway(policy, log=tmp_path / "gateway.log") as gateway:
        # A call still running at the kill, so at least one intent is left without an outcome.
        await gateway.send_request(
            "tools/call", {"name": "alpha__slow", "arguments": {"seconds": 60, "steps": 0}}
        )
        await wait_until(lambda: calls_received(record, "slow"), 10, "slow call forwarded")
        fixture_processes = descendants(gateway.process.pid)
        responded = await call_until_killed(gateway, texts)
    await reap(fixture_processes)
    before = {call.intent.call_id: call for call in await read_trail(state_dir)}
    async with stdio_gateway(policy) as client:
        await client.list_tools()
    verify = await audit_command(policy, "verify")
    after = await read_trail(state_dir)
    kinds = await row_kinds(state_dir)

    forwarded = {event["arguments"]["text"] for event in calls_received(record, "echo")}
    echo_calls = {
        call.intent.arguments["text"]: call for call in before.values() if call.intent.tool == "echo"
    }
    finished = {text for text, call in echo_calls.items() if call.outcome is not None}
    unfinished = {call_id for call_id, call in before.items() if call.outcome is None}
    assert len(responded) == SIGKILL_AFTER_RESPONSES
    assert len(forwarded) < SIGKILL_CALLS, "the kill came after every call had been forwarded"
    assert forwarded - echo_calls.keys() == set(), "forwarded without an intent row"
    assert set(responded) - finished == set(), "responded without an outcome row"
    assert unfinished, "no call was running at the kill"
    assert verify.returncode == 0, verify.stderr.decode()
    assert {call.intent.call_id: call.intent_row_id for call in after} == {
        call_id: call.intent_row_id for call_id, call in before.items()
    }
    assert [call_id for call_id in before if kinds[call_id] != ["intent", "outcome"]] == []
    for call in after:
        assert call.outcome is not None
        if call.intent.call_id in unfinished:
            assert call.outcome.outcome == "gateway_shutdown", call.intent.arguments


async def call_until_killed(gateway: RawStdioClient, texts: Sequence[str]) -> list[str]:
    """Call echo with each text, a few calls at a time, and SIGKILL the gateway part way through.

    Returns:
        The texts whose responses arrived before the kill.
    """
    responded: list[str] = []
    waiting: dict[int, str] = {}
    slots = anyio.Semaphore(SIGKILL_WINDOW)

    async def send_calls() -> None:
        for request_id, text in enumerate(texts, start=1000):
            await slots.acquire()
            # Registered before it is sent, so the reader knows the response whenever it comes.
            waiting[request_id] = text
            params = {"name": "alpha__echo", "arguments": {"text": text}}
            await gateway.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})

    async def read_responses() -> None:
        while len(responded) < SIGKILL_AFTER_RESPONSES:
            message = await gateway.read_message()
            text = waiting.pop(message.get("id", -1), None)
            if text is not None:
                assert message["result"]["content"][0]["text"] == text
                responded.append(text)
                slots.release()
        gateway.process.kill()
        tasks.cancel_scope.cancel()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send_calls)
        tasks.start_soon(read_responses)
    return responded


async def reap(processes: Sequence[psutil.Process]) -> None:
    """Wait for processes this test started to exit, and kill those still running after the wait.

    The fixture server exits on its own once its stdin, a pipe from the killed gateway, closes.
    """
    _stopped, running = await anyio.to_thread.run_sync(
        lambda: psutil.wait_procs(processes, timeout=PROCESS_WAIT_SECONDS)
    )
    for process in running:
        process.kill()


# Secrets -------------------------------------------------------------------------------------

# Fake credentials in formats the redactor detects. Each maps to the part that must never be
# stored or logged, while the rest (a URL's host, the word "Bearer") may stay.
FAKE_AWS_KEY_ID = "AKIA" + "TESTTESTTESTTEST"
FAKE_GITHUB_TOKEN = "ghp_" + "T3stT0ken" * 4
FAKE_SLACK_TOKEN = "xoxb-" + "1111111111-2222222222-" + "T3stT3stT3st" * 2
# Header {"alg":"HS256"}, payload {"sub":"canary"}, signature "fake-signature", all base64url.
FAKE_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.ZmFrZS1zaWduYXR1cmU"
FAKE_KEY_BODY = "VEVTVC1QUklWQVRFLUtFWS1OT1QtUkVBTA" * 2
FAKE_URL_PASSWORD = "T3st-url-passw0rd"
FAKE_BEARER = "T3st-bearer-t0ken-not-real"
FAKE_NESTED_PASSWORD = "T3st-nested-passw0rd"
CANARIES = {
    FAKE_AWS_KEY_ID: FAKE_AWS_KEY_ID,
    FAKE_GITHUB_TOKEN: FAKE_GITHUB_TOKEN,
    FAKE_SLACK_TOKEN: FAKE_SLACK_TOKEN,
    FAKE_JWT: FAKE_JWT,
    f"-----BEGIN PRIVATE KEY-----\n{FAKE_KEY_BODY}\n-----END PRIVATE KEY-----": FAKE_KEY_BODY,
    f"https://deploy:{FAKE_URL_PASSWORD}@git.example.test/repo.git": FAKE_URL_PASSWORD,
    f"Authorization: Bearer {FAKE_BEARER}": FAKE_BEARER,
}
SECRETS = [*CANARIES.values(), FAKE_NESTED_PASSWORD]
ALL_CANARIES = "\n".join(["the canaries follow", *CANARIES])


@pytest.mark.attack("secret in audit trail or logs", attempts=len(SECRETS))
async def test_secrets_never_stored_or_logged(tmp_path: Path) -> None:
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha", record=record)}, rules=RULES)
    state_dir, log = tmp_path / "state", tmp_path / "gateway.log"
    nested = {
        "label": f"deploy with {FAKE_GITHUB_TOKEN}",
        "target": {"path": "/srv/app"},
        "database": {"user": "app", "password": FAKE_NESTED_PASSWORD},
    }

    async with raw_stdio_gateway(policy, log=log) as gateway:
        echo = await gateway.call("alpha__echo", {"text": ALL_CANARIES})
        applied = await gateway.call("alpha__nested", {"config": nested})
        tool_error = await gateway.call("alpha__fail_tool", {"message": ALL_CANARIES})
        rejected = await gateway.call("alpha__fail_protocol", {"message": ALL_CANARIES})
        unknown = await gateway.call(UNKNOWN_TOOL, {"text": ALL_CANARIES})
        # A constraint violation quotes the value in its reason, which is stored and logged.
        denials = [await gateway.call("alpha__search", {"query": canary}) for canary in CANARIES]
        while_running = state_files(state_dir)
    export = await audit_command(policy, "export")
    calls = await read_trail(state_dir)
    sources = {
        "state directory while running": while_running,
        "state directory after stop": state_files(state_dir),
        "gateway stderr": log.read_bytes(),
        "audit export": export.stdout,
    }

    assert echo["result"]["content"][0]["text"] == ALL_CANARIES
    assert FAKE_GITHUB_TOKEN in applied["result"]["content"][0]["text"]
    assert tool_error["result"]["isError"] is True
    assert "error" in rejected
    assert "error" in unknown
    assert all(denial["result"]["isError"] for denial in denials)
    assert calls_received(record, "search") == []
    assert [secret for secret in SECRETS if secret.encode() not in record.read_bytes()] == []
    assert export.returncode == 0, export.stderr.decode()
    assert len(calls) == 5 + len(CANARIES)
    assert "[REDACTED:" in json.dumps(by_tool(calls, "echo")[0].intent.arguments)
    assert b"[REDACTED:" in while_running
    leaks = [
        (source, secret) for source, data in sources.items() for secret in SECRETS if secret.encode() in data
    ]
    assert leaks == []


def state_files(state_dir: Path) -> bytes:
    """Return the bytes of every file in the state directory: databases, their WAL, key and head."""
    return b"".join(path.read_bytes() for path in sorted(state_dir.rglob("*")) if path.is_file())


# An audit database the gateway cannot write -------------------------------------------------

# Root bypasses file modes through CAP_DAC_OVERRIDE and CAP_FOWNER, so under root a read-only
# database file stays writable to the gateway. So under root the gateway runs through `setpriv`
# with those capabilities dropped from its bounding set. Then the file mode binds it as it binds
# any other user, and SQLite's writes really fail. A read-only file is what operators meet in
# practice (a wrong owner, a read-only mount), which a directory in the file's place is not.
DROP_FILE_MODE_OVERRIDES = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


@pytest.mark.parametrize("on_failure", ["deny", "proceed"])
@pytest.mark.attack("unaudited call", params={"on_failure": "deny"})
async def test_unwritable_trail(tmp_path: Path, on_failure: str) -> None:
    record = tmp_path / "alpha.jsonl"
    servers = {"alpha": fixture_server("alpha", record=record)}
    policy = write_policy(tmp_path, servers, audit={"on_failure": on_failure})
    state_dir, log = tmp_path / "state", tmp_path / "gateway.log"
    prefix = DROP_FILE_MODE_OVERRIDES if os.geteuid() == 0 else []
    if prefix and shutil.which(prefix[0]) is None:
        pytest.skip("running as root without setpriv, so file modes cannot be enforced")
    async with SqliteAuditStore.in_state_dir(state_dir):
        pass  # creates the key and an empty trail
    database = state_dir / "audit.sqlite3"
    database.chmod(0o400)

    async with raw_stdio_gateway(policy, log=log, prefix=prefix) as gateway:
        response = await gateway.call("alpha__echo", {"text": "unaudited"})
    calls = await read_trail(state_dir)
    events = log_events(log)

    assert calls == []
    if on_failure == "deny":
        assert response["result"]["isError"] is True
        assert response["result"]["content"][0]["text"].startswith("The audit trail cannot be written")
        assert calls_received(record) == []
        assert "call_denied_audit_unavailable" in events
    else:
        assert response["result"].get("isError") is not True
        assert response["result"]["content"][0]["text"] == "unaudited"
        assert [event["arguments"] for event in calls_received(record)] == [{"text": "unaudited"}]
        assert "call_not_audited" in events


# Verification after an edit -----------------------------------------------------------------


@pytest.mark.attack("audit row tampering")
async def test_verify_detects_edited_row(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})
    state_dir = tmp_path / "state"
    async with stdio_gateway(policy) as client:
        for text in ("first", "second", "third"):
            await client.call_tool("alpha__echo", {"text": text})
    intact = await audit_command(policy, "verify")
    edited = (await read_trail(state_dir))[1]

    with closing(sqlite3.connect(state_dir / "audit.sqlite3")) as database, database:
        database.execute(
            "UPDATE audit_rows SET arguments = ? WHERE id = ?", ('{"text":"forged"}', edited.intent_row_id)
        )
    broken = await audit_command(policy, "verify")
    async with SqliteAuditStore.in_state_dir(state_dir, read_only=True) as store:
        result = await store.verify()

    assert intact.returncode == 0, intact.stderr.decode()
    assert edited.intent.arguments == {"text": "second"}
    assert broken.returncode == 2
    assert isinstance(result, ChainBroken)
    assert result.row_id == edited.intent_row_id


@pytest.mark.attack("secret in audit trail or logs")
async def test_secret_at_preview_edge_redacted(tmp_path: Path) -> None:
    # A result whose secret straddles the stored preview length must be redacted before it is cut,
    # or the cut leaves a prefix that no redaction pattern matches.
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})
    text = "x" * 490 + " " + FAKE_AWS_KEY_ID

    async with stdio_gateway(policy) as client:
        echoed = await client.call_tool("alpha__echo", {"text": text})
    stored = state_files(tmp_path / "state")

    assert echoed.content[0].text == text
    assert FAKE_AWS_KEY_ID[:8].encode() not in stored


@pytest.mark.legitimate("audit row deletion or reordering")
async def test_retention_applied_at_start(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, audit={"max_rows": 2})

    for text in ("one", "two", "three"):
        async with stdio_gateway(policy) as client:
            await client.call_tool("alpha__echo", {"text": text})
    kept = await read_trail(tmp_path / "state")
    verify = await audit_command(policy, "verify")

    assert len(kept) <= 2
    assert [call.intent.arguments for call in kept][-1] == {"text": "three"}
    assert verify.returncode == 0, verify.stderr.decode()


@pytest.mark.attack("unaudited call")
async def test_second_gateway_on_same_state(tmp_path: Path) -> None:
    # Two client apps may run the same policy at once. The second gateway cannot write the first
    # one's trail, so it denies calls, names the first one and how to give it its own state.
    record = tmp_path / "alpha.jsonl"
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha", record=record)}, audit={"max_rows": 100}
    )
    own_state = tmp_path / "second-state"

    async with raw_stdio_gateway(policy, log=tmp_path / "first.log") as first:
        await first.call("alpha__echo", {"text": "first"})
        async with stdio_gateway(policy) as second:
            denied = await second.call_tool("alpha__echo", {"text": "second"})
        async with stdio_gateway(policy, env={"MCP_GUARD_STATE_DIR": str(own_state)}) as separate:
            allowed = await separate.call_tool("alpha__echo", {"text": "separate"})
        first_pid = first.process.pid

    message = denied.content[0].text
    assert denied.is_error is True
    assert f"another process (PID {first_pid}) is writing" in message
    assert "$MCP_GUARD_STATE_DIR" in message
    assert "on_failure" not in message
    assert [event["arguments"]["text"] for event in calls_received(record)] == ["first", "separate"]
    assert allowed.content[0].text == "separate"
    assert [call.intent.arguments for call in await read_trail(own_state)] == [{"text": "separate"}]


async def test_uncreatable_state_stops_start(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state directory's parent should be")
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")}, {"state_dir": str(blocker / "state")})

    completed = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy)], cwd=ROOT, check=False
    )

    stderr = completed.stderr.decode()
    assert completed.returncode == 1
    assert "The gateway did not start: the audit trail cannot be used (cannot create the audit key" in stderr
    assert "Make the state directory writable" in stderr
    assert "the call was denied" not in stderr
    assert "on_failure" not in stderr


@pytest.mark.attack("hidden tool probing", attempts=3)
async def test_hidden_name_recorded_by_tool(tmp_path: Path) -> None:
    servers = {"alpha": fixture_server("alpha"), "ghost": {"command": str(tmp_path / "no-such-server")}}
    rules = [
        {**RULES[0], "name": "reads", "tools": ["echo"]},
        {
            "name": "no deletes",
            "clients": ["*"],
            "server": "alpha",
            "tools": ["delete_record"],
            "decision": "deny",
        },
    ]
    policy = write_policy(tmp_path, servers, rules=rules)

    async with stdio_gateway(policy) as client:
        for name in ("alpha__delete_record", "ghost__lookup", "nothing__here"):
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool(name, {})
    calls = await read_trail(tmp_path / "state")

    recorded = [(call.intent.server, call.intent.tool, call.intent.rule) for call in calls]
    details = [call.outcome.detail if call.outcome else None for call in calls]
    assert recorded == [
        ("alpha", "delete_record", "no deletes"),
        ("ghost", "lookup", None),
        ("", "nothing__here", None),
    ]
    assert details == [
        "the tool is hidden from the client by rule 'no deletes'",
        "server 'ghost' is not available, so it lists no tools",
        "no tool with this name is visible to the client",
    ]


@pytest.mark.attack("hidden tool probing")
async def test_unavailable_server_named_only_to_granted_clients(tmp_path: Path) -> None:
    # The stdio client "agent" may call ghost's tools; "other" may not, so it learns nothing more.
    servers = {"alpha": fixture_server("alpha"), "ghost": {"command": str(tmp_path / "no-such-server")}}
    rules = [
        {
            "name": "agent uses ghost",
            "clients": ["agent"],
            "server": "ghost",
            "tools": ["*"],
            "decision": "auto",
            "write": True,
        }
    ]
    messages: dict[str, str] = {}
    for client_name in ("agent", "other"):
        folder = tmp_path / client_name
        folder.mkdir()
        clients: dict[str, dict[str, Any]] = {"agent": {}, "other": {}}
        policy = write_policy(folder, servers, {"default_client": client_name}, rules=rules, clients=clients)
        async with stdio_gateway(policy) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("ghost__lookup", {})
        messages[client_name] = raised.value.error.message

    assert messages["agent"] == (
        "Unknown tool: 'ghost__lookup'. Server 'ghost' is not available, so its tools cannot be called now; "
        "the gateway's log says why"
    )
    assert messages["other"] == "Unknown tool: 'ghost__lookup'"


async def test_missing_key_beside_trail_stops_start(tmp_path: Path) -> None:
    # A client that starts the gateway without the variable that contains the key: no new key is made.
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})
    async with stdio_gateway(policy) as client:
        await client.call_tool("alpha__echo", {"text": "recorded"})
    key = tmp_path / "state" / "audit.key"
    key.unlink()
    environment = {name: value for name, value in os.environ.items() if name != "MCP_GUARD_AUDIT_KEY"}

    completed = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy)],
        cwd=ROOT,
        check=False,
        env=environment,
        stdin=subprocess.DEVNULL,
    )

    stderr = completed.stderr.decode()
    assert completed.returncode == 1
    assert (
        f"The gateway did not start: the audit trail cannot be used (the audit key is missing: no file {key} "
        f"and $MCP_GUARD_AUDIT_KEY is not set, though {tmp_path / 'state' / 'audit.sqlite3'} contains a "
        "trail). Give the gateway the key that wrote the trail"
    ) in stderr
    assert not key.exists()
