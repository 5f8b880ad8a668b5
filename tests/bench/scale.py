"""Whether the cost of one call stays flat as servers and clients are added.

The same HTTP gateway setup is measured twice: in front of one fixture server
with one client, and in front of 20 fixture servers with 50 more clients holding
open sessions (each listed its tools once). Both times one client makes
sequential `echo` calls and the p50 is compared. Every process is started on
127.0.0.1 by this module and stopped by PID when its measurement ends.
"""

from __future__ import annotations

import hashlib
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import tomli_w
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
    """Measure the baseline and the loaded gateway, in that order."""
    points = []
    for servers, idle_clients in ((1, 0), (SERVERS, IDLE_CLIENTS)):
        with tempfile.TemporaryDirectory(prefix="mcp-guard-bench-scale-") as scratch:
            points.append(await _measure(Path(scratch), servers, idle_clients))
    return points


async def _measure(workdir: Path, servers: int, idle_clients: int) -> ScalePoint:
    api_key = secrets.token_urlsafe(32)
    policy = _write_policy(workdir, servers, api_key)
    command = [*gateway_command(policy), "--transport", "http"]
    with _background_server(command, workdir, "gateway") as (gateway, port):
        target = HttpTarget(f"http://{HOST}:{port}/mcp", GATEWAY_TOOL, _processes(gateway), api_key=api_key)
        async with AsyncExitStack() as stack:
            for _ in range(idle_clients):
                idle = await stack.enter_async_context(target.connect("legacy"))
                await idle.client.list_tools()
            session = await stack.enter_async_context(target.connect("legacy"))
            timings = []
            for number in range(WARMUP_CALLS + CALLS):
                started = time.perf_counter()
                result = await session.client.call_tool(GATEWAY_TOOL, {"text": ECHO_TEXT})
                elapsed = time.perf_counter() - started
                if result.is_error:
                    raise BenchmarkError(f"echo through the gateway failed: {result.content!r}")
                if number >= WARMUP_CALLS:
                    timings.append(elapsed)
    return ScalePoint(servers, idle_clients, statistics.median(timings) * 1000)


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
        f"One client's sequential `echo` calls through the HTTP gateway ({CALLS} timed after {WARMUP_CALLS}),",
        f"in front of one fixture server alone, then in front of {SERVERS} fixture servers while",
        f"{IDLE_CLIENTS} more clients hold open sessions. Target: at most {MAX_RATIO:g}x the first p50.",
        "",
        "| servers | other open sessions | p50 ms |",
        "|--:|--:|--:|",
    ]
    for point in points:
        lines.append(f"| {point.servers} | {point.idle_clients} | {point.p50_ms:.2f} |")
    lines += ["", f"Ratio {ratio:.2f}x: target {verdict}."]
    return "\n".join(lines)
