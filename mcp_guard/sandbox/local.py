"""The `local` sandbox backend: Linux namespaces with bubblewrap, the default without an E2B key.

Each run is one bubblewrap process tree: new user, PID, network, IPC, UTS and
mount namespaces; a read-only view of /usr only (where the interpreters and
their libraries live), a size-limited tmpfs as /workspace and /tmp, an empty
environment, rlimits set by `prlimit`, `--die-with-parent` and `--new-session`.
The code reaches the sandbox as a read-only file (`--ro-bind-data`), never
through the shell.

When the gateway runs as root the process drops to an unprivileged host user
(`run_as`) before bubblewrap starts: as root, the sandbox's user would map to
host root and could read any file bound into it.

Ending a run kills bubblewrap, and with it the PID namespace's init, which
takes every process in the namespace along, double-forked ones included.

A session's sandbox keeps its files in a host folder owned by the sandbox user
and bound as /workspace; its size is checked after each run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process

from mcp_guard.config.sandbox import SandboxSettings
from mcp_guard.errors import SandboxFailed, SandboxUnavailable
from mcp_guard.processes import close_transport
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
from mcp_guard.sandbox.report import parse_report, report_error, report_results

log = structlog.get_logger(module=__name__)

KIND = "local"
DRIVER_SOURCE = (Path(__file__).parent / "driver.py").read_text(encoding="utf-8")
# Path of the code file inside the sandbox.
CODE_PATH = "/run/code"
WORKSPACE = "/workspace"
# The sandbox's own user and group, mapped to the host user that runs bubblewrap.
SANDBOX_UID = 1000
# Largest report accepted from the driver; the driver caps its own values well below this.
MAX_REPORT_BYTES = 8 * 1024 * 1024
# Address space Node.js reserves beyond its heap (V8's code range and cages), in bytes.
NODE_RESERVE = 12 * 1024**3
# Open files one sandbox may have.
MAX_OPEN_FILES = 256
# Bounds the wait for a killed sandbox's process to be reaped.
REAP_SECONDS = 5.0
# Bounds the availability probe (one tiny bubblewrap run).
PROBE_SECONDS = 10.0
READ_CHUNK = 65_536
# The whole environment of the sandboxed code.
SANDBOX_ENV = {"HOME": WORKSPACE, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class _Programs:
    """Everything resolved once by `check`: the programs and the host user to run as."""

    bwrap: str
    prlimit: str
    python: str
    node: str | None
    user: tuple[int, int] | None
    """(uid, gid) to switch to before bubblewrap starts; None when the gateway is not root."""
    mounts: tuple[str, ...]
    """Host folders bound read-only, besides /usr."""


class LocalBackend:
    """Runs code in bubblewrap sandboxes on this machine."""

    kind = KIND

    def __init__(self, settings: SandboxSettings, environ: Mapping[str, str]) -> None:
        self._settings = settings.local
        self._allowed_hosts = tuple(settings.allowed_hosts)
        # Interpreters are looked up where the sandbox can see them (it mounts /usr only), not on
        # the gateway's PATH, which may point into a virtualenv or a home folder.
        self._path = SANDBOX_ENV["PATH"]
        self._bwrap_path = environ.get("PATH", os.defpath)
        self._programs: _Programs | None = None
        node = shutil.which(self._settings.node, path=self._path)
        self.languages: frozenset[Language] = frozenset(
            ("python", "shell", "javascript") if node else ("python", "shell")
        )

    async def check(self) -> None:
        """Resolve the programs and run one empty sandbox, so that a missing piece is found at start-up."""
        if self._programs is not None:
            return
        reject_allowed_hosts(KIND, self._allowed_hosts)
        programs = self._resolve()
        await _probe(programs)
        self._programs = programs

    async def create(self, limits: SandboxLimits, tag: SandboxTag) -> LocalSandbox:
        """Prepare a sandbox; for a session, create its workspace folder on the host."""
        await self.check()
        assert self._programs is not None
        reject_allowed_hosts(KIND, limits.allowed_hosts)
        workspace = _session_workspace(self._programs) if tag.session is not None else None
        return LocalSandbox(self._programs, limits, workspace)

    async def remove_orphans(self) -> int:
        """Nothing outlives the gateway: every sandbox dies with its parent (`--die-with-parent`)."""
        return 0

    async def aclose(self) -> None:
        """Nothing to release."""

    def _resolve(self) -> _Programs:
        bwrap = self._which(
            self._settings.bwrap,
            "bubblewrap",
            "install it (Debian: apt-get install bubblewrap)",
            self._bwrap_path,
        )
        prlimit = self._which("prlimit", "prlimit", "install util-linux", self._bwrap_path)
        python = self._which(
            self._settings.python, "a Python interpreter", "install python3 or set [sandbox.local] python"
        )
        node = shutil.which(self._settings.node, path=self._path)
        real_python = os.path.realpath(python)
        mounts = [] if real_python.startswith("/usr/") else [_install_root(real_python)]
        if node is not None and not os.path.realpath(node).startswith("/usr/"):
            mounts.append(_install_root(os.path.realpath(node)))
        return _Programs(
            bwrap=bwrap,
            prlimit=prlimit,
            python=real_python,
            node=os.path.realpath(node) if node else None,
            user=self._host_user(),
            mounts=tuple(mounts),
        )

    def _which(self, program: str, what: str, fix: str, path: str | None = None) -> str:
        found = shutil.which(program, path=path or self._path)
        if found is None:
            raise SandboxUnavailable(
                KIND, f"{what} ({program!r}) was not found on PATH", f"To fix it, {fix}."
            )
        return found

    def _host_user(self) -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self._settings.run_as)
        except KeyError:
            raise SandboxUnavailable(
                KIND,
                f"the gateway runs as root and the user {self._settings.run_as!r} it drops to does not exist",
                "Create that user, or set [sandbox.local] run_as to an existing unprivileged user.",
            ) from None
        if entry.pw_uid == 0:
            raise SandboxUnavailable(
                KIND,
                f"[sandbox.local] run_as = {self._settings.run_as!r} is root",
                "Set run_as to an unprivileged user such as 'nobody'.",
            )
        return entry.pw_uid, entry.pw_gid


class LocalSandbox:
    """One bubblewrap sandbox; a session's sandbox keeps /workspace between runs."""

    def __init__(self, programs: _Programs, limits: SandboxLimits, workspace: Path | None) -> None:
        self._programs = programs
        self._limits = limits
        self._workspace = workspace
        self._closed = False

    async def run(self, run: CodeRun, output: OutputCapture) -> RunOutcome:
        """Run the code in a new bubblewrap process tree and wait until it ends or is stopped."""
        if self._closed:
            raise SandboxFailed(KIND, "the sandbox was already destroyed")
        if run.language == "javascript" and self._programs.node is None:
            raise SandboxUnavailable(
                KIND, "Node.js was not found on PATH", "Install Node.js to run JavaScript."
            )
        started = time.monotonic()
        code_fd = _code_file(run.code)
        report_read, report_write = os.pipe()
        try:
            process = await self._spawn(run.language, code_fd, report_write, self._limits)
        except OSError as exc:
            os.close(report_read)
            raise SandboxFailed(KIND, f"bubblewrap could not be started ({exc.strerror})") from None
        finally:
            os.close(code_fd)
            os.close(report_write)
        outcome = await _supervise(process, output, self._limits, report_read)
        outcome.seconds = time.monotonic() - started
        if self._workspace is not None:
            await self._check_workspace(outcome)
        return outcome

    async def aclose(self) -> None:
        """Remove a session's workspace. Runs are already over: each one ends with its process tree."""
        if self._closed:
            return
        self._closed = True
        if self._workspace is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, self._workspace.parent, True)

    async def _spawn(
        self, language: Language, code_fd: int, report_write: int, limits: SandboxLimits
    ) -> Process:
        user = self._programs.user
        return await anyio.open_process(
            [*self._rlimits(language), *self._bwrap(code_fd), *self._program(language, report_write)],
            # Never the gateway's own stdin: over stdio that is the client's protocol stream.
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
            start_new_session=True,
            pass_fds=(code_fd, report_write),
            user=user[0] if user else None,
            group=user[1] if user else None,
            extra_groups=[] if user else None,
        )

    def _rlimits(self, language: Language) -> list[str]:
        limits = self._limits
        # V8 reserves far more address space than it uses, so Node.js gets its heap limit instead
        # (`--max-old-space-size`) and an address-space limit with room for that reservation.
        address_space = (
            limits.memory_bytes if language != "javascript" else limits.memory_bytes + NODE_RESERVE
        )
        return [
            self._programs.prlimit,
            f"--as={address_space}",
            f"--cpu={limits.cpu_seconds}",
            f"--fsize={limits.max_file_bytes}",
            f"--nproc={limits.max_processes}",
            f"--nofile={MAX_OPEN_FILES}",
            "--core=0",
            "--",
        ]

    def _bwrap(self, code_fd: int) -> list[str]:
        size = str(self._limits.max_file_bytes)
        args = [
            self._programs.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--disable-userns",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
            *_merged_usr_links(),
            *[arg for mount in self._programs.mounts for arg in ("--ro-bind", mount, mount)],
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            size,
            "--tmpfs",
            "/tmp",
            "--size",
            size,
            "--tmpfs",
            "/dev/shm",
            "--perms",
            "0444",
            "--ro-bind-data",
            str(code_fd),
            CODE_PATH,
        ]
        if self._workspace is None:
            args += ["--size", size, "--tmpfs", WORKSPACE]
        else:
            args += ["--bind", str(self._workspace), WORKSPACE]
        # bubblewrap's root and /dev are tmpfs mounts with no size limit: read-only, they cannot fill memory.
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv"]
        for name, value in SANDBOX_ENV.items():
            args += ["--setenv", name, value]
        return [*args, "--"]

    def _program(self, language: Language, report_fd: int) -> list[str]:
        if language == "python":
            # The pipe keeps its number in the sandbox: bubblewrap passes inherited descriptors on.
            return [self._programs.python, "-I", "-S", "-c", DRIVER_SOURCE, f"fd:{report_fd}", CODE_PATH]
        if language == "javascript":
            assert self._programs.node is not None
            heap_mb = max(16, self._limits.memory_bytes // (1024 * 1024))
            return [self._programs.node, f"--max-old-space-size={heap_mb}", CODE_PATH]
        return ["/bin/sh", CODE_PATH]

    async def _check_workspace(self, outcome: RunOutcome) -> None:
        assert self._workspace is not None
        used = await anyio.to_thread.run_sync(_folder_size, self._workspace)
        if used <= self._limits.max_file_bytes:
            return
        await anyio.to_thread.run_sync(_empty_folder, self._workspace)
        outcome.error = CodeError(
            name="WorkspaceFull",
            value=(
                f"the session's files took {used} bytes, over the {self._limits.max_file_bytes}-byte limit, "
                "so the workspace was emptied"
            ),
            traceback="",
        )


async def _supervise(
    process: Process, output: OutputCapture, limits: SandboxLimits, report_fd: int
) -> RunOutcome:
    """Stream the output, stop the process on timeout or at the output cap, and collect the report."""
    stopped: list[StopReason] = []
    report: dict[str, Any] = {}
    try:
        async with anyio.create_task_group() as tasks:
            watcher = anyio.CancelScope()
            tasks.start_soon(_watch, process, output, limits.timeout_seconds, stopped, watcher)
            assert process.stdout is not None and process.stderr is not None
            tasks.start_soon(_pump, process.stdout, "stdout", output)
            tasks.start_soon(_pump, process.stderr, "stderr", output)
            tasks.start_soon(_read_report, report_fd, report)
            await process.wait()
            watcher.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _kill(process)
    return _outcome(process, output, stopped, report)


async def _watch(
    process: Process,
    output: OutputCapture,
    seconds: float,
    stopped: list[StopReason],
    scope: anyio.CancelScope,
) -> None:
    with scope:
        reason: StopReason = "timeout"
        with anyio.move_on_after(seconds):
            await output.full.wait()
            reason = "output_cap"
        stopped.append(reason)
        _kill_group(process)


async def _pump(stream: ByteReceiveStream, name: Literal["stdout", "stderr"], output: OutputCapture) -> None:
    # Reads to the end even past the cap, so the process never blocks on a full pipe while it is killed.
    with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        while True:
            output.add(name, await stream.receive(READ_CHUNK))


async def _read_report(fd: int, report: dict[str, Any]) -> None:
    data = await anyio.to_thread.run_sync(_read_all, fd, abandon_on_cancel=True)
    report.update(parse_report(data))


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(READ_CHUNK):
            size += len(chunk)
            if size <= MAX_REPORT_BYTES:
                chunks.append(chunk)
    return b"".join(chunks) if size <= MAX_REPORT_BYTES else b""


def _outcome(
    process: Process, output: OutputCapture, stopped: list[StopReason], report: dict[str, Any]
) -> RunOutcome:
    reason = stopped[0] if stopped else None
    code = process.returncode
    exit_code = None if reason is not None or code is None or code < 0 else code
    outcome = RunOutcome(
        stdout=output.text("stdout"),
        stderr=output.text("stderr"),
        exit_code=exit_code,
        seconds=0.0,
        error=report_error(report.get("error")),
        results=report_results(report.get("results")),
        stopped=reason,
        output_capped=output.capped,
    )
    if reason is None and code is not None and code < 0:
        outcome.error = outcome.error or CodeError(
            name="Killed", value=f"the code was ended by signal {signal.Signals(-code).name}", traceback=""
        )
    return outcome


async def _kill(process: Process) -> None:
    _kill_group(process)
    with anyio.move_on_after(REAP_SECONDS):
        await process.wait()
    # The pipes are closed here rather than when the process object is garbage collected,
    # which would leave their file descriptors open until then.
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            await stream.aclose()
    close_transport(process)


def _kill_group(process: Process) -> None:
    # bubblewrap leads its own process group; killing it kills the namespace's init (it dies with
    # its parent), and the kernel then kills every process left in the namespace.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _probe(programs: _Programs) -> None:
    """Run `true` in an empty sandbox; raise SandboxUnavailable with bubblewrap's reason if it fails."""
    user = programs.user
    argv = [programs.bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"]
    argv += [*_merged_usr_links(), "--", "/usr/bin/true"]
    try:
        with anyio.fail_after(PROBE_SECONDS):
            result = await anyio.run_process(
                argv,
                check=False,
                env={"PATH": "/usr/bin:/bin"},
                user=user[0] if user else None,
                group=user[1] if user else None,
                extra_groups=[] if user else None,
            )
    except TimeoutError:
        raise SandboxUnavailable(
            KIND, "bubblewrap did not start within 10 s", "Check that bwrap runs here."
        ) from None
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise SandboxUnavailable(
            KIND,
            f"bubblewrap cannot create namespaces here ({reason[0]})",
            "Enable unprivileged user namespaces (sysctl user.max_user_namespaces > 0, and on Debian "
            "kernel.unprivileged_userns_clone = 1), or choose another [sandbox] backend.",
        )


def _merged_usr_links() -> list[str]:
    """Recreate /bin, /lib, /lib64 and /sbin as the host has them: links into /usr, or read-only binds."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib64"):
        path = Path("/", name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _install_root(program: str) -> str:
    """Return the installation folder of a program outside /usr, such as /opt/python3.12 for its bin/python3."""
    return str(Path(program).parent.parent)


def _code_file(code: str) -> int:
    """Return a file descriptor holding the code, positioned at the start, for `--ro-bind-data`."""
    fd = os.memfd_create("mcp-guard-code")
    data = code.encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _session_workspace(programs: _Programs) -> Path:
    """Create a host folder for a session's files, readable only by the user the sandbox runs as."""
    parent = Path(tempfile.mkdtemp(prefix="mcp-guard-session-"))
    workspace = parent / "workspace"
    workspace.mkdir(mode=0o700)
    if programs.user is not None:
        os.chown(parent, *programs.user)
        os.chown(workspace, *programs.user)
    return workspace


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _empty_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with suppress(OSError):
                child.unlink()
