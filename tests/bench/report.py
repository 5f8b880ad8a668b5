"""Turning measurements into Markdown tables, target checks and docs/benchmarks.md.

The document keeps everything above `GENERATED_MARKER` as written by hand and
replaces everything below it on each run. Taking the measurements is left to
`measure.py`.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from measure import Measurement, Settings
from targets import ROOT, Case, Goals

GENERATED_MARKER = "<!-- tests/bench/run.py writes everything below this line. Edit the text above it. -->"
DEFAULT_INTRO = """# Benchmarks

What mcp-guard adds to the cost of an MCP tool call. Run `make bench` to measure again.
It rewrites the part of this page below the marker.
"""


@dataclass(frozen=True)
class TargetCheck:
    """One gateway case in one mode, compared with its direct baseline and its goals, if any."""

    case: str
    baseline: str
    mode: str
    p50_ratio: float
    throughput_ratio: float
    gateway_cpu_ms: float
    """The higher of the sequential and concurrent batches' CPU time per call."""
    gateway_rss_mib: float | None
    goals: Goals | None

    def verdicts(self) -> list[bool]:
        """Return whether each goal of the case is met: p50, throughput, CPU, then RSS if it has one."""
        if self.goals is None:
            return []
        verdicts = [
            self.p50_ratio <= self.goals.max_p50_ratio,
            self.throughput_ratio >= self.goals.min_throughput_ratio,
            self.gateway_cpu_ms < self.goals.max_cpu_ms,
        ]
        if self.goals.max_rss_mib is not None:
            verdicts.append(
                self.gateway_rss_mib is not None and self.gateway_rss_mib < self.goals.max_rss_mib
            )
        return verdicts


def check_targets(measurements: Sequence[Measurement], cases: Sequence[Case]) -> list[TargetCheck]:
    """Compare each gateway measurement with its direct baseline in the same mode."""
    by_key = {(m.case, m.mode): m for m in measurements}
    checks = []
    for measurement in measurements:
        case = next(c for c in cases if c.key == measurement.case)
        baseline = by_key.get((case.baseline or "", measurement.mode))
        if baseline is None or measurement.gateway_cpu_ms_1 is None or measurement.gateway_cpu_ms_n is None:
            continue
        checks.append(
            TargetCheck(
                case=measurement.case,
                baseline=baseline.case,
                mode=measurement.mode,
                p50_ratio=measurement.p50_ms / baseline.p50_ms,
                throughput_ratio=measurement.calls_per_second_n / baseline.calls_per_second_n,
                gateway_cpu_ms=max(measurement.gateway_cpu_ms_1, measurement.gateway_cpu_ms_n),
                gateway_rss_mib=measurement.gateway_peak_rss_mib,
                goals=case.goals,
            )
        )
    return checks


def machine_description(load_average: float, scratch: Path) -> dict[str, str]:
    """Describe the machine and software the run used.

    Args:
        load_average: The 1-minute load average before the run, which shows whether other
            work competed for the cores.
        scratch: The folder that contains the gateway's state directory. Its filesystem sets
            the cost of the fsync calls the audit trail makes.
    """
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{_memory_gib():.1f} GiB",
        "load average (1 min) before the run": f"{load_average:.2f}",
        "filesystem of the gateway's state directory": _filesystem(scratch),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "mcp (SDK)": metadata.version("mcp"),
        "mcp-guard commit": _commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render_results(
    measurements: Sequence[Measurement],
    checks: Sequence[TargetCheck],
    cases: Sequence[Case],
    settings: Settings,
) -> str:
    """Return the results as Markdown: one table per protocol mode, then the targets."""
    sections = []
    for mode in dict.fromkeys(m.mode for m in measurements):
        rows = [m for m in measurements if m.mode == mode]
        sections.append(f"### Client mode `{mode}`\n\n" + _results_table(rows, cases, settings))
    sections.append("### Targets\n\n" + _targets_table(checks, settings))
    return "\n\n".join(sections) + "\n"


def render_generated(results: str, settings: Settings, machine: dict[str, str], run_seconds: float) -> str:
    """Return the generated part of the document: method, machine and results."""
    machine_rows = "\n".join(f"| {name} | {value} |" for name, value in machine.items())
    return f"""{GENERATED_MARKER}

## How it was measured

{_method(settings)}

## Machine

| | |
|---|---|
{machine_rows}
| run time of tests/bench/run.py | {run_seconds:.0f} s |

## Results

{results}"""


def write_document(path: Path, generated: str) -> None:
    """Write `generated` below the marker in `path`, keeping the hand-written text above it."""
    intro = DEFAULT_INTRO
    if path.exists():
        intro = path.read_text(encoding="utf-8").split(GENERATED_MARKER, 1)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(intro.rstrip("\n") + "\n\n" + generated, encoding="utf-8")


def _method(settings: Settings) -> str:
    n = settings.concurrency
    return f"""Every case calls the fixture server's `echo` tool (`tests/fixtures/fixture_server.py`) with a
short text and checks that the result is that text. The client is the MCP Python SDK's `mcp.Client`,
run once per case in each client mode: `legacy` (initialize handshake, protocol 2025-11-25) and
`2026-07-28` (no handshake). The gateway's policy file lists the fixture and one rule that lets
every client call `echo`. Every other setting keeps its default, so the numbers include what the
gateway does on every call by default, such as writing the audit trail to its state directory.
Over HTTP the client sends a bearer API key, which the gateway checks on every request. The
gateway picks the protocol it speaks to the fixture (`protocol = "auto"`). Each server listens
on 127.0.0.1 or is a child process on a pipe, and fresh servers are started for each round and
mode. The client, gateway and fixture share the machine's cores.

Every case is measured in {settings.rounds} rounds, and each figure below is the median of its
rounds. In a round, the servers of every case run at once, each case with one open session, and
the cases take turns: each makes {settings.batch_calls} calls, then the next case does. So a slow
spell of the machine falls on all cases alike, and a gateway case and its direct baseline are
measured within seconds of each other.

- **set-up**: median of {settings.setup_runs} fresh sessions, each timed from spawning the
  stdio server (or opening the HTTP connection) through the handshake to the end of the first
  `tools/list`. Over stdio this includes starting Python, and for the gateway also the gateway
  starting and listing the fixture. The HTTP servers are already running.
- **p50, p99**: {settings.calls} sequential calls on one session, each timed on its own, after
  {settings.warmup_calls} untimed calls.
- **calls/s at 1**: those {settings.calls} calls divided by the wall time of their turns.
- **calls/s at {n}**: {settings.concurrent_calls} calls from {n} concurrent tasks sharing the same
  session (one stdio pipe, or one HTTP session), after {settings.warmup_calls} untimed calls at the
  same concurrency, divided by the wall time of their turns.
- **CPU ms/call**: the process's own user plus system CPU time (`psutil`, from /proc/PID/stat)
  over the case's turns, divided by their calls, for the sequential and the concurrent calls.
  The gateway's figure excludes its child, the fixture.
- **gateway peak RSS**: `VmHWM` from /proc/PID/status at the end of the measured session.

Each gateway case is compared with the direct call a client would make without the gateway.
The stdio gateway in front of a stdio fixture is compared with `direct-stdio`. The two cases with
an HTTP hop are compared with `direct-http`, where the client reaches an HTTP fixture itself.

`proxy-stdio` puts `tests/bench/line_proxy.py` where the gateway would be: a few lines of asyncio
that copy each JSON-RPC line to the other side after parsing it as JSON, with no MCP session, no
validation and no policy. It shows the cost of the extra process and pipe hops alone, the floor
for any proxy written in Python. Its CPU and RSS figures are the proxy's, in the gateway columns."""


def _results_table(rows: Sequence[Measurement], cases: Sequence[Case], settings: Settings) -> str:
    n = settings.concurrency
    lines = [
        f"| case | path | p50 ms | p99 ms | calls/s at 1 | calls/s at {n} | set-up ms "
        f"| gateway CPU ms/call at 1 / {n} | fixture CPU ms/call at 1 / {n} | gateway peak RSS MiB |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    paths = {case.key: case.path for case in cases}
    for m in rows:
        gateway_cpu = "–"
        if m.gateway_cpu_ms_1 is not None:
            gateway_cpu = f"{m.gateway_cpu_ms_1:.3f} / {m.gateway_cpu_ms_n:.3f}"
        rss = "–" if m.gateway_peak_rss_mib is None else f"{m.gateway_peak_rss_mib:.1f}"
        lines.append(
            f"| {m.case} | {paths[m.case]} | {m.p50_ms:.2f} | {m.p99_ms:.2f} "
            f"| {m.calls_per_second_1:.0f} | {m.calls_per_second_n:.0f} | {m.setup_ms:.0f} "
            f"| {gateway_cpu} | {m.fixture_cpu_ms_1:.3f} / {m.fixture_cpu_ms_n:.3f} | {rss} |"
        )
    return "\n".join(lines)


def _targets_table(checks: Sequence[TargetCheck], settings: Settings) -> str:
    if not checks:
        return "No gateway case was measured together with its direct case, so no target was checked."
    lines = [
        "Cases without a target are listed for comparison. `bare-stdio` has the bare gateway's targets,",
        "`guarded-stdio` and `guarded-http` the targets with every guard on.",
        "",
        f"| case | compared with | client mode | p50 vs direct | calls/s at {settings.concurrency} vs direct "
        "| gateway CPU ms/call | gateway peak RSS MiB |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for check in checks:
        goals = check.goals
        verdicts = check.verdicts()
        rss = "–" if check.gateway_rss_mib is None else f"{check.gateway_rss_mib:.1f}"
        cells = [
            f"{check.p50_ratio:.2f}×",
            f"{check.throughput_ratio:.2f}×",
            f"{check.gateway_cpu_ms:.3f}",
            rss,
        ]
        if goals is not None:
            limits = [
                f"≤ {goals.max_p50_ratio:g}×",
                f"≥ {goals.min_throughput_ratio:g}×",
                f"< {goals.max_cpu_ms:g}",
                None if goals.max_rss_mib is None else f"< {goals.max_rss_mib:g}",
            ]
            for index, (limit, passed) in enumerate(zip(limits, verdicts, strict=False)):
                if limit is not None:
                    cells[index] += f" (target {limit}: {_verdict(passed)})"
        lines.append(f"| {check.case} | {check.baseline} | {check.mode} | {' | '.join(cells)} |")
    verdicts = [passed for check in checks for passed in check.verdicts()]
    lines.append(f"\n{sum(verdicts)} of {len(verdicts)} target checks pass.")
    return "\n".join(lines)


def _verdict(passed: bool) -> str:
    return "pass" if passed else "**MISS**"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _filesystem(path: Path) -> str:
    """Return the type and device of the mount that contains `path`, from /proc/mounts."""
    resolved = str(path.resolve())
    best = ("", "unknown", "unknown")
    for line in Path("/proc/mounts").read_text(encoding="utf-8").splitlines():
        device, mount_point, kind = line.split()[:3]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, kind, device)
    return f"{best[1]} ({best[2]})"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} with uncommitted changes" if dirty else head
