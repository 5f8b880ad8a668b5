"""The `wasm` sandbox backend: Python in Pyodide (WebAssembly), run by Node.js under its permission model.

Each sandbox is one Node.js process running `wasm_runtime/runner.mjs`, which loads Pyodide once
(about 3 to 5 s of start-up). It then runs every piece of code sent to it in the same interpreter,
so a session's sandbox keeps its globals and its in-memory files between runs, while a new sandbox
starts empty. The containment, layer by layer:

- Node.js (20 or later) runs with `--experimental-permission`: it may read only the Pyodide folder
  and the runtime's own files, and may not write files, start child processes or load addons.
- Node 20's permission model does not cover the network. The runner therefore removes the network
  globals, disables code generation from strings, blocks Pyodide's calls that open Node sockets or
  mount host folders, and an import hook (`import_hooks.mjs`) rejects `import()` of network modules
  and of `data:` URLs. The import hook needs `--allow-worker`, because Node 20 runs hooks on a worker.
- Inside Python, `harness.py` removes the modules that reach JavaScript (`js`, `pyodide_js`, ...) and
  allows the code to import only `[sandbox.wasm] allowed_imports`.
- The process gets an empty environment, a V8 heap limit, a WebAssembly memory limit (Python's heap),
  and an RLIMIT_CPU that the gateway moves forward before each run.

Protocol with the runner: one JSON line per run on stdin, JSON lines (output frames, then a report)
on stdout; see runner.mjs. Node's own stderr is kept only for diagnostics.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_guard.config.sandbox import SandboxSettings
from mcp_guard.errors import SandboxFailed, SandboxUnavailable
from mcp_guard.sandbox.base import (
    CodeError,
    CodeRun,
    Language,
    OutputCapture,
    RunOutcome,
    SandboxLimits,
    SandboxTag,
    StopReason,
    reject_allowed_hosts,
)
from mcp_guard.sandbox.report import report_error, report_exit_status, report_results

log = structlog.get_logger(module=__name__)

KIND = "wasm"
RUNTIME_DIR = Path(__file__).parent / "wasm_runtime"
RUNNER = RUNTIME_DIR / "runner.mjs"
IMPORT_HOOKS = RUNTIME_DIR / "import_hooks.mjs"
HARNESS = RUNTIME_DIR / "harness.py"
# Default Pyodide folder, used when [sandbox.wasm] pyodide_dir is unset.
# `make install` fills it by running `npm ci` in RUNTIME_DIR.
DEFAULT_PYODIDE_DIR = RUNTIME_DIR / "node_modules" / "pyodide"
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip")
INSTALL_FIX = (
    "Run `make install` (it runs `npm ci` in mcp_guard/sandbox/wasm_runtime), or set "
    "[sandbox.wasm] pyodide_dir to the folder of an installed npm `pyodide` package."
)
MIN_NODE_MAJOR = 20
# Bounds loading Pyodide in a new sandbox (about 3 to 5 s on an idle machine).
STARTUP_SECONDS = 60.0
# CPU time the process may use while Pyodide loads, before the first run sets the run's own limit.
STARTUP_CPU_SECONDS = 60
# Bounds each `node` probe in `check`.
PROBE_SECONDS = 10.0
# Bounds the wait for a killed process to be reaped.
REAP_SECONDS = 5.0
# Largest stdout line accepted from the runner: output frames are at most 64 KiB before JSON
# escaping (up to 6 bytes per byte), and reports are capped by harness.py well below this.
MAX_FRAME_BYTES = 8 * 1024 * 1024
# Node's own diagnostics kept for error messages, in bytes.
MAX_DIAGNOSTIC_BYTES = 16 * 1024
WASM_PAGE_BYTES = 65_536
# The JavaScript heap gets a quarter of the memory limit, and at least this many MiB.
MIN_JS_HEAP_MB = 64
READ_CHUNK = 65_536
# V8 messages for an exhausted JavaScript heap.
HEAP_EXHAUSTED = re.compile(rb"heap limit|heap out of memory|Out of memory", re.IGNORECASE)


@dataclass(frozen=True)
class _Runtime:
    """The programs and files resolved by `check`."""

    node: str
    pyodide_dir: Path
    allowed_imports: tuple[str, ...]


class WasmBackend:
    """Runs Python code in Pyodide under Node.js, one Node.js process per sandbox."""

    kind = KIND
    languages: frozenset[Language] = frozenset({"python"})

    def __init__(self, settings: SandboxSettings, environ: Mapping[str, str]) -> None:
        self._settings = settings.wasm
        self._allowed_hosts = tuple(settings.allowed_hosts)
        self._path = environ.get("PATH", os.defpath)
        self._runtime: _Runtime | None = None

    async def check(self) -> None:
        """Find Node.js and Pyodide and make sure the permission model is enforced."""
        if self._runtime is not None:
            return
        reject_allowed_hosts(KIND, self._allowed_hosts)
        node = shutil.which(self._settings.node, path=self._path)
        if node is None:
            raise SandboxUnavailable(
                KIND,
                f"Node.js ({self._settings.node!r}) was not found on PATH",
                f"Install Node.js {MIN_NODE_MAJOR} or later, or set [sandbox.wasm] node to its path.",
            )
        pyodide_dir = self._pyodide_dir()
        _check_files(pyodide_dir)
        await _check_node(node)
        self._runtime = _Runtime(node, pyodide_dir, tuple(self._settings.allowed_imports))

    async def create(self, limits: SandboxLimits, tag: SandboxTag) -> WasmSandbox:
        """Start a Node.js process, load Pyodide in it and wait until it is ready to run code."""
        await self.check()
        assert self._runtime is not None
        reject_allowed_hosts(KIND, limits.allowed_hosts)
        sandbox = WasmSandbox(await _spawn(self._runtime, limits), limits)
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.aclose()
            raise
        log.debug("wasm_sandbox_started", client=tag.client, call_id=tag.call_id, session=tag.session)
        return sandbox

    async def remove_orphans(self) -> int:
        """Nothing to remove: an idle runner exits when the gateway's end of its stdin closes."""
        return 0

    async def aclose(self) -> None:
        """Nothing to release: each sandbox owns its process."""

    def _pyodide_dir(self) -> Path:
        configured = self._settings.pyodide_dir
        path = Path(configured) if configured is not None else DEFAULT_PYODIDE_DIR
        return path.resolve()


class WasmSandbox:
    """One Node.js process with a loaded Pyodide; its interpreter lives until `aclose`."""

    def __init__(self, process: Process, limits: SandboxLimits) -> None:
        self._process = process
        self._limits = limits
        assert process.stdout is not None and process.stderr is not None
        self._frames = BufferedByteReceiveStream(process.stdout)
        self._stderr: ByteReceiveStream = process.stderr
        self._diagnostics = bytearray()
        self._broken: str | None = None
        self._closed = False
        self._lock = anyio.Lock()

    async def start(self) -> None:
        """Wait for the runner's "ready" frame; raise SandboxFailed if Pyodide does not load."""
        frame: dict[str, Any] | None = None
        with anyio.move_on_after(STARTUP_SECONDS):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._drain_stderr)
                frame = await self._next_frame()
                tasks.cancel_scope.cancel()
        if frame is None:
            raise SandboxFailed(KIND, self._failure(f"Pyodide did not load within {STARTUP_SECONDS:.0f} s"))
        if frame.get("type") != "ready":
            raise SandboxFailed(KIND, self._failure(_frame_reason(frame, "Pyodide could not be loaded")))

    async def run(self, run: CodeRun, output: OutputCapture) -> RunOutcome:
        """Send the code to the interpreter and stream its output until it reports or is stopped."""
        if run.language != "python":
            raise SandboxUnavailable(
                KIND, f"the wasm sandbox runs Python only, not {run.language}", "Use Python."
            )
        async with self._lock:
            if self._closed:
                raise SandboxFailed(KIND, "the sandbox was already destroyed")
            if self._broken is not None:
                raise SandboxFailed(
                    KIND, f"the sandbox's interpreter is gone ({self._broken}); start a new one"
                )
            started = time.monotonic()
            self._limit_cpu()
            await self._send(run.code)
            outcome = await self._supervise(output)
            outcome.seconds = time.monotonic() - started
            return outcome

    async def aclose(self) -> None:
        """Kill the process group and reap it. Safe to call twice and when cancelled."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await _kill(self._process)
            with suppress(Exception):
                await self._process.aclose()

    async def _send(self, code: str) -> None:
        assert self._process.stdin is not None
        line = json.dumps({"code": code}).encode("utf-8") + b"\n"
        try:
            await self._process.stdin.send(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._broken = "its process exited"
            raise SandboxFailed(KIND, self._failure("the interpreter's process exited")) from None

    async def _supervise(self, output: OutputCapture) -> RunOutcome:
        stopped: list[StopReason] = []
        report: dict[str, Any] | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch, output, stopped)
            tasks.start_soon(self._drain_stderr)
            report = await self._read_run(output, stopped)
            tasks.cancel_scope.cancel()
        if report is not None:
            return _outcome(output, report)
        return await self._ended_outcome(output, stopped)

    async def _read_run(self, output: OutputCapture, stopped: list[StopReason]) -> dict[str, Any] | None:
        """Feed output frames to `output` until the report arrives; return None if the process ended."""
        while True:
            frame = await self._next_frame()
            if frame is None:
                return None
            kind = frame.get("type")
            if kind in ("stdout", "stderr") and isinstance(frame.get("text"), str):
                if not output.add(kind, frame["text"].encode("utf-8")):
                    if not stopped:
                        stopped.append("output_cap")
                    self._broken = "it was stopped at the output cap"
                    _kill_group(self._process)
                    return None
            elif kind == "done" and isinstance(frame.get("report"), dict):
                return dict(frame["report"])
            else:
                self._broken = _frame_reason(frame, "the runner sent an unexpected message")
                await _kill(self._process)
                return None

    async def _watch(self, output: OutputCapture, stopped: list[StopReason]) -> None:
        reason: StopReason = "timeout"
        with anyio.move_on_after(self._limits.timeout_seconds):
            await output.full.wait()
            reason = "output_cap"
        if stopped:
            return
        stopped.append(reason)
        self._broken = f"it was stopped at the {'time limit' if reason == 'timeout' else 'output cap'}"
        _kill_group(self._process)

    async def _ended_outcome(self, output: OutputCapture, stopped: list[StopReason]) -> RunOutcome:
        """Describe a run whose process ended (killed by the gateway, a limit or a crash) before reporting."""
        with anyio.move_on_after(REAP_SECONDS):
            await self._process.wait()
        code = self._process.returncode
        if self._broken is None:
            self._broken = "its process exited"
        reason = stopped[0] if stopped else None
        if reason is None and HEAP_EXHAUSTED.search(self._diagnostics):
            reason = "memory"
        error = None
        if reason is None:
            error = CodeError(name="Killed", value=self._failure(_exit_text(code)), traceback="")
        log.info("wasm_sandbox_stopped", reason=reason, returncode=code)
        return RunOutcome(
            stdout=output.text("stdout"),
            stderr=output.text("stderr"),
            exit_code=None,
            seconds=0.0,
            error=error,
            stopped=reason,
            output_capped=output.capped,
        )

    async def _next_frame(self) -> dict[str, Any] | None:
        """Return the runner's next stdout message, or None at the end of the stream."""
        try:
            line = await self._frames.receive_until(b"\n", MAX_FRAME_BYTES)
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            return None
        except anyio.DelimiterNotFound:
            self._broken = "the runner sent a message over the size limit"
            await _kill(self._process)
            return None
        try:
            frame = json.loads(line)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self._broken = "the runner sent a message that is not a JSON object"
            await _kill(self._process)
            return None
        return frame

    async def _drain_stderr(self) -> None:
        # Node writes here only about itself (a crash, an exhausted heap); the code's stderr arrives
        # in frames. Reading keeps Node from blocking on a full pipe.
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            while True:
                chunk = await self._stderr.receive(READ_CHUNK)
                self._diagnostics += chunk
                del self._diagnostics[:-MAX_DIAGNOSTIC_BYTES]

    def _limit_cpu(self) -> None:
        """Allow the process `cpu_seconds` more CPU time than it has used so far (RLIMIT_CPU counts from start)."""
        used = _cpu_seconds(self._process.pid)
        soft = math.ceil(used) + self._limits.cpu_seconds
        with suppress(ProcessLookupError, PermissionError, OSError):
            _, hard = resource.prlimit(self._process.pid, resource.RLIMIT_CPU)
            resource.prlimit(
                self._process.pid, resource.RLIMIT_CPU, (min(soft, hard) if hard >= 0 else soft, hard)
            )

    def _failure(self, what: str) -> str:
        text = self._diagnostics.decode("utf-8", "replace").strip()
        last = text.splitlines()[-1][:300] if text else ""
        return f"{what} (Node.js error output: {last})" if last else what


async def _spawn(runtime: _Runtime, limits: SandboxLimits) -> Process:
    heap_mb = max(MIN_JS_HEAP_MB, limits.memory_bytes // (4 * 1024 * 1024))
    wasm_pages = max(1, limits.memory_bytes // WASM_PAGE_BYTES)
    pyodide = str(runtime.pyodide_dir)
    argv = [
        runtime.node,
        "--experimental-permission",
        f"--allow-fs-read={pyodide}/",
        f"--allow-fs-read={RUNNER}",
        f"--allow-fs-read={IMPORT_HOOKS}",
        f"--allow-fs-read={HARNESS}",
        # Node 20 runs import hooks on a worker thread; the hook itself rejects node:worker_threads.
        "--allow-worker",
        f"--experimental-loader={IMPORT_HOOKS.as_uri()}",
        "--disallow-code-generation-from-strings",
        "--no-experimental-fetch",
        "--no-warnings",
        f"--max-old-space-size={heap_mb}",
        f"--wasm-max-mem-pages={wasm_pages}",
        str(RUNNER),
        pyodide,
        str(HARNESS),
        ",".join(runtime.allowed_imports),
    ]
    try:
        process = await anyio.open_process(argv, env={}, start_new_session=True)
    except OSError as exc:
        raise SandboxFailed(KIND, f"Node.js could not be started ({exc.strerror})") from None
    with suppress(ProcessLookupError, PermissionError, OSError):
        resource.prlimit(process.pid, resource.RLIMIT_CPU, (STARTUP_CPU_SECONDS, resource.RLIM_INFINITY))
        resource.prlimit(process.pid, resource.RLIMIT_CORE, (0, 0))
    return process


def _check_files(pyodide_dir: Path) -> None:
    if "," in str(pyodide_dir):
        raise SandboxUnavailable(
            KIND,
            f"the Pyodide folder {str(pyodide_dir)!r} contains a comma, which Node 20's --allow-fs-read cannot take",
            "Move Pyodide to a folder without commas and set [sandbox.wasm] pyodide_dir.",
        )
    missing = [name for name in PYODIDE_FILES if not (pyodide_dir / name).is_file()]
    if missing:
        raise SandboxUnavailable(
            KIND, f"Pyodide is not installed in {str(pyodide_dir)!r} ({missing[0]} is missing)", INSTALL_FIX
        )
    for path in (RUNNER, IMPORT_HOOKS, HARNESS):
        if not path.is_file():
            raise SandboxUnavailable(
                KIND, f"the runtime file {str(path)!r} is missing", "Reinstall mcp-guard."
            )


async def _check_node(node: str) -> None:
    """Make sure `node` is new enough and enforces the permission model."""
    version = await _probe(node, ["--version"])
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise SandboxUnavailable(
            KIND,
            f"Node.js at {node!r} is {version or 'of an unknown version'}, older than {MIN_NODE_MAJOR}",
            f"Install Node.js {MIN_NODE_MAJOR} or later, or set [sandbox.wasm] node to it.",
        )
    script = "process.stdout.write(String(process.permission.has('fs.write')))"
    answer = await _probe(node, ["--experimental-permission", "--no-warnings", "-e", script])
    if answer != "false":
        raise SandboxUnavailable(
            KIND,
            f"Node.js at {node!r} does not enforce --experimental-permission",
            f"Install Node.js {MIN_NODE_MAJOR} or later, or set [sandbox.wasm] node to it.",
        )


async def _probe(node: str, args: list[str]) -> str:
    try:
        with anyio.fail_after(PROBE_SECONDS):
            result = await anyio.run_process([node, *args], check=False, env={})
    except (OSError, TimeoutError):
        return ""
    return result.stdout.decode("utf-8", "replace").strip() if result.returncode == 0 else ""


def _outcome(output: OutputCapture, report: dict[str, Any]) -> RunOutcome:
    error = report_error(report.get("error"))
    return RunOutcome(
        stdout=output.text("stdout"),
        stderr=output.text("stderr"),
        exit_code=report_exit_status(report.get("exit_status"), error),
        seconds=0.0,
        error=error,
        results=report_results(report.get("results")),
        output_capped=output.capped,
    )


def _frame_reason(frame: dict[str, Any], default: str) -> str:
    reason = frame.get("reason")
    return reason[:500] if isinstance(reason, str) and reason else default


def _exit_text(code: int | None) -> str:
    if code is None:
        return "the interpreter's process did not exit"
    if code < 0:
        return f"the interpreter's process was ended by signal {signal.Signals(-code).name}"
    return f"the interpreter's process exited with status {code}"


def _cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) process `pid` has used, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def _kill(process: Process) -> None:
    _kill_group(process)
    with anyio.move_on_after(REAP_SECONDS):
        await process.wait()


def _kill_group(process: Process) -> None:
    # The runner leads its own process group (start_new_session). It cannot start children, so
    # killing the group is killing the runner, even if the permission model were bypassed.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
