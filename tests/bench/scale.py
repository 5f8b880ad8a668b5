"""Whether the cost of one call stays flat as servers and clients are added.

Two HTTP gateways run side by side: one in front of one fixture server with one
client, the other in front of 20 fixture servers with 50 more clients holding
open sessions (each listed its tools once). On each, one client makes
sequential `echo` calls, in batches that alternate between the two gateways,
so a slow spell of the machine falls on both. The p50 of each is compared.
Every process is started on 127.0.0.1 by this module and stopped by PID when
the measurement ends.
"""

from __future__ import annotations

import hashlib
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import tomli_w
from mcp import Client
from targets import (
    BENCH_CLIENT,
    FIXTURE_ID,
    GATEWAY_TOOL,
    HOST,
    BenchmarkError,
    HttpTarget,
    ServerProcesses,
    _background_server,
    fixture_command,
    gateway_command,
)

SERVERS = 20
IDLE_CLIENTS = 50
CALLS = 500
WARMUP_CALLS = 100
# Timed calls per batch. The batches of the two gateways alternate.
BATCH_CALLS = 50
# The loaded p50 may be at most this many times the baseline p50.
MAX_RATIO = 1.2
ECHO_TEXT = "hello from the scale benchmark"


@dataclass(frozen=True)
class ScalePoint:
    """The p50 of one client's sequential calls with some servers and idle clients."""

    servers: int
    idle_clients: int
    p50_ms: float


async def measure_scale() -> list[ScalePoint]:
    """Measure the baseline and the loaded gateway together, and return the baseline's point first."""
    setups = ((1, 0), (SERVERS, IDLE_CLIENTS))
    with ExitStack() as processes, tempfile.TemporaryDirectory(prefix="mcp-guard-bench-scale-") as scratch:
        targets = []
        for servers, _ in setups:
            workdir = Path(scratch) / f"servers-{servers}"
            workdir.mkdir()
            api_key = secrets.token_urlsafe(32)
            command = [*gateway_command(_write_policy(workdir, servers, api_key)), "--transport", "http"]
            gateway, port = processes.enter_context(_background_server(command, workdir, "gateway"))
            url = f"http://{HOST}:{port}/mcp"
            targets.append(HttpTarget(url, GATEWAY_TOOL, _processes(gateway), api_key=api_key))
        async with AsyncExitStack() as sessions:
            clients = []
            for target, (_, idle_clients) in zip(targets, setups, strict=True):
                for _ in range(idle_clients):
                    idle = await sessions.enter_async_context(target.connect("legacy"))
                    await idle.client.list_tools()
                clients.append((await sessions.enter_async_context(target.connect("legacy"))).client)
            for client in clients:
                await _time_calls(client, WARMUP_CALLS)
            timings: list[list[float]] = [[] for _ in clients]
            for _ in range(CALLS // BATCH_CALLS):
                for client, measured in zip(clients, timings, strict=True):
                    measured += await _time_calls(client, BATCH_CALLS)
    return [
        ScalePoint(servers, idle_clients, statistics.median(measured) * 1000)
        for (servers, idle_clients), measured in zip(setups, timings, strict=True)
    ]


async def _time_calls(client: Client, calls: int) -> list[float]:
    """Make `calls` sequential `echo` calls and return the seconds each took."""
    timings = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await client.call_tool(GATEWAY_TOOL, {"text": ECHO_TEXT})
        timings.append(time.perf_counter() - started)
        if result.is_error:
            raise BenchmarkError(f"echo through the gateway failed: {result.content!r}")
    return timings


def _processes(gateway: psutil.Process) -> ServerProcesses:
    # The scale run reads no CPU figures, so the gateway is passed in place of the fixture here.
    return ServerProcesses(fixture=gateway, gateway=gateway)


def _write_policy(workdir: Path, servers: int, api_key: str) -> Path:
    ids = [FIXTURE_ID] + [f"extra{number:02d}" for number in range(1, servers)]
    server_args = fixture_command()[1:]
    policy = {
        "gateway": {"state_dir": str(workdir / "state")},
        "clients": {
            BENCH_CLIENT: {"api_key_hashes": ["sha256:" + hashlib.sha256(api_key.encode()).hexdigest()]}
        },
        "rules": [
            {"name": "benchmark", "clients": ["*"], "server": "*", "tools": ["echo"], "decision": "auto"},
        ],
        "servers": {
            server_id: {"command": sys.executable, "args": server_args, "read_only_tools": ["echo"]}
            for server_id in ids
        },
    }
    path = workdir / "policy.toml"
    path.write_text(tomli_w.dumps(policy), encoding="utf-8")
    return path


def render_scale(points: list[ScalePoint]) -> str:
    """Return the Markdown table of the scale measurement and its verdict."""
    baseline, loaded = points
    ratio = loaded.p50_ms / baseline.p50_ms
    verdict = "met" if ratio <= MAX_RATIO else "NOT met"
    lines = [
        "### Cost with many servers and clients",
        "",
        "One client's sequential `echo` calls through an HTTP gateway in front of one fixture server",
        f"alone, and through a second one in front of {SERVERS} fixture servers while {IDLE_CLIENTS} more",
        f"clients hold open sessions. Both run at once, and {CALLS} calls to each are timed (after",
        f"{WARMUP_CALLS}) in batches of {BATCH_CALLS} that alternate between the two.",
        f"Target: at most {MAX_RATIO:g}x the first p50.",
        "",
        "| servers | other open sessions | p50 ms |",
        "|--:|--:|--:|",
    ]
    for point in points:
        lines.append(f"| {point.servers} | {point.idle_clients} | {point.p50_ms:.2f} |")
    lines += ["", f"Ratio {ratio:.2f}x: target {verdict}."]
    return "\n".join(lines)
