"""The gateway's stdio transport on UNIX sockets and under a burst of messages.

Node.js (checked with version 20) gives a child process UNIX sockets for piped stdin and
stdout rather than pipes, so a client built on it starts the gateway that way.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import INITIALIZE, PROCESS_WAIT_SECONDS, ROOT, fixture_server, gateway_command, write_policy

BURST = 200


class SocketClient:
    """A client that speaks to the gateway over two socket pairs, with blocking reads."""

    def __init__(self, to_gateway: socket.socket, from_gateway: socket.socket) -> None:
        self._to_gateway = to_gateway
        self._from_gateway = from_gateway
        self._from_gateway.settimeout(PROCESS_WAIT_SECONDS)
        self._buffer = b""

    def send(self, *messages: dict[str, Any]) -> None:
        """Write the messages as lines in one write."""
        self._to_gateway.sendall(b"".join(json.dumps(message).encode() + b"\n" for message in messages))

    def responses(self, ids: set[int]) -> dict[int, dict[str, Any]]:
        """Read until every id in `ids` has a response, and return the responses by id."""
        found: dict[int, dict[str, Any]] = {}
        while not ids <= found.keys():
            while b"\n" not in self._buffer:
                chunk = self._from_gateway.recv(1 << 16)
                assert chunk, f"stdout closed with responses to {sorted(ids - found.keys())} missing"
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if message.get("id") in ids:
                found[message["id"]] = message
        return found

    def close(self) -> None:
        """End the gateway's stdin."""
        self._to_gateway.shutdown(socket.SHUT_WR)


@contextmanager
def socket_gateway(policy: Path, log: Path) -> Iterator[tuple[SocketClient, subprocess.Popen[bytes]]]:
    """Start the gateway with socket pairs as stdin and stdout, and complete the handshake."""
    client_in, gateway_in = socket.socketpair()
    client_out, gateway_out = socket.socketpair()
    with log.open("wb") as errors:
        process = subprocess.Popen(
            gateway_command(policy), cwd=ROOT, stdin=gateway_in, stdout=gateway_out, stderr=errors
        )
    gateway_in.close()
    gateway_out.close()
    client = SocketClient(client_in, client_out)
    try:
        # The handshake uses id 1, so the tests number their requests from 2.
        client.send(INITIALIZE)
        client.responses({1})
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield client, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        client_in.close()
        client_out.close()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return write_policy(tmp_path, {"alpha": fixture_server("alpha")})


def call(request_id: int, text: str) -> dict[str, Any]:
    params = {"name": "alpha__echo", "arguments": {"text": text}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def test_socket_stdio_serves_calls_and_exits(policy: Path, tmp_path: Path) -> None:
    with socket_gateway(policy, tmp_path / "gateway.log") as (client, process):
        client.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
        listing = client.responses({2})[2]
        client.send(*(call(request_id, f"text {request_id}") for request_id in range(3, 8)))
        echoed = client.responses(set(range(3, 8)))
        client.close()
        status = process.wait(timeout=PROCESS_WAIT_SECONDS)

    assert "alpha__echo" in [tool["name"] for tool in listing["result"]["tools"]]
    assert {request_id: echoed[request_id]["result"]["content"][0]["text"] for request_id in echoed} == {
        request_id: f"text {request_id}" for request_id in range(3, 8)
    }
    assert status == 0


def test_burst_of_mixed_messages_all_answered(policy: Path, tmp_path: Path) -> None:
    # Listings go to the SDK, which takes them one at a time while the reader waits. The calls
    # between them take the direct lane. Every request gets a response, in any order.
    with socket_gateway(policy, tmp_path / "gateway.log") as (client, process):
        client.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
        client.responses({2})
        burst = [
            {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {}}
            if request_id % 2
            else call(request_id, f"text {request_id}")
            for request_id in range(3, 3 + BURST)
        ]
        client.send(*burst)
        answered = client.responses(set(range(3, 3 + BURST)))
        client.close()
        status = process.wait(timeout=PROCESS_WAIT_SECONDS)

    listings = [answered[request_id] for request_id in range(3, 3 + BURST, 2)]
    calls = {request_id: answered[request_id] for request_id in range(4, 3 + BURST, 2)}
    assert all("tools" in listing["result"] for listing in listings)
    assert {request_id: calls[request_id]["result"]["content"][0]["text"] for request_id in calls} == {
        request_id: f"text {request_id}" for request_id in calls
    }
    assert status == 0
