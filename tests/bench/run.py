"""Measure `echo` calls made directly and through mcp-guard, and write docs/benchmarks.md.

Run it with `make bench` or `.venv/bin/python tests/bench/run.py --help`. Each round
starts fresh servers on 127.0.0.1 for every case in each client mode, keeps one session
to each open, and measures them in batches that take turns. Every process the run
started is stopped by PID before it exits, whether it succeeded or not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import anyio
from audit_rate import measure_audit_rate, render_audit_rates
from limits_rate import measure_decision_rates, render_decision_rates
from measure import CASE_TIMEOUT_SECONDS, CaseRun, Measurement, Settings, median_measurement, time_setup
from report import check_targets, machine_description, render_generated, render_results, write_document
from scale import IDLE_CLIENTS as SCALE_CLIENTS
from scale import SERVERS as SCALE_SERVERS
from scale import measure_scale, render_scale
from targets import ROOT, BenchmarkError, Case, cases, stop_descendants, tail

from mcp_guard.log import configure_logging

MODES = ("legacy", "2026-07-28")
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
# 2,000 sequential calls put 20 samples above p99.
DEFAULT_CALLS = 2000
DEFAULT_CONCURRENT_CALLS = 2000
DEFAULT_CONCURRENCY = 16
DEFAULT_WARMUP_CALLS = 200
DEFAULT_SETUP_RUNS = 5
# This virtual machine's speed drifts by a third or more within minutes, so every case is
# measured this many times, the rounds interleaved, and each figure is the median.
DEFAULT_ROUNDS = 3
# Above this 1-minute load average something else is using the cores, and the run prints a warning.
BUSY_LOAD_AVERAGE = 0.5


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables and write the document; return the exit status."""
    args = _parser().parse_args(argv)
    settings = Settings(
        calls=args.calls,
        concurrent_calls=args.concurrent_calls,
        concurrency=args.concurrency,
        warmup_calls=args.warmup_calls,
        setup_runs=args.setup_runs,
        rounds=args.rounds,
    )
    chosen = [case for case in cases() if not args.case or case.key in args.case]
    modes = args.mode or list(MODES)
    load_average = os.getloadavg()[0]
    if load_average > BUSY_LOAD_AVERAGE:
        print(
            f"warning: the 1-minute load average is {load_average:.2f}; other work on this machine "
            "will skew the numbers",
            file=sys.stderr,
        )

    started = time.perf_counter()
    try:
        measurements = anyio.run(_measure_all, chosen, modes, settings)
    except (BenchmarkError, ExceptionGroup) as exc:
        failure = _find_benchmark_error(exc)
        if failure is None:
            raise
        print(f"benchmark failed: {failure}", file=sys.stderr)
        return 1
    finally:
        leftovers = stop_descendants()
        if leftovers:
            print(f"stopped processes that outlived their case: PIDs {leftovers}", file=sys.stderr)
    run_seconds = time.perf_counter() - started

    results = render_results(measurements, check_targets(measurements, chosen), chosen, settings)
    if not args.case:
        print("measuring the audit trail's write rate", file=sys.stderr)
        configure_logging("warning")
        rates = [anyio.run(measure_audit_rate, power_safe) for power_safe in (False, True)]
        results += "\n\n" + render_audit_rates(rates)
        print("measuring the rate-limit stores' decision rates", file=sys.stderr)
        results += "\n\n" + render_decision_rates(anyio.run(measure_decision_rates))
        print(
            f"measuring one call with {SCALE_SERVERS} servers and {SCALE_CLIENTS} open sessions",
            file=sys.stderr,
        )
        try:
            results += "\n\n" + render_scale(anyio.run(measure_scale))
        finally:
            stop_descendants()
    print(results)
    print(f"run time: {run_seconds:.0f} s")
    if args.output is not None:
        machine = machine_description(load_average, Path(tempfile.gettempdir()))
        generated = render_generated(results, settings, machine, run_seconds)
        write_document(args.output, generated)
        print(f"wrote {args.output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    keys = [case.key for case in cases()]
    parser.add_argument(
        "--case", action="append", choices=keys, help="measure only this case (repeatable; default: all)"
    )
    parser.add_argument(
        "--mode", action="append", choices=MODES, help="client mode to measure (repeatable; default: both)"
    )

    parser.add_argument(
        "--rounds",
        type=_at_least(1),
        default=DEFAULT_ROUNDS,
        help=f"times every case is measured; each figure is the median (default: {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--calls",
        type=_at_least(2),
        default=DEFAULT_CALLS,
        help=f"sequential timed calls (default: {DEFAULT_CALLS})",
    )
    parser.add_argument(
        "--concurrent-calls",
        type=_at_least(1),
        default=DEFAULT_CONCURRENT_CALLS,
        help=f"calls in the concurrent batch (default: {DEFAULT_CONCURRENT_CALLS})",
    )
    parser.add_argument(
        "--concurrency",
        type=_at_least(1),
        default=DEFAULT_CONCURRENCY,
        help=f"concurrent tasks sharing one session (default: {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--warmup-calls",
        type=_at_least(0),
        default=DEFAULT_WARMUP_CALLS,
        help=f"untimed calls before each batch (default: {DEFAULT_WARMUP_CALLS})",
    )
    parser.add_argument(
        "--setup-runs",
        type=_at_least(1),
        default=DEFAULT_SETUP_RUNS,
        help=f"fresh sessions timed for the set-up median (default: {DEFAULT_SETUP_RUNS})",
    )

    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="Markdown file to write below its marker line (default: docs/benchmarks.md)",
    )
    output.add_argument(
        "--no-write", dest="output", action="store_const", const=None, help="only print the tables"
    )
    return parser


def _at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse type that accepts integers of at least `minimum`."""

    def convert(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; give {minimum} or more")
        return value

    return convert


def _find_benchmark_error(exc: BaseException) -> BenchmarkError | None:
    """Return the `BenchmarkError` in `exc`, which the SDK's task groups may have wrapped."""
    if isinstance(exc, BenchmarkError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_benchmark_error(inner)
            if found is not None:
                return found
    return None


async def _measure_all(chosen: Sequence[Case], modes: Sequence[str], settings: Settings) -> list[Measurement]:
    rounds: dict[tuple[str, str], list[Measurement]] = {}
    for number in range(1, settings.rounds + 1):
        for mode in modes:
            print(f"round {number} of {settings.rounds}: measuring client mode {mode}", file=sys.stderr)
            for measurement in await _measure_round(chosen, mode, settings):
                rounds.setdefault((measurement.case, measurement.mode), []).append(measurement)
    return [median_measurement(measurements) for measurements in rounds.values()]


async def _measure_round(chosen: Sequence[Case], mode: str, settings: Settings) -> list[Measurement]:
    """Start every case's servers, open a session to each, and measure them in turns.

    The sequential calls of each case are split into batches of `settings.batch_calls`, and every case
    runs one batch in turn, so a slow spell of the machine falls on all cases alike. The
    concurrent calls are split the same way.
    """
    with tempfile.TemporaryDirectory(prefix="mcp-guard-bench-") as scratch:
        workdirs = [Path(scratch) / case.key for case in chosen]
        try:
            with anyio.fail_after(CASE_TIMEOUT_SECONDS * len(chosen)), ExitStack() as servers:
                targets = []
                for case, workdir in zip(chosen, workdirs, strict=True):
                    workdir.mkdir()
                    targets.append(servers.enter_context(case.start(workdir)))
                async with AsyncExitStack() as sessions:
                    runs = []
                    for case, target in zip(chosen, targets, strict=True):
                        setup_ms = await time_setup(target, mode, settings.setup_runs)
                        session = await sessions.enter_async_context(target.connect(mode))
                        runs.append(CaseRun(case.key, mode, session, target.tool, setup_ms))
                    await _take_turns(runs, settings)
                    return [run.result() for run in runs]
        except Exception:
            # The scratch folder, with the servers' logs, is removed on the way out.
            for workdir in workdirs:
                _print_logs(workdir)
            raise


async def _take_turns(runs: Sequence[CaseRun], settings: Settings) -> None:
    for run in runs:
        await run.warm_up(settings.warmup_calls, 1)
    for calls in _batches(settings.calls, settings.batch_calls):
        for run in runs:
            await run.time_sequential(calls)
    for run in runs:
        await run.warm_up(settings.warmup_calls, settings.concurrency)
    for calls in _batches(settings.concurrent_calls, settings.batch_calls):
        for run in runs:
            await run.time_concurrent(calls, settings.concurrency)


def _batches(calls: int, size: int) -> list[int]:
    """Split `calls` into batches of at most `size`."""
    full, rest = divmod(calls, size)
    return [size] * full + ([rest] if rest else [])


def _print_logs(workdir: Path) -> None:
    for log in sorted(workdir.glob("*.log")):
        print(f"--- end of {log.name} ---\n{tail(log)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
