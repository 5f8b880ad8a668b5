"""A downstream server that crashes, hangs, misbehaves or never starts does not take the others down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest
import structlog
from mcp.shared.exceptions import MCPError
from support import (
    ERAS,
    MODERN,
    ROOT,
    descendants,
    fixture_server,
    http_gateway,
    raw_stdio_gateway,
    stdio_gateway,
    stop_process,
    wait_until,
    wait_until_visible,
    write_policy,
)

from mcp_guard.config.models import StdioServerConfig
from mcp_guard.downstream.connection import DownstreamConnection

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ERAS)
async def test_crash_fails_only_that_call(tmp_path: Path, mode: str) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha"), "beta": fixture_server("beta")})

    async with stdio_gateway(policy, mode) as client, anyio.create_task_group() as tasks:
        # Warm both paths first, so the timing below measures only how fast a crash is noticed.
        await client.call_tool("alpha__echo", {"text": "warm"})
        await client.call_tool("beta__echo", {"text": "warm"})
        beta_results = []

        async def busy_beta() -> None:
            beta_results.append(await client.call_tool("beta__slow", {"seconds": 1.5, "steps": 1}))

        tasks.start_soon(busy_beta)
        started = time.monotonic()
        crashed = await client.call_tool("alpha__crash", {"after_seconds": 0.3})
        crash_seconds = time.monotonic() - started - 0.3
        after_crash = await client.call_tool("beta__echo", {"text": "still here"})

        async def alpha_back() -> bool:
            result = await client.call_tool("alpha__echo", {"text": "back"})
            return not result.is_error

        recovered = False
        with anyio.move_on_after(10):
            for _attempt in range(100):
                recovered = await alpha_back()
                if recovered:
                    break
                await anyio.sleep(0.2)

    assert crashed.is_error is True
    assert "'alpha'" in crashed.content[0].text
    assert crash_seconds < 1.0
    assert after_crash.content[0].text == "still here"
    assert beta_results[0].content[0].text == "done after 1 steps"
    assert recovered


async def test_unstartable_server_named_others_serve(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path,
        {"broken": {"command": "/nonexistent/mcp-server"}, "alpha": fixture_server("alpha")},
    )

    check = await anyio.run_process(
        [sys.executable, "-m", "mcp_guard", "check", str(policy)], check=False, cwd=Path(__file__).parents[2]
    )
    async with stdio_gateway(policy) as client:
        result = await client.call_tool("alpha__echo", {"text": "ok"})
        tools = await client.list_tools()

    output = check.stdout.decode()
    assert check.returncode == 1
    assert "[broken] NOT AVAILABLE" in output
    assert "/nonexistent/mcp-server" in output
    assert "[alpha] ready" in output
    assert result.content[0].text == "ok"
    assert all(not tool.name.startswith("broken__") for tool in tools.tools)


async def test_hanging_server_times_out(tmp_path: Path) -> None:
    hang = {
        "command": sys.executable,
        "args": ["-c", "import time; time.sleep(600)"],
        "startup_timeout_seconds": 1,
    }
    policy = write_policy(tmp_path, {"hang": hang, "alpha": fixture_server("alpha")})

    started = time.monotonic()
    async with stdio_gateway(policy) as client:
        result = await client.call_tool("alpha__echo", {"text": "ok"})
    elapsed = time.monotonic() - started

    assert result.content[0].text == "ok"
    # Far below the 600 s the server hangs and the 30 s default start-up timeout, with room for a
    # busy machine: the bound separates a 1 s start-up timeout from a wait for the hanging server.
    assert elapsed < 20


async def test_slow_server_joins_after_the_gateway_answers(tmp_path: Path) -> None:
    # The slow server sleeps 6 s before it starts; the gateway waits 0.5 s, then serves.
    fixture = fixture_server("slow")
    slow = {
        "command": "/bin/sh",
        "args": ["-c", 'sleep 6; exec "$0" "$@"', fixture["command"], *fixture["args"]],
    }
    policy = write_policy(
        tmp_path, {"slow": slow, "alpha": fixture_server("alpha")}, {"startup_wait_seconds": 0.5}
    )

    async with stdio_gateway(policy) as client:
        await wait_until_visible(client, "alpha__echo", seconds=30)
        first = {tool.name for tool in (await client.list_tools()).tools}
        with pytest.raises(MCPError) as early:
            await client.call_tool("slow__echo", {"text": "early"})
        await wait_until_visible(client, "slow__echo", seconds=30)
        late = await client.call_tool("slow__echo", {"text": "late"})

    # The client was served while the slow server still slept.
    assert "slow__echo" not in first
    assert "Server 'slow' is still starting, so its tools cannot be called yet" in early.value.error.message
    assert late.content[0].text == "late"


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.attack("downstream stdout pollution")
async def test_banner_on_stdout_tolerated(tmp_path: Path, mode: str) -> None:
    policy = write_policy(tmp_path, {"noisy": fixture_server("noisy", "--banner", "Welcome to noisy v1!")})

    async with stdio_gateway(policy, mode) as client:
        result = await client.call_tool("noisy__echo", {"text": "works"})

    assert result.content[0].text == "works"


@pytest.mark.attack("downstream reads gateway secrets", attempts=2)
async def test_server_env_on_safe_base(tmp_path: Path) -> None:
    server = fixture_server("alpha") | {
        "env": {"GREETING": "hello"},
        "env_from": {"API_KEY": "${MCP_GUARD_TEST_KEY}"},
    }
    policy = write_policy(tmp_path, {"alpha": server})
    env = {"MCP_GUARD_TEST_KEY": "k-123", "GATEWAY_ONLY_SETTING": "private", "PATH": os.environ["PATH"]}

    async with stdio_gateway(policy, env=env) as client:
        values = {
            name: (await client.call_tool("alpha__env", {"name": name})).content[0].text
            for name in ("API_KEY", "GREETING", "GATEWAY_ONLY_SETTING", "MCP_GUARD_TEST_KEY")
        }
        python = await client.call_tool("alpha__path_has", {"program": "python3"})
        npx = await client.call_tool("alpha__path_has", {"program": "npx"})

    assert values["API_KEY"] == "k-123"
    assert values["GREETING"] == "hello"
    assert values["GATEWAY_ONLY_SETTING"] == "<unset>"
    assert values["MCP_GUARD_TEST_KEY"] == "<unset>"
    assert python.content[0].text == "yes"
    assert npx.content[0].text == "yes"


async def test_stdio_shutdown_leaves_no_children(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha"), "beta": fixture_server("beta")})

    async with stdio_gateway(policy) as client:
        await client.call_tool("alpha__echo", {"text": "x"})
        spawned = descendants(os.getpid())
    await wait_until(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in spawned), 10
    )

    assert len(spawned) >= 3  # the gateway and its two servers


async def test_http_shutdown_leaves_no_children(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    with http_gateway(policy, tmp_path) as (process, url):
        from mcp import Client

        async with Client(url, mode=MODERN) as client:
            await client.call_tool("alpha__echo", {"text": "x"})
        children = descendants(process.pid)
        stop_process(process)
    await wait_until(lambda: not any(child.is_running() for child in children), 10)

    assert process.returncode == 0
    assert len(children) >= 1


def test_client_gone_stops_everything(tmp_path: Path) -> None:
    from support import gateway_command

    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha"), "beta": fixture_server("beta")})
    process = subprocess.Popen(
        gateway_command(policy), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while len(descendants(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        children = descendants(process.pid)
        assert process.stdin is not None
        process.stdin.close()  # what a client's exit or crash looks like to a stdio gateway
        process.wait(timeout=15)
    finally:
        stop_process(process)

    assert len(children) == 2
    assert process.returncode == 0
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


async def test_crash_logged_with_status_and_stderr(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    async with raw_stdio_gateway(policy, log=log) as gateway:
        await gateway.call("alpha__crash", {"after_seconds": 0})
        await wait_until(lambda: "downstream_exited" in log.read_text(), 10, "exit logged")
    lines = log.read_text().splitlines()

    exited = next(json.loads(line) for line in lines if '"downstream_exited"' in line)
    assert exited["server"] == "alpha"
    assert exited["exit_status"] == 3
    assert "crash tool called: exiting with status 3" in exited["last_stderr_line"]
    assert any(line.startswith("[alpha] WARNING") and "crash tool called" in line for line in lines)


async def test_server_without_its_variable_is_not_retried() -> None:
    # The gateway's environment does not change while it runs, so restarting cannot help.
    config = StdioServerConfig(
        command=sys.executable, args=["-c", "pass"], env_from={"TOKEN": "${UNSET_VAR}"}
    )
    connection = DownstreamConnection("beta", config, environ={})

    with structlog.testing.capture_logs() as events:
        async with anyio.create_task_group() as tasks:
            await tasks.start(connection.run)
            await anyio.sleep(1.5)
            tasks.cancel_scope.cancel()

    names = [event["event"] for event in events]
    assert names.count("downstream_not_started") == 1
    assert "downstream_reconnecting" not in names
    assert connection.last_error is not None
    assert "environment variable UNSET_VAR, which is not set" in connection.last_error


async def test_signal_during_start_stops_the_servers(tmp_path: Path) -> None:
    # A server that never responds keeps the gateway in its start. SIGTERM then must not leave
    # the server behind, although it runs in a session of its own.
    silent = {
        "command": sys.executable,
        "args": ["-c", "import time; time.sleep(120)"],
        "startup_timeout_seconds": 60,
    }
    policy = write_policy(tmp_path, {"silent": silent})
    process = await anyio.open_process(
        [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers: list[psutil.Process] = []
    try:
        await wait_until(lambda: bool(descendants(process.pid)), message="the server started")
        servers = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            exit_code = await process.wait()
        await wait_until(lambda: not any(_alive(server) for server in servers), message="the server stopped")
    finally:
        for server in servers:
            if _alive(server):
                server.kill()
        if process.returncode is None:
            process.kill()
        await process.aclose()

    assert exit_code == 0


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
