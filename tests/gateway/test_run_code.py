"""run_code in a running gateway: granted like any tool, limited, approved, audited and contained.

The gateway is a real process with the local (bubblewrap) backend, in front of
the fixture server. The clients are the SDK client over stdio and over HTTP.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from support import LEGACY, fixture_server, http_gateway, stdio_gateway, wait_until, write_policy

from mcp_guard.audit import CallFilter, CallRecord, SqliteAuditStore

pytestmark = pytest.mark.anyio

RUN_CODE_RULE = {
    "name": "agents may run code",
    "clients": ["*"],
    "server": "sandbox",
    "tools": ["run_code"],
    "decision": "auto",
    "write": True,
}
ECHO_RULE = {"name": "echo", "clients": ["*"], "server": "alpha", "tools": ["echo"], "decision": "auto"}
SANDBOX = {"backend": "local", "timeout_seconds": 3.0, "max_output_bytes": 4096}


def code_policy(folder: Path, *rules: dict[str, Any], **sandbox: Any) -> Path:
    return write_policy(
        folder,
        {"alpha": {**fixture_server("alpha"), "read_only_tools": ["echo"]}},
        rules=list(rules) or [RUN_CODE_RULE, ECHO_RULE],
        sandbox={**SANDBOX, **sandbox},
    )


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def read_trail(state_dir: Path) -> list[CallRecord]:
    async with SqliteAuditStore.in_state_dir(state_dir, read_only=True) as store:
        return await store.search(CallFilter(), limit=1000, oldest_first=True)


async def tool_names(client: Client) -> list[str]:
    return [tool.name for tool in (await client.list_tools()).tools]


@pytest.mark.legitimate("call no rule grants")
async def test_run_code_returns_structured_output(tmp_path: Path) -> None:
    async with stdio_gateway(code_policy(tmp_path)) as client:
        result = await client.call_tool("run_code", {"language": "python", "code": "print('hi')\n6 * 7"})

    assert result.is_error is False
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "hi\n"
    assert result.structured_content["value"] == "42"
    assert "value:\n42" in text_of(result)


@pytest.mark.attack("hidden tool probing")
async def test_run_code_hidden_without_rule(tmp_path: Path) -> None:
    async with stdio_gateway(code_policy(tmp_path, ECHO_RULE)) as client:
        names = await tool_names(client)
        with pytest.raises(Exception, match="Unknown tool"):
            await client.call_tool("run_code", {"language": "python", "code": "1"})

    assert names == ["alpha__echo"]


@pytest.mark.attack("call no rule grants")
async def test_run_code_needs_write_rule(tmp_path: Path) -> None:
    read_only = {**RUN_CODE_RULE, "write": False}

    async with stdio_gateway(code_policy(tmp_path, read_only, ECHO_RULE)) as client:
        names = await tool_names(client)

    assert "run_code" not in names


@pytest.mark.attack("argument constraint evasion")
async def test_run_code_argument_rules_apply(tmp_path: Path) -> None:
    fenced = {**RUN_CODE_RULE, "arguments": {"code": {"never_contains": "import socket"}}}

    async with stdio_gateway(code_policy(tmp_path, fenced)) as client:
        refused = await client.call_tool("run_code", {"language": "python", "code": "import socket"})
        allowed = await client.call_tool("run_code", {"language": "python", "code": "1 + 1"})

    assert refused.is_error is True
    assert "Denied by mcp-guard" in text_of(refused)
    assert allowed.is_error is False


@pytest.mark.attack("unaudited call", attempts=2)
async def test_run_code_audited_with_code(tmp_path: Path) -> None:
    async with stdio_gateway(code_policy(tmp_path)) as client:
        await client.call_tool("run_code", {"language": "python", "code": "print('audited')"})
        await client.call_tool("run_code", {"language": "python", "code": "1 / 0"})

    trail = await read_trail(tmp_path / "state")
    assert [(call.intent.server, call.intent.tool) for call in trail] == [("sandbox", "run_code")] * 2
    assert trail[0].intent.arguments == {"language": "python", "code": "print('audited')"}
    assert [call.outcome.outcome for call in trail if call.outcome] == ["succeeded", "tool_error"]
    details = [call.outcome.detail or "" for call in trail if call.outcome]
    assert re.fullmatch(r"local sandbox, python, \d+\.\d{3} s, exit code 0", details[0])
    assert re.fullmatch(r"local sandbox, python, \d+\.\d{3} s, exit code 1", details[1])


@pytest.mark.attack("sandbox reads gateway secrets")
async def test_run_code_gateway_environment_hidden(tmp_path: Path) -> None:
    canary = f"canary-{uuid.uuid4().hex}"

    async with stdio_gateway(code_policy(tmp_path), env={"MCP_GUARD_CANARY": canary}) as client:
        result = await client.call_tool("run_code", {"language": "shell", "code": "env; cat /proc/*/environ"})

    assert result.structured_content is not None
    assert canary not in result.structured_content["stdout"]
    assert "PATH=" in result.structured_content["stdout"]


@pytest.mark.attack("sandbox reads the client's protocol stream")
async def test_run_code_stdin_is_not_the_protocol_stream(tmp_path: Path) -> None:
    # Over stdio the gateway's own stdin carries the client's requests; code must not read them.
    read_stdin = {"language": "python", "code": "import os, sys\nos.read(0, 65536)"}

    async with stdio_gateway(code_policy(tmp_path)) as client:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client.call_tool, "run_code", read_stdin)
            echo = await client.call_tool("alpha__echo", {"text": "reaches the gateway"})
        again = await client.call_tool("run_code", read_stdin)

    assert echo.is_error is False
    assert again.structured_content is not None
    assert again.structured_content["value"] == "b''"


@pytest.mark.attack("sandbox resource exhaustion")
async def test_run_code_sleep_blocks_no_calls(tmp_path: Path) -> None:
    echoes: list[float] = []

    async with stdio_gateway(code_policy(tmp_path)) as client:

        async def echo_while_sleeping() -> None:
            await anyio.sleep(0.5)
            start = time.monotonic()
            await client.call_tool("alpha__echo", {"text": "still here"})
            echoes.append(time.monotonic() - start)

        start = time.monotonic()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(echo_while_sleeping)
            stopped = await client.call_tool("run_code", {"language": "shell", "code": "sleep 1000"})
        took = time.monotonic() - start

    assert stopped.structured_content is not None
    assert stopped.structured_content["stopped"] == "timeout"
    assert took < SANDBOX["timeout_seconds"] + 1.5
    assert len(echoes) == 1
    assert echoes[0] < 1.0


@pytest.mark.attack("sandbox resource exhaustion")
async def test_run_code_output_cap_marker(tmp_path: Path) -> None:
    async with stdio_gateway(code_policy(tmp_path)) as client:
        result = await client.call_tool("run_code", {"language": "shell", "code": "yes"})

    assert result.structured_content is not None
    assert result.structured_content["outputCapped"] is True
    assert len(result.structured_content["stdout"]) == SANDBOX["max_output_bytes"]
    assert "output stopped at the 4096-byte cap" in text_of(result)


@pytest.mark.attack("sandbox resource exhaustion")
async def test_run_code_seconds_count_as_cost(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        {},
        rules=[RUN_CODE_RULE],
        sandbox={**SANDBOX, "timeout_seconds": 2.0},
        limits={
            "rules": [{"name": "sandbox budget", "server": "sandbox", "cost_per_hour": 3.5}],
            "costs": [{"server": "sandbox", "tools": ["run_code"], "per_second": 1.0}],
        },
    )
    sleep = {"language": "shell", "code": "sleep 1"}

    async with stdio_gateway(policy) as client:
        results = [await client.call_tool("run_code", sleep) for _ in range(3)]

    # Each run reserves 2 (its time limit) and is charged about 1; the third would pass 3.5.
    assert [result.is_error for result in results] == [False, False, True]
    assert "sandbox budget" in text_of(results[2])


@pytest.mark.attack("call runs after a person denied it")
async def test_run_code_approval_required(tmp_path: Path) -> None:
    approve = {**RUN_CODE_RULE, "decision": "approve"}
    answers = iter(["approve", "decline"])

    async def person(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        if next(answers) == "decline":
            return types.ElicitResult(action="decline")
        schema = params.requested_schema if isinstance(params, types.ElicitRequestFormParams) else {}
        field, spec = next(iter(schema["properties"].items()))
        return types.ElicitResult(action="accept", content={field: spec["enum"][0]})

    async with stdio_gateway(code_policy(tmp_path, approve), elicitation_callback=person) as client:
        approved = await client.call_tool("run_code", {"language": "python", "code": "'ran'"})
        declined = await client.call_tool("run_code", {"language": "python", "code": "'ran again'"})

    assert approved.structured_content is not None
    assert approved.structured_content["value"] == "'ran'"
    assert declined.is_error is True
    assert declined.structured_content is None


@pytest.mark.attack("code run unsandboxed")
async def test_run_code_backend_unavailable_fails_closed(tmp_path: Path) -> None:
    policy = code_policy(tmp_path, local={"bwrap": str(tmp_path / "missing-bwrap")})

    async with stdio_gateway(policy) as client:
        failed = await client.call_tool("run_code", {"language": "python", "code": "print('ran')"})
        echo = await client.call_tool("alpha__echo", {"text": "other tools still work"})

    assert failed.is_error is True
    assert "Nothing was run" in text_of(failed)
    assert "apt-get install bubblewrap" in text_of(failed)
    assert failed.structured_content is None
    assert echo.is_error is False


@pytest.mark.attack("sandbox state leaks between runs")
async def test_run_code_session_files_stay_in_session(tmp_path: Path) -> None:
    policy = code_policy(tmp_path, session_sandboxes=True)
    write = {"language": "python", "code": "open('note.txt', 'w').write('kept')"}
    read = {"language": "python", "code": "import os\nos.path.exists('note.txt')"}

    with http_gateway(policy, tmp_path) as (_, url):
        async with Client(url, mode=LEGACY) as first, Client(url, mode=LEGACY) as second:
            await first.call_tool("run_code", write)
            same_session = await first.call_tool("run_code", read)
            other_session = await second.call_tool("run_code", read)
        # Both clients closed their sessions, so both sandboxes go without waiting to idle.
        log = tmp_path / "gateway.log"
        await wait_until(lambda: log.read_text().count('"reason": "session_ended"') == 2, seconds=15)

    assert same_session.structured_content is not None
    assert same_session.structured_content["value"] == "True"
    assert other_session.structured_content is not None
    assert other_session.structured_content["value"] == "False"


async def test_stopped_run_says_session_files_are_gone(tmp_path: Path) -> None:
    policy = code_policy(tmp_path, session_sandboxes=True)
    write = {"language": "python", "code": "open('note.txt', 'w').write('kept')"}
    flood = {"language": "python", "code": "print('x' * 100_000)"}
    read = {"language": "python", "code": "import os\nos.path.exists('note.txt')"}

    with http_gateway(policy, tmp_path) as (_, url):
        async with Client(url, mode=LEGACY) as client:
            await client.call_tool("run_code", write)
            stopped = await client.call_tool("run_code", flood)
            after = await client.call_tool("run_code", read)

    assert stopped.is_error is True
    assert "Stopped: the output limit ([sandbox] max_output_bytes) was reached" in text_of(stopped)
    assert "the files and variables of its earlier runs are gone" in text_of(stopped)
    assert after.structured_content is not None
    assert after.structured_content["value"] == "False"
    assert "earlier runs are gone" not in text_of(after)


@pytest.mark.attack("sandbox state leaks between runs")
async def test_run_code_each_call_starts_empty(tmp_path: Path) -> None:
    async with stdio_gateway(code_policy(tmp_path)) as client:
        await client.call_tool("run_code", {"language": "python", "code": "open('note.txt', 'w').write('x')"})
        result = await client.call_tool(
            "run_code", {"language": "python", "code": "import os\nos.listdir('.')"}
        )

    assert result.structured_content is not None
    assert result.structured_content["value"] == "[]"
