"""Timing `echo` calls and reading the servers' CPU time and memory.

One `measure_case` call opens a few short sessions to time set-up, then one session
for the rest: a warm-up, a sequential batch (latency and calls per second at 1), and a
concurrent batch (calls per second at `concurrency`). Server CPU time is read from
/proc before and after each batch. Starting servers is left to `targets.py`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import anyio
import psutil
from mcp import Client
from targets import BenchmarkError, Session, Target

ECHO_TEXT = "hello from the benchmark"
# Bounds one whole case (set-up runs and both batches), so a hung server stops the run.
CASE_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class Settings:
    """How much work each case does."""

    calls: int
    """Sequential calls timed one by one (p50, p99, calls per second at 1)."""
    concurrent_calls: int
    """Calls in the concurrent batch, spread evenly over `concurrency` tasks."""
    concurrency: int
    warmup_calls: int
    """Untimed calls before each batch, so lazy imports, caches and connection pools settle."""
    setup_runs: int
    rounds: int = 1
    """Times every case is measured; each figure reported is the median over the rounds."""


@dataclass(frozen=True)
class Measurement:
    """Everything measured for one case in one protocol mode.

    CPU figures are process CPU time (user plus system) per call, in milliseconds.
    The gateway fields are None for direct cases.
    """

    case: str
    mode: str
    p50_ms: float
    p99_ms: float
    setup_ms: float
    """Median time to spawn or connect, finish the handshake and list tools once."""
    calls_per_second_1: float
    calls_per_second_n: float
    fixture_cpu_ms_1: float
    fixture_cpu_ms_n: float
    gateway_cpu_ms_1: float | None
    gateway_cpu_ms_n: float | None
    gateway_peak_rss_mib: float | None
    """The gateway's VmHWM at the end of the measured session."""


def median_measurement(rounds: Sequence[Measurement]) -> Measurement:
    """Combine the rounds of one case in one mode into the median of each figure."""
    first = rounds[0]
    values: dict[str, Any] = {"case": first.case, "mode": first.mode}
    for field in fields(Measurement):
        if field.name in values:
            continue
        figures = [getattr(measurement, field.name) for measurement in rounds]
        values[field.name] = None if None in figures else statistics.median(figures)
    return Measurement(**values)


async def measure_case(case: str, target: Target, mode: str, settings: Settings) -> Measurement:
    """Measure one case in one protocol mode."""
    with anyio.fail_after(CASE_TIMEOUT_SECONDS):
        setup_ms = statistics.median([await _time_setup(target, mode) for _ in range(settings.setup_runs)])
        async with target.connect(mode) as session:
            return await _measure_session(case, mode, session, target.tool, settings, setup_ms)


async def _measure_session(
    case: str, mode: str, session: Session, tool: str, settings: Settings, setup_ms: float
) -> Measurement:
    client = session.client
    await _run_concurrently(client, tool, settings.warmup_calls, 1)
    # Looked up after the warm-up because a 2026-07-28 client opens its session without a
    # handshake, so a stdio gateway may not have started the fixture before that.
    processes = session.processes()
    watched = [processes.fixture] + ([processes.gateway] if processes.gateway else [])
    before = _cpu_seconds(watched)
    latencies, elapsed = await _time_sequential(client, tool, settings.calls)
    cpu_1 = _per_call_ms(before, _cpu_seconds(watched), settings.calls)

    await _run_concurrently(client, tool, settings.warmup_calls, settings.concurrency)
    before = _cpu_seconds(watched)
    started = time.perf_counter()
    count = await _run_concurrently(client, tool, settings.concurrent_calls, settings.concurrency)
    elapsed_n = time.perf_counter() - started
    cpu_n = _per_call_ms(before, _cpu_seconds(watched), count)

    gateway = processes.gateway
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Measurement(
        case=case,
        mode=mode,
        p50_ms=cuts[49] * 1000,
        p99_ms=cuts[98] * 1000,
        setup_ms=setup_ms,
        calls_per_second_1=settings.calls / elapsed,
        calls_per_second_n=count / elapsed_n,
        fixture_cpu_ms_1=cpu_1[0],
        fixture_cpu_ms_n=cpu_n[0],
        gateway_cpu_ms_1=cpu_1[1] if gateway else None,
        gateway_cpu_ms_n=cpu_n[1] if gateway else None,
        gateway_peak_rss_mib=peak_rss_mib(gateway.pid) if gateway else None,
    )


async def _time_setup(target: Target, mode: str) -> float:
    """Return milliseconds from starting a session to the end of its first tools/list."""
    started = time.perf_counter()
    async with target.connect(mode) as session:
        listing = await session.client.list_tools()
        elapsed = time.perf_counter() - started
    if not any(tool.name == target.tool for tool in listing.tools):
        raise BenchmarkError(f"tools/list did not include {target.tool!r}")
    return elapsed * 1000


async def _time_sequential(client: Client, tool: str, calls: int) -> tuple[list[float], float]:
    """Make `calls` calls one after another; return each call's seconds and the batch's."""
    latencies: list[float] = []
    started = time.perf_counter()
    for _ in range(calls):
        call_started = time.perf_counter()
        await _echo(client, tool)
        latencies.append(time.perf_counter() - call_started)
    return latencies, time.perf_counter() - started


async def _run_concurrently(client: Client, tool: str, calls: int, concurrency: int) -> int:
    """Make about `calls` calls from `concurrency` tasks on one session; return how many were made."""
    per_task = max(1, calls // concurrency)

    async def call_repeatedly() -> None:
        for _ in range(per_task):
            await _echo(client, tool)

    async with anyio.create_task_group() as tasks:
        for _ in range(concurrency):
            tasks.start_soon(call_repeatedly)
    return per_task * concurrency


async def _echo(client: Client, tool: str) -> None:
    result = await client.call_tool(tool, {"text": ECHO_TEXT})
    texts = [getattr(block, "text", None) for block in result.content]
    if result.is_error or texts != [ECHO_TEXT]:
        raise BenchmarkError(
            f"{tool} returned {texts!r} with isError={result.is_error}, expected [{ECHO_TEXT!r}]"
        )


def _cpu_seconds(processes: list[psutil.Process]) -> list[float]:
    """Return each process's own CPU time (user plus system, children excluded)."""
    seconds = []
    for process in processes:
        times = process.cpu_times()
        seconds.append(times.user + times.system)
    return seconds


def _per_call_ms(before: list[float], after: list[float], calls: int) -> list[float]:
    return [(end - start) * 1000 / calls for start, end in zip(before, after, strict=True)]


def peak_rss_mib(pid: int) -> float:
    """Return a process's peak resident set size (VmHWM in /proc/PID/status) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            kibibytes = int(line.split()[1])
            return kibibytes / 1024
    raise BenchmarkError(f"/proc/{pid}/status has no VmHWM line")
