"""The gateway over streamable HTTP, and HTTP downstream servers behind it."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx2
import pytest
from fixtures.fixture_server import big_text
from mcp import Client
from support import (
    ERAS,
    HTTP_HEADERS,
    INITIALIZE,
    LEGACY,
    MODERN,
    ROOT,
    fixture_server,
    gateway_command,
    http_fixture,
    http_gateway,
    stdio_gateway,
    write_policy,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.legitimate("DNS rebinding")
async def test_http_gateway_both_eras(tmp_path: Path, mode: str) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    with http_gateway(policy, tmp_path) as (_process, url):
        async with Client(url, mode=mode) as client:
            tools = await client.list_tools()
            echo = await client.call_tool("alpha__echo", {"text": "über http"})
            version = client.protocol_version

    assert version == ("2025-11-25" if mode == LEGACY else MODERN)
    assert "alpha__echo" in {tool.name for tool in tools.tools}
    assert echo.content[0].text == "über http"


async def test_port_in_use_reported_plainly(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = gateway_command(policy, "--transport", "http", "--port", str(port))
        completed = await anyio.run_process(command, cwd=ROOT, check=False)

    stderr = completed.stderr.decode()
    assert completed.returncode == 1
    assert f"Cannot listen on 127.0.0.1 port {port}: another process uses this port" in stderr
    assert "Traceback" not in stderr
    assert "downstream_ready" not in stderr


@pytest.mark.attack("DNS rebinding")
async def test_foreign_host_header_rejected(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"alpha": fixture_server("alpha")})

    with http_gateway(policy, tmp_path) as (_process, url):
        async with httpx2.AsyncClient() as http:
            foreign = await http.post(
                url, json=INITIALIZE, headers={**HTTP_HEADERS, "Host": "attacker.example:80"}
            )
            local = await http.post(url, json=INITIALIZE, headers=HTTP_HEADERS)

    assert foreign.status_code == 421
    assert local.status_code == 200


@pytest.mark.attack("oversized or pathological input")
async def test_oversized_body_rejected(tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path, {"alpha": fixture_server("alpha")}, {"http": {"max_request_body_bytes": 4096}}
    )
    oversized = {**INITIALIZE, "params": {**INITIALIZE["params"], "padding": "x" * 10_000}}

    with http_gateway(policy, tmp_path) as (process, url):
        async with httpx2.AsyncClient() as http:
            response = await http.post(url, json=oversized, headers=HTTP_HEADERS)
        still_running = process.poll() is None

    assert response.status_code == 413
    assert still_running


@pytest.mark.parametrize("downstream_mode", ["legacy", "auto"])
@pytest.mark.parametrize("mode", ERAS)
async def test_http_downstream_behind_stdio(tmp_path: Path, mode: str, downstream_mode: str) -> None:
    with http_fixture(tmp_path, "remote") as remote_url:
        policy = write_policy(tmp_path, {"remote": {"url": remote_url, "protocol": downstream_mode}})
        async with stdio_gateway(policy, mode) as client:
            echo = await client.call_tool("remote__echo", {"text": "via http"})
            big = await client.call_tool("remote__big", {"megabytes": 5})

    assert echo.content[0].text == "via http"
    assert big.content[0].text == big_text(5)
