"""Timing `echo` calls and reading the servers' CPU time and memory.

For each case, a few short sessions time set-up (`time_setup`). Then one session per
case is opened and measured by a `CaseRun`: a warm-up, sequential calls (latency and
calls per second at 1) and concurrent calls (calls per second at `concurrency`), each
in batches, so that the batches of all cases can take turns. Server CPU time is read
from /proc before and after each batch. Starting servers is left to `targets.py`.
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
from targets import BenchmarkError, ServerProcesses, Session, Target

ECHO_TEXT = "hello from the benchmark"
# Bounds one case's share of a round (set-up runs and every batch), so a hung server stops the run.
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
    batch_calls: int = 200
    """Calls each case makes before the next case takes its turn."""


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


class CaseRun:
    """One case's session in one mode, measured in batches that may take turns with other cases'.

    The figures add up over the batches: the p50 is taken over every timed call, and the
    calls per second and CPU time per call over every batch's calls and time.
    """

    def __init__(self, case: str, mode: str, session: Session, tool: str, setup_ms: float) -> None:
        self.case = case
        self.mode = mode
        self._session = session
        self._tool = tool
        self._setup_ms = setup_ms
        self._latencies: list[float] = []
        self._elapsed_1 = 0.0
        self._cpu_1 = [0.0, 0.0]
        self._calls_n = 0
        self._elapsed_n = 0.0
        self._cpu_n = [0.0, 0.0]

    async def warm_up(self, calls: int, concurrency: int) -> None:
        """Make untimed calls from `concurrency` tasks."""
        await _run_concurrently(self._session.client, self._tool, calls, concurrency)

    async def time_sequential(self, calls: int) -> None:
        """Make `calls` calls one after another, timing each."""
        before = _cpu_seconds(self._watched())
        started = time.perf_counter()
        for _ in range(calls):
            call_started = time.perf_counter()
            await _echo(self._session.client, self._tool)
            self._latencies.append(time.perf_counter() - call_started)
        self._elapsed_1 += time.perf_counter() - started
        _add(self._cpu_1, before, _cpu_seconds(self._watched()))

    async def time_concurrent(self, calls: int, concurrency: int) -> None:
        """Make about `calls` calls from `concurrency` tasks on the session, timing the batch."""
        before = _cpu_seconds(self._watched())
        started = time.perf_counter()
        self._calls_n += await _run_concurrently(self._session.client, self._tool, calls, concurrency)
        self._elapsed_n += time.perf_counter() - started
        _add(self._cpu_n, before, _cpu_seconds(self._watched()))

    def result(self) -> Measurement:
        """Return the figures of every batch so far."""
        if not self._latencies or not self._calls_n:
            raise BenchmarkError(
                f"{self.case} has no timed calls: --calls and --concurrent-calls must be at least 1"
            )
        gateway = self._processes().gateway
        calls_1 = len(self._latencies)
        cuts = statistics.quantiles(self._latencies, n=100, method="inclusive")
        return Measurement(
            case=self.case,
            mode=self.mode,
            p50_ms=cuts[49] * 1000,
            p99_ms=cuts[98] * 1000,
            setup_ms=self._setup_ms,
            calls_per_second_1=calls_1 / self._elapsed_1,
            calls_per_second_n=self._calls_n / self._elapsed_n,
            fixture_cpu_ms_1=self._cpu_1[0] * 1000 / calls_1,
            fixture_cpu_ms_n=self._cpu_n[0] * 1000 / self._calls_n,
            gateway_cpu_ms_1=self._cpu_1[1] * 1000 / calls_1 if gateway else None,
            gateway_cpu_ms_n=self._cpu_n[1] * 1000 / self._calls_n if gateway else None,
            gateway_peak_rss_mib=peak_rss_mib(gateway.pid) if gateway else None,
        )

    def _processes(self) -> ServerProcesses:
        # Looked up after the warm-up because a 2026-07-28 client opens its session without a
        # handshake, so a stdio gateway may not have started the fixture before that.
        return self._session.processes()

    def _watched(self) -> list[psutil.Process]:
        processes = self._processes()
        return [processes.fixture] + ([processes.gateway] if processes.gateway else [])


def _add(totals: list[float], before: list[float], after: list[float]) -> None:
    """Add each process's CPU seconds between `before` and `after` to its total."""
    for index, (start, end) in enumerate(zip(before, after, strict=True)):
        totals[index] += end - start


async def time_setup(target: Target, mode: str, runs: int) -> float:
    """Return the median milliseconds of `runs` fresh sessions, from starting to the first tools/list."""
    return statistics.median([await _time_setup(target, mode) for _ in range(runs)])


async def _time_setup(target: Target, mode: str) -> float:
    """Return milliseconds from starting a session to the end of its first tools/list."""
    started = time.perf_counter()
    async with target.connect(mode) as session:
        listing = await session.client.list_tools()
        elapsed = time.perf_counter() - started
    if not any(tool.name == target.tool for tool in listing.tools):
        raise BenchmarkError(f"tools/list did not include {target.tool!r}")
    return elapsed * 1000


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


def peak_rss_mib(pid: int) -> float:
    """Return a process's peak resident set size (VmHWM in /proc/PID/status) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            kibibytes = int(line.split()[1])
            return kibibytes / 1024
    raise BenchmarkError(f"/proc/{pid}/status has no VmHWM line")
