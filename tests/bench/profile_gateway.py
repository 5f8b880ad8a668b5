"""Profile the gateway on the `echo` path with py-spy and print where its time goes.

py-spy is not a project dependency. Install it first with `.venv/bin/pip install py-spy`,
then run `.venv/bin/python tests/bench/profile_gateway.py --help`. After a warm-up, py-spy
attaches to the running gateway (which needs permission to trace it, as root or with
CAP_SYS_PTRACE) and samples its Python stacks while the client makes the calls. The summary
leaves out samples of threads that wait in epoll or on a condition variable. A thread blocked
in another system call, such as fsync, still counts as busy, so the shares are of thread time,
not only CPU time. With `--gil` only samples of the thread holding the GIL count, which leaves
out blocking I/O and native code that releases the GIL.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import psutil
from measure import ECHO_TEXT
from targets import ROOT, BenchmarkError, Case, cases, stop_descendants, stop_process, tail

SAMPLES_PER_SECOND = 1000
WARMUP_CALLS = 200
# Bounds how long py-spy may take to attach to the gateway and to write its samples.
PY_SPY_WAIT_SECONDS = 20.0
# Leaf frames of a thread that is waiting rather than working.
IDLE_LEAVES = ("EpollSelector.select (", "Condition.wait (", "Thread._wait_for_tstate_lock (")
# Parts of a frame's file path, checked in order. The first match names the group.
PACKAGE_GROUPS = (
    ("/mcp_guard/", "mcp_guard"),
    ("/site-packages/mcp/", "mcp (SDK server and client)"),
    ("/site-packages/mcp_types/", "mcp_types (SDK message models)"),
    ("/site-packages/aiosqlite/", "aiosqlite (SQLite calls, in its own thread)"),
    ("/site-packages/pydantic", "pydantic"),
    ("/site-packages/anyio/", "anyio"),
    ("/site-packages/structlog/", "structlog"),
    ("/site-packages/", "other installed packages"),
    ("/asyncio/", "asyncio (event loop, pipe and socket writes)"),
    ("/threading.py", "threading (handing work to threads)"),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*)\)$")
_PATH_PREFIX = re.compile(rf"^(.*/site-packages/|.*/lib/python3\.\d+/|{re.escape(str(ROOT))}/)")


def main(argv: Sequence[str] | None = None) -> int:
    """Profile the gateway and print the summary; return the exit status."""
    args = _parser().parse_args(argv)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed; install it with `.venv/bin/pip install py-spy`", file=sys.stderr)
        return 2
    case = next(case for case in cases() if case.key == args.case)

    with tempfile.TemporaryDirectory(prefix="mcp-guard-profile-") as scratch:
        samples = Path(scratch) / "samples.txt"
        try:
            record = [py_spy, "record", "--output", str(samples), *(["--gil"] if args.gil else [])]
            anyio.run(_profile, case, Path(scratch), record, args)
        except BenchmarkError as exc:
            print(f"profiling failed: {exc}", file=sys.stderr)
            return 1
        finally:
            stop_descendants()
        if not samples.exists():
            print(f"py-spy wrote no samples:\n{tail(Path(scratch) / 'py-spy.log')}", file=sys.stderr)
            return 1
        print(_summary(samples.read_text(encoding="utf-8"), args.top))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    gateway_cases = [case.key for case in cases() if case.baseline is not None]
    parser.add_argument(
        "--case", choices=gateway_cases, default="gateway-stdio", help="gateway case (default: gateway-stdio)"
    )
    parser.add_argument(
        "--mode", choices=("legacy", "2026-07-28"), default="legacy", help="client mode (default: legacy)"
    )
    parser.add_argument("--calls", type=int, default=3000, help="profiled calls (default: 3000)")
    parser.add_argument("--concurrency", type=int, default=1, help="concurrent callers (default: 1)")
    parser.add_argument("--top", type=int, default=25, help="functions to list (default: 25)")
    parser.add_argument("--gil", action="store_true", help="count only samples of the thread holding the GIL")
    return parser


async def _profile(case: Case, workdir: Path, record: list[str], args: argparse.Namespace) -> None:
    with case.start(workdir) as target:
        async with target.connect(args.mode) as session:
            client = session.client

            async def call_repeatedly(count: int) -> None:
                for _ in range(count):
                    await client.call_tool(target.tool, {"text": ECHO_TEXT})

            await call_repeatedly(WARMUP_CALLS)
            gateway = session.processes().gateway
            assert gateway is not None, "every case offered by --case runs the gateway"
            sampler = _attach(record, gateway.pid, workdir / "py-spy.log")
            try:
                async with anyio.create_task_group() as tasks:
                    for _ in range(args.concurrency):
                        tasks.start_soon(call_repeatedly, args.calls // args.concurrency)
            finally:
                _detach(sampler, workdir / "py-spy.log")


def _attach(record: list[str], pid: int, log_path: Path) -> psutil.Popen:
    """Start py-spy on `pid` and return once it samples."""
    command = [*record, "--pid", str(pid), "--format", "raw", "--full-filenames", "--nolineno"]
    command += ["--rate", str(SAMPLES_PER_SECOND), "--nonblocking"]
    with log_path.open("wb") as log:
        sampler = psutil.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + PY_SPY_WAIT_SECONDS
    while "Sampling process" not in log_path.read_text(encoding="utf-8", errors="replace"):
        if sampler.poll() is not None or time.monotonic() > deadline:
            stop_process(sampler)
            raise BenchmarkError(f"py-spy did not attach to PID {pid}; it wrote:\n{tail(log_path)}")
        time.sleep(0.05)
    return sampler


def _detach(sampler: psutil.Popen, log_path: Path) -> None:
    """Stop py-spy the way it expects (SIGINT), so that it writes its samples."""
    sampler.send_signal(signal.SIGINT)
    try:
        sampler.wait(timeout=PY_SPY_WAIT_SECONDS)
    except psutil.TimeoutExpired:
        stop_process(sampler)
        raise BenchmarkError(f"py-spy did not finish; it wrote:\n{tail(log_path)}") from None


def _summary(raw: str, top: int) -> str:
    """Summarise py-spy's raw output: one `frame;frame;... count` line per distinct stack."""
    by_group: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    # Samples whose stack passes through each mcp_guard function: its own time and its callees'.
    through_own: Counter[str] = Counter()
    idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.split(";")[-1]
        count = int(count_text)
        if leaf.startswith(IDLE_LEAVES):
            idle += count
            continue
        function, file = _parse_frame(leaf)
        by_function[f"{function} ({_PATH_PREFIX.sub('', file)})"] += count
        by_group[_group(file)] += count
        own_frames = {frame for frame in stack.split(";") if "/mcp_guard/" in frame}
        for frame in own_frames:
            function, file = _parse_frame(frame)
            through_own[f"{function} ({_PATH_PREFIX.sub('', file)})"] += count

    busy = sum(by_function.values())
    lines = [
        f"{busy + idle} samples: {idle} of waiting threads, {busy} of threads running or blocked in I/O.",
        "",
        "Busy samples by where the code lives:",
        *(f"  {100 * n / busy:5.1f}%  {name}" for name, n in by_group.most_common()),
        "",
        f"Busy samples by function (self time, top {top}):",
        *(f"  {100 * n / busy:5.1f}%  {name}" for name, n in by_function.most_common(top)),
        "",
        f"Busy samples by mcp_guard function, with the time of what it calls (top {top}):",
        *(f"  {100 * n / busy:5.1f}%  {name}" for name, n in through_own.most_common(top)),
    ]
    return "\n".join(lines)


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["file"]


def _group(file: str) -> str:
    for marker, name in PACKAGE_GROUPS:
        if marker in file:
            return name
    return "other standard library or native code"


if __name__ == "__main__":
    sys.exit(main())
