"""Helpers shared by the tests: policy files, gateway processes and the fixture server.

Every gateway under test is a real child process spoken to over a real stdio
pipe or HTTP socket; downstream servers are real processes too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
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
# speak HTTP without the SDK client. The clientInfo name is only ever self-reported.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "alice", "version": "1"},
    },
}
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
