"""A stand-in for E2B on 127.0.0.1: the control plane and one sandbox's code API, over real HTTP.

The e2b SDK talks to it unchanged when `api_url` and `sandbox_url` point here
(and debug mode is off), so the tests exercise the SDK's real requests and
parsing. It serves the few routes the backend uses:

- `POST /v2/sandboxes` creates a sandbox (201 with ids and tokens),
- `GET /v2/sandboxes` lists sandboxes, filtered by the `metadata` query and
  paginated with the `x-next-token` header like the real API,
- `DELETE /sandboxes/{id}` kills a sandbox (204, or 404 when unknown),
- `POST /execute` runs code: it streams the NDJSON lines of `execute_reply`,
- `GET /health` responds to the SDK's liveness probe with 204.

Every request is recorded before the fake responds to it, so once an SDK call returns,
the test can assert on what the fake received without waiting. The server runs
in its own thread and event loop, so a stalled response never blocks the test.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# Maximum number of items on one page of GET /v2/sandboxes, whatever limit the client asks for; small,
# so that three sandboxes already need pagination.
MAX_PAGE_SIZE = 2
# How long the fake waits for uvicorn to start, and for open streams to end at shutdown.
SERVER_START_SECONDS = 10.0
SERVER_STOP_SECONDS = 2.0
# Upper bound of an "endless" stdout stream, so a backend that never stops reading still ends.
ENDLESS_LINE_LIMIT = 1_000_000


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)

    def query_params(self) -> dict[str, str]:
        """Return the query string as a mapping (the last value wins)."""
        return dict(urllib.parse.parse_qsl(self.query))


@dataclass
class ExecuteReply:
    """What `POST /execute` sends back."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    """NDJSON messages streamed in order, in the code interpreter's format."""
    status: int = 200
    """HTTP status; anything but 200 sends `error_body` instead of the stream."""
    error_body: str = "internal error"
    stall_seconds: float = 0.0
    """Time the response stays open after the lines, without sending anything."""
    endless_stdout: bool = False
    """After the lines, stream stdout lines until the client disconnects."""
    drop_connection: bool = False
    """After the lines, end the connection without finishing the response."""


@dataclass
class FakeSandbox:
    """A sandbox registered in the fake control plane."""

    sandbox_id: str
    metadata: dict[str, str]
    alive: bool = True


class FakeE2B:
    """The fake's state: known sandboxes, the next `/execute` reply and every request received."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.execute_reply = ExecuteReply(lines=[stdout_line("ok\n"), execution_count_line(1)])
        self.accepted_key: str | None = None
        """When set, control-plane requests with another X-API-KEY get a 401 that echoes the key sent."""
        self.list_status = 200
        """Status of GET /v2/sandboxes; anything but 200 is an error response."""
        self.kill_status = 204
        """Status of DELETE /sandboxes/{id} for a known sandbox; anything but 204 is an error response."""
        self.url = ""
        self._lock = threading.Lock()

    def add_sandbox(self, metadata: dict[str, str]) -> str:
        """Register a running sandbox, as if an earlier process had created it; return its id."""
        sandbox_id = f"sbx-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self.sandboxes[sandbox_id] = FakeSandbox(sandbox_id, dict(metadata))
        return sandbox_id

    def received(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        """Return the recorded requests with this method whose path starts with `path_prefix`."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def killed_ids(self) -> list[str]:
        """Return the ids of the sandboxes DELETE requests were sent for, in order."""
        return [r.path.rsplit("/", 1)[-1] for r in self.received("DELETE", "/sandboxes/")]

    def all_request_text(self) -> str:
        """Return every recorded request line, header and body as one string, for leak checks."""
        with self._lock:
            parts = [
                f"{r.method} {r.path}?{r.query}\n{r.headers}\n{r.body.decode('utf-8', 'replace')}"
                for r in self.requests
            ]
        return "\n".join(parts)

    def app(self) -> Starlette:
        """Build the ASGI app serving both the control plane and the sandbox API."""
        return Starlette(
            routes=[
                Route("/v2/sandboxes", self._create_sandbox, methods=["POST"]),
                Route("/v2/sandboxes", self._list_sandboxes, methods=["GET"]),
                Route("/sandboxes/{sandbox_id}", self._kill_sandbox, methods=["DELETE"]),
                Route("/execute", self._execute, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )

    async def _record(self, request: Request) -> RecordedRequest:
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=dict(request.headers),
            body=await request.body(),
        )
        with self._lock:
            self.requests.append(recorded)
        return recorded

    def _key_rejection(self, recorded: RecordedRequest) -> Response | None:
        sent = recorded.headers.get("x-api-key", "")
        if self.accepted_key is None or sent == self.accepted_key:
            return None
        return JSONResponse({"code": 401, "message": f"invalid API key {sent}"}, status_code=401)

    async def _create_sandbox(self, request: Request) -> Response:
        recorded = await self._record(request)
        if rejection := self._key_rejection(recorded):
            return rejection
        body = recorded.json()
        sandbox_id = self.add_sandbox(body.get("metadata") or {})
        return JSONResponse(
            {
                "templateID": body["templateID"],
                "sandboxID": sandbox_id,
                "clientID": "fake-client",
                "envdVersion": "0.2.0",
                "envdAccessToken": "fake-envd-token",
                "trafficAccessToken": "fake-traffic-token",
            },
            status_code=201,
        )

    async def _list_sandboxes(self, request: Request) -> Response:
        recorded = await self._record(request)
        if rejection := self._key_rejection(recorded):
            return rejection
        if self.list_status != 200:
            return JSONResponse({"code": self.list_status, "message": "listing failed"}, self.list_status)
        params = recorded.query_params()
        expected = dict(urllib.parse.parse_qsl(params.get("metadata", "")))
        with self._lock:
            matching = [
                s
                for s in self.sandboxes.values()
                if s.alive and all(s.metadata.get(key) == value for key, value in expected.items())
            ]
        start = int(params.get("nextToken", "0"))
        size = min(int(params.get("limit", MAX_PAGE_SIZE)), MAX_PAGE_SIZE)
        page = matching[start : start + size]
        headers = {"x-next-token": str(start + size)} if start + size < len(matching) else {}
        return JSONResponse([_listed(s) for s in page], headers=headers)

    async def _kill_sandbox(self, request: Request) -> Response:
        recorded = await self._record(request)
        if rejection := self._key_rejection(recorded):
            return rejection
        if self.kill_status != 204:
            sent = recorded.headers.get("x-api-key", "")
            return JSONResponse(
                {"code": self.kill_status, "message": f"kill failed for {sent}"}, self.kill_status
            )
        sandbox_id = request.path_params["sandbox_id"]
        with self._lock:
            sandbox = self.sandboxes.get(sandbox_id)
            if sandbox is None or not sandbox.alive:
                return JSONResponse({"code": 404, "message": f"sandbox {sandbox_id} not found"}, 404)
            sandbox.alive = False
        return Response(status_code=204)

    async def _health(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=204)

    async def _execute(self, request: Request) -> Response:
        await self._record(request)
        reply = self.execute_reply
        if reply.status != 200:
            return Response(reply.error_body, status_code=reply.status)
        return StreamingResponse(_stream(reply), media_type="application/x-ndjson")


async def _stream(reply: ExecuteReply) -> AsyncIterator[bytes]:
    for line in reply.lines:
        yield (json.dumps(line) + "\n").encode()
    if reply.drop_connection:
        # An exception after the response started makes uvicorn close the connection mid-body.
        raise ConnectionAbortedError("fake E2B dropped the connection")
    if reply.endless_stdout:
        for number in range(ENDLESS_LINE_LIMIT):
            yield (json.dumps(stdout_line(f"line {number:08d} " + "x" * 80 + "\n")) + "\n").encode()
            await anyio.lowlevel.checkpoint()
    if reply.stall_seconds:
        await anyio.sleep(reply.stall_seconds)


def _listed(sandbox: FakeSandbox) -> dict[str, Any]:
    return {
        "templateID": "code-interpreter-v1",
        "sandboxID": sandbox.sandbox_id,
        "clientID": "fake-client",
        "startedAt": "2026-01-01T00:00:00Z",
        "endAt": "2026-01-01T00:05:00Z",
        "cpuCount": 2,
        "memoryMB": 512,
        "diskSizeMB": 1024,
        "state": "running",
        "envdVersion": "0.2.0",
        "metadata": sandbox.metadata,
    }


def stdout_line(text: str) -> dict[str, Any]:
    """Return an `/execute` message carrying one line of stdout."""
    return {"type": "stdout", "text": text, "timestamp": 1_700_000_000_000_000_000}


def stderr_line(text: str) -> dict[str, Any]:
    """Return an `/execute` message carrying one line of stderr."""
    return {"type": "stderr", "text": text, "timestamp": 1_700_000_000_000_000_000}


def execution_count_line(count: int) -> dict[str, Any]:
    """Return the `/execute` message that ends a finished execution."""
    return {"type": "number_of_executions", "execution_count": count}


def serve_fake() -> Iterator[FakeE2B]:
    """Serve a new `FakeE2B` on a free port of 127.0.0.1 in a thread; yield it; stop it.

    Meant to back a pytest fixture (`yield from serve_fake()`).
    """
    fake = FakeE2B()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        fake.app(),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=SERVER_STOP_SECONDS,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(int(SERVER_START_SECONDS * 100)):
        if server.started:
            started.set()
            break
        thread.join(0.01)
    if not started.is_set():
        server.should_exit = True
        raise RuntimeError(f"the fake E2B server did not start within {SERVER_START_SECONDS} s")
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(SERVER_STOP_SECONDS * 5)
        sock.close()
