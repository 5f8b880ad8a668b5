"""What the benchmark connects to: the fixture server alone or behind the gateway.

Each `Case` starts its servers on 127.0.0.1 and yields a `Target` that opens SDK client
sessions. Every process started here is a descendant of the benchmark process, and
`stop_descendants` stops whatever is still running by PID when a case ends. How calls are
timed and counted is left to `measure.py`.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx2
import psutil
import tomli_w
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_SERVER = ROOT / "tests" / "fixtures" / "fixture_server.py"
LINE_PROXY = Path(__file__).parent / "line_proxy.py"
HOST = "127.0.0.1"
FIXTURE_ID = "fixture"
# Exported names are `<server id>__<tool>`.
GATEWAY_TOOL = f"{FIXTURE_ID}__echo"
DIRECT_TOOL = "echo"
# Bounds how long a server started in the background may take to write its port file.
START_TIMEOUT_SECONDS = 30.0
# Bounds how long a process gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_SECONDS = 5.0
PORT_POLL_SECONDS = 0.02
# The HTTP client's timeouts, the same as the SDK's default client. A response stream may stay
# open for a long time, so reads may take longer than connecting and writing.
HTTP_TIMEOUT_SECONDS = 30.0
HTTP_READ_TIMEOUT_SECONDS = 300.0
# Client profile the HTTP gateway authenticates the benchmark as.
BENCH_CLIENT = "bench"


class BenchmarkError(Exception):
    """A server failed to start or returned a wrong result, so the run cannot go on."""


@dataclass(frozen=True)
class ServerProcesses:
    """The processes behind a session, whose CPU time and memory the benchmark reads."""

    fixture: psutil.Process
    gateway: psutil.Process | None


class Session:
    """One connected client, with its server processes looked up on first use.

    Finding a process spawned over stdio walks /proc, so the look-up is kept out of
    the timed session set-up.
    """

    def __init__(self, client: Client, find_processes: Callable[[], ServerProcesses]) -> None:
        self.client = client
        self._find_processes = find_processes
        self._processes: ServerProcesses | None = None

    def processes(self) -> ServerProcesses:
        """Return the fixture and gateway processes serving this session."""
        if self._processes is None:
            self._processes = self._find_processes()
        return self._processes


class Target(Protocol):
    """Something a client can open sessions to, in either protocol mode."""

    tool: str
    """Name under which the client calls the fixture's `echo`."""

    def connect(self, mode: str) -> AbstractAsyncContextManager[Session]:
        """Open a client session in `mode` ("legacy" or a 2026 protocol version)."""
        ...


@dataclass(frozen=True)
class Goals:
    """What a gateway case must reach, compared with its direct baseline."""

    max_p50_ratio: float
    min_throughput_ratio: float = 0.6
    max_cpu_ms: float = 1.0
    max_rss_mib: float | None = None


# The bare gateway (no audit trail, no limits) against a direct stdio call.
BARE_GOALS = Goals(max_p50_ratio=1.6)
# Every guard on: argument rules, SQLite limits and the audit trail.
GUARDED_STDIO_GOALS = Goals(max_p50_ratio=2.0, max_rss_mib=80.0)
# Every guard on, over HTTP in front of a stdio fixture, against a direct HTTP call.
GUARDED_HTTP_GOALS = Goals(max_p50_ratio=1.2, max_rss_mib=80.0)


@dataclass(frozen=True)
class Case:
    """One way of reaching the fixture's `echo` tool."""

    key: str
    path: str
    """The hops a call takes, for the tables."""
    baseline: str | None
    """Key of the direct case this gateway case is compared with."""
    start: Callable[[Path], AbstractContextManager[Target]]
    goals: Goals | None = None
    """The targets of this case; a case without any is compared with its baseline only."""


class StdioTarget:
    """A server that each session starts as a child process and speaks to over stdio.

    Args:
        gateway: Whether the command runs a process between the client and the fixture (the
            gateway, or the minimal proxy) rather than the fixture itself.
        fixture: The fixture process, when it runs in the background instead of below the
            spawned command.
    """

    def __init__(
        self,
        command: Sequence[str],
        tool: str,
        log_path: Path,
        *,
        gateway: bool,
        fixture: psutil.Process | None = None,
    ) -> None:
        self.tool = tool
        self._command = list(command)
        self._log_path = log_path
        self._gateway = gateway
        self._fixture = fixture

    @asynccontextmanager
    async def connect(self, mode: str) -> AsyncIterator[Session]:
        """Spawn the server, complete the handshake (or adopt `mode`) and yield the session."""
        parameters = StdioServerParameters(command=self._command[0], args=self._command[1:], cwd=str(ROOT))
        with self._log_path.open("a", encoding="utf-8") as errlog:
            async with Client(stdio_client(parameters, errlog=errlog), mode=mode) as client:
                yield Session(client, self._find_processes)

    def _find_processes(self) -> ServerProcesses:
        # Matched on the whole command line: every case's session stays open during a round,
        # and the cases' commands differ (each gateway has its own policy file).
        spawned = _only_child_running(psutil.Process(), self._command)
        if not self._gateway:
            return ServerProcesses(fixture=spawned, gateway=None)
        fixture = self._fixture or _only_child(spawned, FIXTURE_SERVER.name)
        return ServerProcesses(fixture=fixture, gateway=spawned)


class HttpTarget:
    """A server already listening on streamable HTTP, with the processes behind it.

    Args:
        api_key: Bearer key sent with every request, for a server that requires one.
    """

    def __init__(self, url: str, tool: str, processes: ServerProcesses, api_key: str | None = None) -> None:
        self.tool = tool
        self.url = url
        self._processes = processes
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @asynccontextmanager
    async def connect(self, mode: str) -> AsyncIterator[Session]:
        """Open a client session to the URL in `mode`."""
        timeout = httpx2.Timeout(HTTP_TIMEOUT_SECONDS, read=HTTP_READ_TIMEOUT_SECONDS)
        async with (
            httpx2.AsyncClient(headers=self._headers, timeout=timeout) as http,
            Client(streamable_http_client(self.url, http_client=http), mode=mode) as client,
        ):
            yield Session(client, lambda: self._processes)


def cases() -> list[Case]:
    """Return every case, each direct case before the gateway cases compared with it."""
    return [
        Case("direct-stdio", "client → fixture (stdio)", None, _direct_stdio),
        Case(
            "proxy-stdio",
            "client → minimal line proxy (stdio) → fixture (stdio)",
            "direct-stdio",
            _proxy_stdio,
        ),
        Case("gateway-stdio", "client → gateway (stdio) → fixture (stdio)", "direct-stdio", _gateway_stdio),
        Case("bare-stdio", "as gateway-stdio, audit trail off", "direct-stdio", _bare_stdio, BARE_GOALS),
        Case("limits-stdio", "as gateway-stdio, with SQLite rate limits", "direct-stdio", _limits_stdio),
        Case(
            "guarded-stdio",
            "as gateway-stdio, all guards: argument rules, SQLite limits, audit",
            "direct-stdio",
            _guarded_stdio,
            GUARDED_STDIO_GOALS,
        ),
        Case("direct-http", "client → fixture (HTTP)", None, _direct_http),
        Case("gateway-http", "client → gateway (HTTP) → fixture (stdio)", "direct-http", _gateway_http),
        Case(
            "guarded-http",
            "as gateway-http, all guards as in guarded-stdio",
            "direct-http",
            _guarded_http,
            GUARDED_HTTP_GOALS,
        ),
        Case(
            "gateway-stdio-http",
            "client → gateway (stdio) → fixture (HTTP)",
            "direct-http",
            _gateway_stdio_http,
        ),
    ]


@contextmanager
def _direct_stdio(workdir: Path) -> Iterator[Target]:
    yield StdioTarget(fixture_command(), DIRECT_TOOL, workdir / "fixture.log", gateway=False)


@contextmanager
def _proxy_stdio(workdir: Path) -> Iterator[Target]:
    command = [sys.executable, str(LINE_PROXY), *fixture_command()]
    yield StdioTarget(command, DIRECT_TOOL, workdir / "proxy.log", gateway=True)


@contextmanager
def _gateway_stdio(workdir: Path) -> Iterator[Target]:
    policy = write_policy(workdir, {"command": sys.executable, "args": fixture_command()[1:]})
    yield StdioTarget(gateway_command(policy), GATEWAY_TOOL, workdir / "gateway.log", gateway=True)


@contextmanager
def _bare_stdio(workdir: Path) -> Iterator[Target]:
    server = {"command": sys.executable, "args": fixture_command()[1:]}
    policy = write_policy(workdir, server, audit=False)
    yield StdioTarget(gateway_command(policy), GATEWAY_TOOL, workdir / "gateway.log", gateway=True)


@contextmanager
def _limits_stdio(workdir: Path) -> Iterator[Target]:
    server = {"command": sys.executable, "args": fixture_command()[1:]}
    policy = write_policy(workdir, server, limits=True)
    yield StdioTarget(gateway_command(policy), GATEWAY_TOOL, workdir / "gateway.log", gateway=True)


@contextmanager
def _guarded_stdio(workdir: Path) -> Iterator[Target]:
    server = {"command": sys.executable, "args": fixture_command()[1:]}
    policy = write_policy(workdir, server, limits=True, constraints=True)
    yield StdioTarget(gateway_command(policy), GATEWAY_TOOL, workdir / "gateway.log", gateway=True)


@contextmanager
def _direct_http(workdir: Path) -> Iterator[Target]:
    with http_fixture(workdir) as (fixture, url):
        yield HttpTarget(url, DIRECT_TOOL, ServerProcesses(fixture, None))


@contextmanager
def _gateway_http(workdir: Path, *, guarded: bool = False) -> Iterator[Target]:
    # A fresh random key for each run, so no key is stored anywhere. The policy contains its hash.
    api_key = secrets.token_urlsafe(32)
    server = {"command": sys.executable, "args": fixture_command()[1:]}
    policy = write_policy(workdir, server, api_key=api_key, limits=guarded, constraints=guarded)
    command = [*gateway_command(policy), "--transport", "http"]
    with _background_server(command, workdir, "gateway") as (gateway, port):
        fixture = _only_child(gateway, FIXTURE_SERVER.name)
        url = f"http://{HOST}:{port}/mcp"
        yield HttpTarget(url, GATEWAY_TOOL, ServerProcesses(fixture, gateway), api_key=api_key)


@contextmanager
def _guarded_http(workdir: Path) -> Iterator[Target]:
    with _gateway_http(workdir, guarded=True) as target:
        yield target


@contextmanager
def _gateway_stdio_http(workdir: Path) -> Iterator[Target]:
    with http_fixture(workdir) as (fixture, url):
        policy = write_policy(workdir, {"url": url})
        log_path = workdir / "gateway.log"
        yield StdioTarget(gateway_command(policy), GATEWAY_TOOL, log_path, gateway=True, fixture=fixture)


def fixture_command() -> list[str]:
    """Return the command line that runs the fixture server over stdio."""
    return [sys.executable, str(FIXTURE_SERVER), "--name", FIXTURE_ID]


def gateway_command(policy: Path) -> list[str]:
    """Return the command line that runs the gateway over stdio with `policy`."""
    return [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy)]


def write_policy(
    workdir: Path,
    server: dict[str, object],
    *,
    api_key: str | None = None,
    audit: bool = True,
    limits: bool = False,
    constraints: bool = False,
) -> Path:
    """Write a policy file with `server` as the fixture's `[servers]` table; return its path.

    Args:
        api_key: If given, the policy defines the client `BENCH_CLIENT` with this key, so an HTTP
            gateway accepts requests that send it as a bearer token.
        audit: Whether the gateway keeps its audit trail; off measures the gateway without it.
        limits: Whether every call passes a rate limit of four dimensions, counted in the default
            SQLite store, with limits high enough never to refuse a call of the benchmark.
        constraints: Whether the rule also limits `echo`'s `text` argument to a length, a pattern and
            a forbidden substring, which every call of the benchmark meets.
    """
    # One rule lets every client call `echo`, and every other setting keeps its default.
    allow_echo = {
        "name": "benchmark-echo",
        "clients": ["*"],
        "server": FIXTURE_ID,
        "tools": [DIRECT_TOOL],
        "decision": "auto",
        "write": True,
    }
    if constraints:
        allow_echo["arguments"] = {
            "text": {"required": True, "max_length": 1000, "full_match": "[ -~]*", "never_contains": "rm -rf"}
        }
    policy: dict[str, object] = {
        "gateway": {"state_dir": str(workdir / "state")},
        "rules": [allow_echo],
        "servers": {FIXTURE_ID: server},
    }
    if not audit:
        policy["audit"] = {"enabled": False}
    if limits:
        many = 10**9
        dimensions = ("requests_per_minute", "requests_per_day", "tokens_per_minute", "concurrent_calls")
        policy["limits"] = {"rules": [{"name": "benchmark", **dict.fromkeys(dimensions, many)}]}
    if api_key is not None:
        key_hash = "sha256:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()
        policy["clients"] = {BENCH_CLIENT: {"api_key_hashes": [key_hash]}}
    path = workdir / "policy.toml"
    path.write_text(tomli_w.dumps(policy), encoding="utf-8")
    return path


@contextmanager
def http_fixture(workdir: Path) -> Iterator[tuple[psutil.Process, str]]:
    """Run the fixture over HTTP until the block ends; yield its process and MCP URL."""
    command = [*fixture_command(), "--transport", "http", "--host", HOST]
    with _background_server(command, workdir, "fixture-http") as (fixture, port):
        yield fixture, f"http://{HOST}:{port}/mcp"


@contextmanager
def _background_server(
    command: Sequence[str], workdir: Path, name: str
) -> Iterator[tuple[psutil.Popen, int]]:
    """Run an HTTP server on a free port until the block ends, then stop it by PID."""
    port_file = workdir / f"{name}.port"
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        process = psutil.Popen(
            [*command, "--port", "0", "--port-file", str(port_file)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        yield process, _wait_for_port(process, port_file, log_path)
    finally:
        stop_process(process)


def _wait_for_port(process: psutil.Popen, port_file: Path, log_path: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text(encoding="utf-8"))
        if process.poll() is not None:
            raise BenchmarkError(
                f"{process.args!r} exited with status {process.returncode} before listening; "
                f"its output ends with:\n{tail(log_path)}"
            )
        time.sleep(PORT_POLL_SECONDS)
    raise BenchmarkError(f"{process.args!r} wrote no port to {port_file} within {START_TIMEOUT_SECONDS:g} s")


def _only_child(parent: psutil.Process, marker: str) -> psutil.Process:
    matches = [child for child in parent.children() if _cmdline_has(child, marker)]
    if len(matches) != 1:
        raise BenchmarkError(
            f"expected one child of PID {parent.pid} running {marker!r}, found {len(matches)}"
        )
    return matches[0]


def _only_child_running(parent: psutil.Process, command: Sequence[str]) -> psutil.Process:
    matches = [child for child in parent.children() if _cmdline_is(child, command)]
    if len(matches) != 1:
        raise BenchmarkError(
            f"expected one child of PID {parent.pid} running {command!r}, found {len(matches)}"
        )
    return matches[0]


def _cmdline_is(process: psutil.Process, command: Sequence[str]) -> bool:
    try:
        return process.cmdline() == list(command)
    except psutil.NoSuchProcess:
        return False


def _cmdline_has(process: psutil.Process, marker: str) -> bool:
    try:
        return any(marker in part for part in process.cmdline())
    except psutil.NoSuchProcess:
        return False


def stop_process(process: psutil.Process) -> None:
    """Stop one process this benchmark started: SIGTERM, then SIGKILL if it lingers."""
    try:
        process.terminate()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def stop_descendants() -> list[int]:
    """Stop every process still running below this one and return their PIDs.

    Only the benchmark starts children, so each descendant is one of its servers
    that did not exit with its session.
    """
    leftovers = psutil.Process().children(recursive=True)
    for process in leftovers:
        stop_process(process)
    return [process.pid for process in leftovers]


def tail(path: Path, lines: int = 20) -> str:
    """Return the last `lines` lines of a log file, or a note that it is missing."""
    if not path.exists():
        return f"({path} was not written)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
