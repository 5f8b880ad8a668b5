"""The `docker` sandbox backend: one locked-down container per sandbox, through the Docker API.

It drives Docker or Podman's Docker-compatible API with the `docker` SDK. This
is the only module that imports `docker`; the SDK is synchronous, so every call
runs in a worker thread, and its errors become `SandboxUnavailable` or
`SandboxFailed` in `_call`.

A sandbox is one container whose first process (the keeper, PID 1) only reaps
children and, on SIGUSR1, kills every other process in the container. The
container has no network, a read-only root, size-limited tmpfs mounts for
/workspace and the scratch folders, memory (without swap), CPU and process
limits, rlimits, no capabilities, `no-new-privileges`, a non-root user and
auto-removal. Each run is an `exec` in it:

- the code travels over the exec's stdin, length-prefixed, and a small Python
  prelude puts it in a memory file, so nothing is written to the image's
  read-only root;
- the prelude runs the language's program, waits for it, and then kills every
  other process the code started, so the run's output ends with its program;
- output streams into `OutputCapture` frame by frame; the Python driver's report
  is split off stderr at a random marker;
- after every run, however it ended, the keeper is sent SIGUSR1 and the run
  counts as over only when the container's process count is back to one, so no
  double-forked process outlives its run.

Files in /workspace stay between runs of one sandbox and go with its container.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import anyio
import docker  # type: ignore[import-untyped]
import structlog
from docker.errors import DockerException, ImageNotFound, NotFound  # type: ignore[import-untyped]
from docker.types import Ulimit  # type: ignore[import-untyped]

from mcp_guard.config.sandbox import DockerSandboxSettings, SandboxSettings
from mcp_guard.errors import SandboxFailed, SandboxUnavailable
from mcp_guard.sandbox.base import (
    CodeRun,
    Language,
    OutputCapture,
    RunOutcome,
    SandboxLimits,
    SandboxTag,
    StopReason,
    reject_allowed_hosts,
)
from mcp_guard.sandbox.docker_stream import ExecStream, run_outcome
from mcp_guard.sandbox.owner import is_orphan, new_owner

log = structlog.get_logger(module=__name__)

KIND = "docker"
# Docker API address the SDK uses when neither base_url nor DOCKER_HOST is set.
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
DRIVER_SOURCE = (Path(__file__).parent / "driver.py").read_text(encoding="utf-8")
PYTHON = "/usr/bin/python3"
SHELL = "/bin/sh"
NODE = "/usr/bin/node"
WORKSPACE = "/workspace"
# Writable tmpfs mounts besides the workspace. Podman mounts /run and /var/tmp on a read-only
# container unless they are given here, and then without a size limit.
SCRATCH_FOLDERS = ("/tmp", "/var/tmp", "/run")
# The only environment the code gets. The daemon may add its own defaults (Podman adds PATH,
# TERM, HOSTNAME and `container`), never the gateway's variables.
SANDBOX_ENV = {"HOME": WORKSPACE, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

LABEL = "mcp-guard.sandbox"
LABEL_OWNER = "mcp-guard.owner"
LABEL_CLIENT = "mcp-guard.client"
LABEL_CALL = "mcp-guard.call-id"
LABEL_SESSION = "mcp-guard.session"

# Open files one process may have.
MAX_OPEN_FILES = 256
READ_CHUNK = 65_536
# Bounds each Docker API request (not the output stream, which the run's timeout bounds).
API_SECONDS = 30.0
# Bounds the wait for every process of a finished run to be gone.
CLEANUP_SECONDS = 5.0
# How often the process count is read while waiting for the clean-up.
CLEANUP_POLL_SECONDS = 0.02
# SIGUSR1 is sent again this often while processes remain: the keeper ignores one that arrives
# before it has blocked the signal.
CLEANUP_RESEND_SECONDS = 0.25
# Bounds the removal of a container in `aclose` and `remove_orphans`.
REMOVE_SECONDS = 10.0
# Limits of the container that `check` starts to try the whole set-up once.
PROBE_LIMITS = SandboxLimits(
    timeout_seconds=20.0,
    cpu_seconds=10,
    memory_bytes=64 * 1024 * 1024,
    max_processes=16,
    max_file_bytes=1024 * 1024,
    max_output_bytes=4096,
)

# PID 1 of every sandbox container. It must not exit (the container would go with it), so it only
# reaps orphans and, on SIGUSR1, kills all other processes: kill(-1) skips the caller and PID 1,
# and fails with ESRCH once no other process is left. Handlers are set so that the signals are
# delivered to a namespace's init at all; blocking them hands them to sigwait instead.
KEEPER_SOURCE = """\
import os, signal, time
def reap():
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
handled = {signal.SIGCHLD, signal.SIGUSR1}
for number in handled:
    signal.signal(number, lambda *_: None)
signal.pthread_sigmask(signal.SIG_BLOCK, handled)
while True:
    if signal.sigwait(handled) == signal.SIGUSR1:
        while True:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                break
            reap()
            time.sleep(0.002)
    reap()
"""

# Runs one piece of code: reads "<size>\\n<code>" from stdin into a memory file, runs argv with
# "{code}" replaced by that file's path, waits for it, kills whatever it left behind, and exits
# with its status (128 + N when signal N ended it).
PRELUDE_SOURCE = """\
import os, signal, sys, time
size = int(sys.stdin.buffer.readline())
code = sys.stdin.buffer.read(size)
fd = os.memfd_create("code", 0)
view = memoryview(code)
while view:
    view = view[os.write(fd, view):]
os.lseek(fd, 0, os.SEEK_SET)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
argv = [f"/proc/self/fd/{fd}" if arg == "{code}" else arg for arg in sys.argv[1:]]
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
os.close(fd)
status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        break
    time.sleep(0.002)
os._exit(128 - status if status < 0 else status)
"""

T = TypeVar("T")


class DockerBackend:
    """Runs code in containers through the Docker API of Docker or Podman."""

    kind = KIND

    def __init__(self, settings: SandboxSettings, environ: Mapping[str, str]) -> None:
        self._settings: DockerSandboxSettings = settings.docker
        self._allowed_hosts = tuple(settings.allowed_hosts)
        self._base_url = settings.docker.base_url or environ.get("DOCKER_HOST") or None
        self._client: Any = None
        self._checked = False
        # Written on every container, so that `remove_orphans` can tell this process's containers
        # from those of an earlier gateway.
        self._owner = new_owner()
        # NOTE: JavaScript is offered only when `check` finds Node.js in the image; that path has
        # no test here, because the test image has no Node.js.
        self.languages: frozenset[Language] = frozenset(("python", "shell"))

    async def check(self) -> None:
        """Reach the API, find the image, and run one probe sandbox; raise SandboxUnavailable if any fails."""
        if self._checked:
            return
        reject_allowed_hosts(KIND, self._allowed_hosts)
        client = await self._connect()
        await self._find_image(client)
        has_node = await self._probe(client)
        if has_node:
            self.languages = frozenset(("python", "shell", "javascript"))
        self._checked = True

    async def create(self, limits: SandboxLimits, tag: SandboxTag) -> DockerSandbox:
        """Start a container held to `limits`, labelled with `tag`, ready for runs."""
        reject_allowed_hosts(KIND, limits.allowed_hosts)
        await self.check()
        return await self._start(self._client, limits, tag)

    async def remove_orphans(self) -> int:
        """Remove containers left by an earlier gateway on this host; return how many.

        Only containers of gateway processes that have ended count (see `owner.py`); those of
        gateways still running, or on other hosts, are left alone.
        """
        client = await self._connect()
        containers = await _call(
            lambda: client.containers.list(all=True, filters={"label": f"{LABEL}=1"}), "list containers"
        )
        removed = 0
        for container in containers:
            owner = container.labels.get(LABEL_OWNER, "")
            if is_orphan(owner, self._owner):
                with anyio.move_on_after(REMOVE_SECONDS):
                    await _remove(client, container.id)
                    removed += 1
                    log.info("sandbox_orphan_removed", backend=KIND, container=container.short_id)
        return removed

    async def aclose(self) -> None:
        """Close the API client's connections."""
        client, self._client = self._client, None
        if client is not None:
            with suppress(DockerException, OSError):
                await anyio.to_thread.run_sync(client.close)

    async def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        where = self._base_url or DEFAULT_DOCKER_URL
        # The SDK leaks the socket of a failed connection, and a missing file gives a clearer error anyway.
        socket_path = where.removeprefix("unix://") if where.startswith("unix://") else None

        def open_client() -> Any:
            if socket_path is not None and not os.path.exists(socket_path):
                raise FileNotFoundError(f"{socket_path} does not exist")
            return docker.DockerClient(base_url=self._base_url, version="auto", timeout=API_SECONDS)

        try:
            client = await anyio.to_thread.run_sync(open_client, abandon_on_cancel=True)
            await anyio.to_thread.run_sync(client.ping, abandon_on_cancel=True)
        except (DockerException, OSError) as exc:
            raise SandboxUnavailable(
                KIND,
                f"no Docker API answers at {where} ({_reason(exc)})",
                "Start Docker, or start Podman's API with `podman system service --time=0 "
                f"{podman_socket_url()}`, and set [sandbox.docker] base_url (or DOCKER_HOST) "
                "to its address.",
            ) from None
        self._client = client
        return client

    async def _find_image(self, client: Any) -> None:
        image = self._settings.image
        try:
            await anyio.to_thread.run_sync(client.images.get, image, abandon_on_cancel=True)
        except ImageNotFound:
            raise SandboxUnavailable(
                KIND,
                f"the image {image!r} was not found on the Docker host",
                "Build it (docs/sandbox-docker.md shows how, offline), or set [sandbox.docker] image "
                "to an image with /usr/bin/python3 and /bin/sh.",
            ) from None
        except (DockerException, OSError) as exc:
            raise SandboxUnavailable(
                KIND, f"the image {image!r} could not be looked up ({_reason(exc)})", "Check the Docker host."
            ) from None

    async def _probe(self, client: Any) -> bool:
        """Run one tiny program in a container like every sandbox's; return whether the image has Node.js."""
        code = f"import os\n[os.path.exists({NODE!r}), os.access({WORKSPACE!r}, os.W_OK)]"
        try:
            sandbox = await self._start(client, PROBE_LIMITS, SandboxTag(client="mcp-guard", call_id="check"))
            try:
                outcome = await sandbox.run(CodeRun("python", code), OutputCapture(4096))
            finally:
                await sandbox.aclose()
        except SandboxFailed as exc:
            raise SandboxUnavailable(
                KIND,
                f"a test container could not run ({exc.reason})",
                "Check that the image has /usr/bin/python3 and that the daemon can run it with the limits "
                "in docs/sandbox-docker.md (Podman needs the runc runtime on some hosts: set "
                '[sandbox.docker] runtime = "runc").',
            ) from None
        values = [result.data for result in outcome.results]
        if not values or values[0] not in ("[True, True]", "[False, True]"):
            return self._probe_failed(outcome, values)
        return values[0] == "[True, True]"

    def _probe_failed(self, outcome: RunOutcome, values: list[str]) -> bool:
        image = self._settings.image
        if values and values[0].endswith("False]"):
            raise SandboxUnavailable(
                KIND,
                f"{WORKSPACE} is not writable by user {self._settings.user} in the image {image!r}",
                f"Give {WORKSPACE} mode 1777 in the image (Podman keeps the image folder's mode on the "
                "tmpfs mounted over it).",
            )
        detail = outcome.error.value if outcome.error else outcome.stderr.strip()[-300:]
        raise SandboxUnavailable(
            KIND,
            f"a test run in the image {image!r} failed: {detail!r}",
            "Check that /usr/bin/python3 in the image runs with `python3 -I -S`.",
        )

    async def _start(self, client: Any, limits: SandboxLimits, tag: SandboxTag) -> DockerSandbox:
        options = self._container_options(limits, tag)
        container = await _call(lambda: client.containers.create(**options), "create a container")
        sandbox = DockerSandbox(client, container.id, self._settings.user, limits, self.languages)
        try:
            await _call(container.start, "start the container")
        except BaseException:
            await sandbox.aclose()
            raise
        log.debug("sandbox_container_started", backend=KIND, container=container.short_id, client=tag.client)
        return sandbox

    def _container_options(self, limits: SandboxLimits, tag: SandboxTag) -> dict[str, Any]:
        size = limits.max_file_bytes
        labels = {LABEL: "1", LABEL_OWNER: self._owner, LABEL_CLIENT: tag.client, LABEL_CALL: tag.call_id}
        if tag.session is not None:
            labels[LABEL_SESSION] = tag.session
        tmpfs = {WORKSPACE: f"size={size},mode=1777"}
        tmpfs.update({folder: f"size={size},mode=1777" for folder in SCRATCH_FOLDERS})
        return {
            "image": self._settings.image,
            "command": [PYTHON, "-I", "-S", "-c", KEEPER_SOURCE],
            "user": self._settings.user,
            "working_dir": WORKSPACE,
            "environment": SANDBOX_ENV,
            "hostname": "sandbox",
            "network_mode": "none",
            "read_only": True,
            "tmpfs": tmpfs,
            "shm_size": size,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": limits.memory_bytes,
            # Equal to the memory limit, so the container gets no swap.
            "memswap_limit": limits.memory_bytes,
            "nano_cpus": int(self._settings.cpus * 1e9),
            "pids_limit": limits.max_processes,
            "ulimits": _ulimits(limits),
            "labels": labels,
            "auto_remove": True,
            "runtime": self._settings.runtime,
            "detach": True,
        }


class DockerSandbox:
    """One container; runs take turns in it, and its /workspace lasts as long as it does."""

    def __init__(
        self,
        client: Any,
        container_id: str,
        user: str,
        limits: SandboxLimits,
        languages: frozenset[Language],
    ) -> None:
        self._client = client
        self.container_id = container_id
        self._user = user
        self._limits = limits
        self._languages = languages
        self._closed = False

    async def run(self, run: CodeRun, output: OutputCapture) -> RunOutcome:
        """Run the code as an exec in the container, then end every process it started."""
        if self._closed:
            raise SandboxFailed(KIND, "the sandbox was already destroyed")
        if run.language not in self._languages:
            raise SandboxUnavailable(
                KIND,
                f"the image has no interpreter for {run.language}",
                f"Use an image with {NODE} to run JavaScript.",
            )
        started = time.monotonic()
        marker = f"mcp-guard-report-{secrets.token_hex(16)}:"
        stream = ExecStream(output, ("\n" + marker).encode("ascii"))
        stopped: list[StopReason] = []
        exit_code: int | None = None
        try:
            with anyio.move_on_after(self._limits.timeout_seconds) as deadline:
                exit_code = await self._execute(self._argv(run.language, marker), run.code, stream, stopped)
            if deadline.cancelled_caught and not stopped:
                stopped.append("timeout")
        finally:
            with anyio.CancelScope(shield=True):
                await self._end_processes()
        outcome = run_outcome(stream, stopped, exit_code)
        outcome.seconds = time.monotonic() - started
        return outcome

    async def aclose(self) -> None:
        """Remove the container (with force); a container that is already gone is no error."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(REMOVE_SECONDS, shield=True) as scope:
            try:
                await _remove(self._client, self.container_id)
            except SandboxFailed as exc:
                log.error(
                    "sandbox_not_destroyed", backend=KIND, container=self.container_id[:12], error=str(exc)
                )
        if scope.cancelled_caught:
            log.error(
                "sandbox_not_destroyed",
                backend=KIND,
                container=self.container_id[:12],
                error=f"no answer within {REMOVE_SECONDS:g} s",
            )

    def _argv(self, language: Language, marker: str) -> list[str]:
        prelude = [PYTHON, "-I", "-S", "-c", PRELUDE_SOURCE]
        if language == "python":
            return [*prelude, PYTHON, "-I", "-S", "-c", DRIVER_SOURCE, f"marker:{marker}", "{code}"]
        if language == "javascript":
            heap_mb = max(16, self._limits.memory_bytes // (1024 * 1024))
            return [*prelude, NODE, f"--max-old-space-size={heap_mb}", "{code}"]
        return [*prelude, SHELL, "{code}"]

    async def _execute(
        self, argv: list[str], code: str, stream: ExecStream, stopped: list[StopReason]
    ) -> int | None:
        """Start the exec, send the code, and stream its output until it ends or reaches the cap."""
        api = self._client.api
        exec_id = await _call(
            lambda: api.exec_create(
                self.container_id,
                argv,
                stdin=True,
                stdout=True,
                stderr=True,
                user=self._user,
                workdir=WORKSPACE,
                environment=SANDBOX_ENV,
            )["Id"],
            "create an exec",
        )
        connection = await _call(lambda: api.exec_start(exec_id, socket=True), "start an exec")
        # The SDK hands back a SocketIO around the socket for local and TCP connections.
        raw = getattr(connection, "_sock", connection)
        raw.settimeout(None)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_send_code, raw, code)
                if not await _pump(raw, stream):
                    stopped.append("output_cap")
                tasks.cancel_scope.cancel()
        finally:
            _close_socket(raw, connection)
        if stopped:
            return None
        details = await _call(lambda: api.exec_inspect(exec_id), "read the exit code")
        code_value = details.get("ExitCode")
        return code_value if isinstance(code_value, int) else None

    async def _end_processes(self) -> None:
        """Have the keeper kill every other process, and wait until the container counts one process."""
        api = self._client.api
        with anyio.move_on_after(CLEANUP_SECONDS) as scope:
            while True:
                await _call(lambda: api.kill(self.container_id, signal="SIGUSR1"), "signal the container")
                with anyio.move_on_after(CLEANUP_RESEND_SECONDS):
                    # The API has no event for a process count, so it is read until it drops.
                    while await self._process_count() > 1:  # noqa: ASYNC110
                        await anyio.sleep(CLEANUP_POLL_SECONDS)
                    return
        if scope.cancelled_caught:
            self._closed = True
            raise SandboxFailed(
                KIND, f"the run's processes were still alive {CLEANUP_SECONDS:g} s after it ended"
            )

    async def _process_count(self) -> int:
        api = self._client.api
        stats = await _call(
            lambda: api.stats(self.container_id, stream=False, one_shot=True), "read the process count"
        )
        current = (stats.get("pids_stats") or {}).get("current")
        if not isinstance(current, int):
            raise SandboxFailed(KIND, "the Docker API reported no process count for the container")
        return current


async def _send_code(raw: Any, code: str) -> None:
    data = code.encode("utf-8")
    payload = str(len(data)).encode("ascii") + b"\n" + data
    with suppress(OSError):
        await anyio.to_thread.run_sync(raw.sendall, payload, abandon_on_cancel=True)


async def _pump(raw: Any, stream: ExecStream) -> bool:
    """Read the exec's output to its end; return False when it stopped at the output cap."""
    while True:
        try:
            data = await anyio.to_thread.run_sync(raw.recv, READ_CHUNK, abandon_on_cancel=True)
        except OSError:
            data = b""
        if not data:
            stream.finish()
            return True
        if not stream.feed(data):
            return False


def _close_socket(raw: Any, connection: Any) -> None:
    # shutdown() wakes a worker thread still blocked in recv(); close() alone would not. The socket
    # is released only once the SDK's SocketIO wrapper around it is closed too.
    with suppress(OSError):
        raw.shutdown(socket.SHUT_RDWR)
    for stream in (connection, raw):
        with suppress(OSError):
            stream.close()


def _ulimits(limits: SandboxLimits) -> list[Any]:
    # nofile and nproc are set explicitly because Podman on some hosts cannot raise its defaults.
    # NOTE: RLIMIT_NPROC counts every process of the user on the host, so sandboxes running at once
    # (and other processes of that user) share it; pids_limit is the per-container bound.
    values = {
        "cpu": limits.cpu_seconds,
        "fsize": limits.max_file_bytes,
        "nproc": limits.max_processes,
        "nofile": MAX_OPEN_FILES,
        "core": 0,
    }
    return [Ulimit(name=name, soft=value, hard=value) for name, value in values.items()]


async def _remove(client: Any, container_id: str) -> None:
    """Remove a container with force; one that is gone (or already being removed) is no error."""
    try:
        await anyio.to_thread.run_sync(
            lambda: client.api.remove_container(container_id, force=True), abandon_on_cancel=True
        )
    except NotFound:
        return
    except DockerException as exc:
        # The daemon may already be removing it: `auto_remove` starts when the keeper dies.
        if getattr(exc, "status_code", None) == 409:
            return
        raise SandboxFailed(KIND, f"the container could not be removed ({_reason(exc)})") from None
    except OSError as exc:
        raise SandboxFailed(KIND, f"the container could not be removed ({_reason(exc)})") from None


async def _call(function: Callable[[], T], action: str) -> T:
    """Run one blocking SDK call in a worker thread, translating its errors into `SandboxFailed`."""
    try:
        return await anyio.to_thread.run_sync(function, abandon_on_cancel=True)
    except NotFound:
        raise SandboxFailed(KIND, f"could not {action}: the container is gone") from None
    except (DockerException, OSError) as exc:
        raise SandboxFailed(KIND, f"could not {action} ({_reason(exc)})") from None


def podman_socket_url() -> str:
    """Return the address where Podman serves its API for this user by default."""
    if os.geteuid() == 0:
        return "unix:///run/podman/podman.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return f"unix://{runtime}/podman/podman.sock"


def _reason(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."
