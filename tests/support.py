"""Helpers shared by the tests: policy files, gateway processes and the fixture server.

Every gateway under test is a real child process spoken to over a real stdio
pipe or HTTP socket; downstream servers are real processes too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import psutil
import tomli_w
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SERVER = ROOT / "tests" / "fixtures" / "fixture_server.py"
LEGACY_SERVER = ROOT / "tests" / "fixtures" / "legacy_server.py"
LEGACY_PYTHON = ROOT / ".venv-legacy" / "bin" / "python"
NODE_BIN = ROOT / "tests" / "node" / "node_modules" / ".bin"
MODERN = "2026-07-28"
LEGACY = "legacy"
ERAS = (LEGACY, MODERN)
# A raw 2025-11-25 initialize request and the headers streamable HTTP requires, for tests that
# speak MCP without the SDK client. The clientInfo name is only ever self-reported.
INITIALIZE_PARAMS: dict[str, Any] = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "alice", "version": "1"},
}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE_PARAMS}
HTTP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
# Bounds how long a test waits for a child process to start listening or to exit.
PROCESS_WAIT_SECONDS = 20.0


def fixture_server(name: str = "fixture", *extra: str, record: Path | None = None) -> dict[str, Any]:
    """Return a policy `[servers.X]` table that runs the fixture server over stdio."""
    args = [str(FIXTURE_SERVER), "--name", name, *extra]
    if record is not None:
        args += ["--record", str(record)]
    return {"command": sys.executable, "args": args}


ALLOW_ALL = {
    "name": "tests may call anything",
    "clients": ["*"],
    "server": "*",
    "tools": ["*"],
    "decision": "auto",
}


def write_policy(
    folder: Path,
    servers: Mapping[str, Mapping[str, Any]],
    gateway: Mapping[str, Any] | None = None,
    *,
    rules: Sequence[Mapping[str, Any]] | None = None,
    clients: Mapping[str, Mapping[str, Any]] | None = None,
    **sections: Any,
) -> Path:
    """Write a policy file into `folder` and return its path.

    Without `rules`, one rule lets every client call every tool, so tests of the core see everything.
    Without `clients`, one client named "default" exists, and HTTP requests without keys act as it.
    """
    settings: dict[str, Any] = {"state_dir": str(folder / "state"), **(gateway or {})}
    if clients is None:
        settings.setdefault("http", {}).setdefault("allow_unauthenticated_as", "default")
    data: dict[str, Any] = {"gateway": settings, **sections}
    data["servers"] = {name: dict(table) for name, table in servers.items()}
    data["clients"] = {name: dict(table) for name, table in (clients or {"default": {}}).items()}
    data["rules"] = [dict(rule) for rule in (rules if rules is not None else [{**ALLOW_ALL, "write": True}])]
    path = folder / "policy.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def gateway_command(policy: Path, *extra: str) -> list[str]:
    """Return the command line that runs the gateway with `policy`."""
    return [sys.executable, "-m", "mcp_guard", "run", "--config", str(policy), *extra]


def gateway_parameters(
    policy: Path, *extra: str, env: Mapping[str, str] | None = None
) -> StdioServerParameters:
    """Return stdio parameters that start the gateway as a child of the client."""
    command = gateway_command(policy, *extra)
    return StdioServerParameters(command=command[0], args=command[1:], cwd=str(ROOT), env=dict(env or {}))


@asynccontextmanager
async def stdio_gateway(
    policy: Path, mode: str = LEGACY, *, env: Mapping[str, str] | None = None, **client_options: Any
) -> AsyncIterator[Client]:
    """Start the gateway over stdio and yield a connected SDK client."""
    async with Client(gateway_parameters(policy, env=env), mode=mode, **client_options) as client:
        yield client


# The `_meta` envelope a raw client puts into each 2026-07-28 request.
MODERN_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


class RawStdioClient:
    """A client that writes JSON-RPC lines to a gateway's stdin itself, for requests the SDK will not send.

    Args:
        mode: `LEGACY` or `MODERN`. In `MODERN` mode each request built by `send_request`
            carries `MODERN_ENVELOPE`.
    """

    def __init__(self, process: anyio.abc.Process, mode: str = LEGACY) -> None:
        self.process = process
        self._mode = mode
        self._next_id = 0
        self._buffer = b""

    async def send_text(self, text: str) -> None:
        """Write `text` as one line, exactly as given."""
        assert self.process.stdin is not None
        await self.process.stdin.send(text.encode() + b"\n")

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message as a line."""
        await self.send_text(json.dumps(message))

    async def send_request(self, method: str, params: dict[str, Any], *, progress: bool = False) -> int:
        """Send a request and return its id."""
        self._next_id += 1
        meta: dict[str, Any] = dict(MODERN_ENVELOPE) if self._mode == MODERN else {}
        if progress:
            meta["progressToken"] = f"progress-{self._next_id}"
        body = {**params, "_meta": meta} if meta else params
        await self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": body})
        return self._next_id

    async def request(self, method: str, params: dict[str, Any], *, progress: bool = False) -> dict[str, Any]:
        """Send a request and return its response."""
        request_id = await self.send_request(method, params, progress=progress)
        return await self.response(request_id)

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Call a tool and return the response: a `result` or an `error` member."""
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def call_text(self, params: str, seconds: float = 60) -> dict[str, Any] | None:
        """Send a `tools/call` whose params object has the JSON members `params`, written as given.

        Returns:
            The response, or None if none came within `seconds`.
        """
        self._next_id += 1
        await self.send_text(
            f'{{"jsonrpc":"2.0","id":{self._next_id},"method":"tools/call","params":{{{params}}}}}'
        )
        return await self.response_within(self._next_id, seconds)

    async def response(self, request_id: int, seconds: float = 30) -> dict[str, Any]:
        """Return the response to `request_id`, skipping other messages.

        Raises:
            TimeoutError: No response came within `seconds`.
        """
        with anyio.fail_after(seconds):
            return await self._response(request_id)

    async def response_within(self, request_id: int, seconds: float) -> dict[str, Any] | None:
        """Return the response to `request_id`, or None if none came within `seconds`."""
        with anyio.move_on_after(seconds):
            return await self._response(request_id)
        return None

    async def messages_for(self, seconds: float) -> list[dict[str, Any]]:
        """Return every message that arrives within `seconds`."""
        received: list[dict[str, Any]] = []
        with anyio.move_on_after(seconds):
            while True:
                received.append(await self.read_message())
        return received

    async def read_message(self) -> dict[str, Any]:
        """Return the next message the gateway writes, or raise `anyio.EndOfStream` once stdout closes."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            self._buffer += await self.process.stdout.receive()
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    async def close_stdin(self) -> None:
        """Close the gateway's stdin, which ends a stdio gateway."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    async def _response(self, request_id: int) -> dict[str, Any]:
        while True:
            message = await self.read_message()
            if message.get("id") == request_id and "method" not in message:
                return message


@asynccontextmanager
async def raw_stdio_gateway(
    policy: Path,
    mode: str = LEGACY,
    *,
    log: Path | None = None,
    handshake: bool = True,
    prefix: Sequence[str] = (),
) -> AsyncIterator[RawStdioClient]:
    """Start the gateway over stdio and yield a raw client that has done the handshake `mode` needs.

    When the block ends, stdin is closed and the gateway must exit within `PROCESS_WAIT_SECONDS`.

    Args:
        log: File the gateway's stderr is appended to, at debug level. Without it stderr is discarded.
        handshake: In `LEGACY` mode, send `initialize` and `notifications/initialized` first.
        prefix: Words put before the gateway's command line, e.g. a program that drops privileges.
    """
    with ExitStack() as files:
        errors: IO[bytes] | int = subprocess.DEVNULL
        environment = None
        if log is not None:
            errors = files.enter_context(log.open("ab"))
            environment = {**os.environ, "MCP_GUARD_LOG_LEVEL": "debug"}
        command = [*prefix, *gateway_command(policy)]
        process = await anyio.open_process(command, cwd=ROOT, stderr=errors, env=environment)
        try:
            client = RawStdioClient(process, mode)
            if mode != MODERN and handshake:
                await client.request("initialize", INITIALIZE_PARAMS)
                await client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield client
        finally:
            # aclose() closes stdin and waits for the exit. On the timeout it kills the gateway.
            with anyio.fail_after(PROCESS_WAIT_SECONDS):
                await process.aclose()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def background_process(
    command: Sequence[str], port_file: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run `command` until the block ends; yield it with the port it wrote to `port_file`."""
    log = port_file.with_suffix(".log").open("wb")
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        port = _wait_for_port_file(process, port_file)
        yield process, port
    finally:
        stop_process(process)
        log.close()


def _wait_for_port_file(process: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + PROCESS_WAIT_SECONDS
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if process.poll() is not None:
            log = port_file.with_suffix(".log").read_text(errors="replace")
            raise AssertionError(f"process exited with {process.returncode} before listening:\n{log}")
        time.sleep(0.05)
    raise AssertionError(f"process did not write {port_file} within {PROCESS_WAIT_SECONDS} s")


@contextmanager
def http_gateway(policy: Path, tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run the gateway over HTTP; yield the process and its MCP URL."""
    port_file = tmp_path / "gateway.port"
    command = gateway_command(
        policy, "--transport", "http", "--port", "0", "--port-file", str(port_file), *extra
    )
    with background_process(command, port_file) as (process, port):
        yield process, f"http://127.0.0.1:{port}/mcp"


@contextmanager
def http_fixture(tmp_path: Path, name: str = "fixture", *extra: str) -> Iterator[str]:
    """Run the fixture server over HTTP; yield its MCP URL."""
    port_file = tmp_path / f"{name}.port"
    command = [sys.executable, str(FIXTURE_SERVER), "--transport", "http", "--name", name]
    command += ["--port-file", str(port_file), *extra]
    with background_process(command, port_file) as (_process, port):
        yield f"http://127.0.0.1:{port}/mcp"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=PROCESS_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def descendants(pid: int) -> list[psutil.Process]:
    """Return the live descendants of a process."""
    try:
        return [child for child in psutil.Process(pid).children(recursive=True) if child.is_running()]
    except psutil.NoSuchProcess:
        return []


def read_records(path: Path) -> list[dict[str, Any]]:
    """Return the events the fixture server recorded."""
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def wait_until(predicate: Any, seconds: float = 10.0, message: str = "condition") -> None:
    """Poll `predicate` until it returns true; fail after `seconds`."""
    with anyio.move_on_after(seconds):
        while True:
            if predicate():
                return
            await anyio.sleep(0.05)
    raise AssertionError(f"{message} not reached within {seconds} s")


async def wait_until_visible(client: Client, name: str, seconds: float = 10.0) -> None:
    """List tools until `name` is among them; fail after `seconds`."""
    with anyio.move_on_after(seconds):
        while True:
            if name in {tool.name for tool in (await client.list_tools()).tools}:
                return
            await anyio.sleep(0.1)
    raise AssertionError(f"{name} was not listed within {seconds:g} s")


def clean_env(**extra: str) -> dict[str, str]:
    """Return this process's environment plus `extra`."""
    return {**os.environ, **extra}


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Run a webhook on 127.0.0.1 that keeps the JSON bodies POSTed to it; yield its URL and the bodies."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-token", received
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def without_rule_names(problems: list[str]) -> list[str]:
    """Return policy problem lines without the rule or limit name after their key path."""
    return [re.sub(r" \((?:rule|limit) '[^']*'\)(?=:)", "", line, count=1) for line in problems]


async def run_audit(state_dir: Path, *argv: str) -> tuple[int, str]:
    """Run `mcp-guard audit ARGV` in this process on `state_dir` and return its exit status and stdout."""
    from mcp_guard.audit.cli import add_audit_commands, run_audit_command

    parser = argparse.ArgumentParser(prog="mcp-guard")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    output = io.StringIO()
    status = await run_audit_command(parser.parse_args(["audit", *argv]), state_dir, stdout=output)
    return status, output.getvalue()
