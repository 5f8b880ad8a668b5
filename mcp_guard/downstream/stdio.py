"""The stdio transport to a downstream server, with a direct lane for tool calls.

The transport gives the SDK `Client` the same two streams as the SDK's own
`stdio_client`. Beside them, a `DirectLane` writes tool calls to the server's
stdin as JSON lines and matches the response lines to them by request id. Its
ids are strings that start with `DIRECT_ID_PREFIX`, and the SDK numbers its own
requests, so the two never collide. A direct call skips the SDK session's
per-request work (a dispatcher task, memory streams, pydantic round trips),
which was most of the gateway's cost on a tool call. Its result is still checked
against the negotiated protocol version's schema. Everything else (the
handshake, listings, notifications, the server's own questions, calls with
progress) goes through the SDK session.

The server runs in its own process group. When the transport closes, the
server's stdin is closed and it gets a grace period to exit. Then its whole
group is terminated, and killed if it is still there, so no child process
outlives the transport.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import IO, Any

import anyio
import anyio.abc
import anyio.lowlevel
import mcp_types as types
import structlog
from mcp.shared.message import SessionMessage
from mcp_types import methods
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS

from mcp_guard.errors import DownstreamCrashed, DownstreamProtocolError, DownstreamRejected, DownstreamTimeout
from mcp_guard.processes import close_transport

log = structlog.get_logger(module=__name__)

# Every direct request id starts with this; the SDK's own ids are integers, so they never collide.
DIRECT_ID_PREFIX = "mcp-guard-"
_PREFIX_BYTES = DIRECT_ID_PREFIX.encode()
# How long the server may take to exit after its stdin closes, then to die after SIGTERM.
EXIT_GRACE_SECONDS = 2.0
KILL_GRACE_SECONDS = 2.0
# How long the SDK's queued messages may take to reach the server when the transport closes.
FLUSH_SECONDS = 0.5
_EXIT_POLL_SECONDS = 0.01


class DirectLane:
    """Tool calls sent straight down the pipe, their responses matched by the transport's reader."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self._stdin: anyio.abc.ByteSendStream | None = None
        self._numbers = itertools.count(1)
        self._waiting: dict[str, _Waiter] = {}
        self._closed = False
        # How the server's process ended on its own, for the connection's error; None until it has.
        self.exit_note: str | None = None

    async def request(
        self, method: str, params: dict[str, Any], version: str, wait_seconds: float
    ) -> dict[str, Any]:
        """Send one request and return its result as a wire dict, checked against `version`'s schema.

        A cancelled or timed-out request is cancelled on the server too.

        Raises:
            DownstreamCrashed: The connection closed before the response arrived.
            DownstreamTimeout: No response within `wait_seconds`.
            DownstreamRejected: The server responded with a JSON-RPC error.
            DownstreamProtocolError: The response is not a valid result for `method`.
        """
        stdin = self._stdin
        if stdin is None or self._closed:
            raise DownstreamCrashed(self.server_id)
        request_id = f"{DIRECT_ID_PREFIX}{next(self._numbers)}"
        waiter = _Waiter()
        self._waiting[request_id] = waiter
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        answered = False
        try:
            await stdin.send(_line(message))
            with anyio.move_on_after(wait_seconds):
                await waiter.done.wait()
                answered = True
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise DownstreamCrashed(self.server_id) from exc
        finally:
            self._waiting.pop(request_id, None)
            if not answered and not self._closed:
                await self._cancel(request_id)
        if not answered:
            raise DownstreamTimeout(self.server_id, wait_seconds)
        return self._result(waiter.response, method, version)

    def take(self, line: bytes) -> bool:
        """Resolve the direct request `line` responds to; return False for any other line."""
        if not self._waiting or _PREFIX_BYTES not in line:
            return False
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return False
        if not isinstance(message, dict) or "method" in message:
            return False
        request_id = message.get("id")
        waiter = self._waiting.get(request_id) if isinstance(request_id, str) else None
        if waiter is None:
            return False
        waiter.response = message
        waiter.done.set()
        return True

    def attach(self, stdin: anyio.abc.ByteSendStream) -> None:
        """Start sending to `stdin`."""
        self._stdin = stdin

    def close(self) -> None:
        """Fail every waiting request at once: the connection is gone."""
        self._closed = True
        for waiter in self._waiting.values():
            waiter.done.set()

    def _result(self, response: dict[str, Any] | None, method: str, version: str) -> dict[str, Any]:
        if response is None:
            raise DownstreamCrashed(self.server_id)
        error = response.get("error")
        if isinstance(error, dict):
            code, text = error.get("code"), error.get("message")
            if isinstance(code, int) and isinstance(text, str):
                raise DownstreamRejected(self.server_id, code, text, error.get("data"))
            raise DownstreamProtocolError(self.server_id, "a malformed error response")
        result = response.get("result")
        if not isinstance(result, dict) or response.get("jsonrpc") != "2.0":
            raise DownstreamProtocolError(self.server_id, "a response with neither a result nor an error")
        return checked_result(self.server_id, method, version, result)

    async def _cancel(self, request_id: str) -> None:
        notice = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": request_id, "reason": "The caller cancelled the call."},
        }
        with (
            anyio.CancelScope(shield=True),
            suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError),
        ):
            if self._stdin is not None:
                await self._stdin.send(_line(notice))


class _Waiter:
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.response: dict[str, Any] | None = None


def checked_result(server_id: str, method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
    """Check a server's result against `version`'s schema for `method`, as the SDK checks its own.

    Fields that only a later protocol revision defines are dropped, so they cannot pass to a
    client of this revision.

    Raises:
        DownstreamProtocolError: The result does not match the schema.
    """
    ttl = result.get("ttlMs")
    if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl < 0:
        result["ttlMs"] = 0
    try:
        methods.validate_server_result(method, version, result)
    except KeyError:
        pass
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise DownstreamProtocolError(
            server_id, f"an invalid {method} result ({type(exc).__name__})"
        ) from exc
    foreign = _later_fields(method, version)
    if foreign and not foreign.isdisjoint(result):
        return {key: value for key, value in result.items() if key not in foreign}
    return result


@functools.cache
def _later_fields(method: str, version: str) -> frozenset[str]:
    """Return the result fields of `method` that only revisions after `version` define."""
    results = methods.SERVER_RESULTS
    if version not in KNOWN_PROTOCOL_VERSIONS or (method, version) not in results:
        return frozenset()
    later: set[str] = set()
    for newer in KNOWN_PROTOCOL_VERSIONS[KNOWN_PROTOCOL_VERSIONS.index(version) + 1 :]:
        if (method, newer) in results:
            later |= _wire_fields(results[(method, newer)])
    return frozenset(later - _wire_fields(results[(method, version)]))


def _wire_fields(target: Any) -> set[str]:
    members = getattr(target, "__args__", (target,))
    return {
        field.alias or name
        for model in members
        if hasattr(model, "model_fields")
        for name, field in model.model_fields.items()
    }


def _line(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# How long the gateway waits for the exit status of a server that closed its output.
EXIT_WAIT_SECONDS = 1.0
# A server's stderr is passed on in lines of at most this many characters.
MAX_STDERR_LINE_CHARS = 2000
# Bytes of an unfinished stderr line kept while waiting for its end; older bytes are dropped.
MAX_STDERR_PENDING = 64 * 1024


@asynccontextmanager
async def stdio_transport(
    command: str,
    args: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    errlog: IO[str],
    lane: DirectLane,
) -> AsyncIterator[tuple[Any, Any]]:
    """Start the server and yield the SDK's read and write streams; `lane` sends on the same pipe.

    Raises:
        OSError: The server's command cannot be started.
    """
    process = await anyio.open_process(
        [command, *args], env=env, cwd=cwd, stderr=subprocess.PIPE, start_new_session=True
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    to_session, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_server, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    lane.attach(process.stdin)
    writer_done = anyio.Event()
    stderr = _StderrRelay(lane.server_id, errlog)
    output_ended = anyio.Event()

    async def read(stdout: anyio.abc.ByteReceiveStream) -> None:
        await _read(stdout, to_session, lane)
        output_ended.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read, process.stdout)
        tasks.start_soon(_write, process.stdin, from_session, to_session, writer_done)
        tasks.start_soon(stderr.relay, process.stderr)
        try:
            yield from_server, to_server
        finally:
            with anyio.CancelScope(shield=True):
                if output_ended.is_set():
                    # The server closed its output before the gateway stopped it, most often by exiting.
                    with anyio.move_on_after(EXIT_WAIT_SECONDS):
                        lane.exit_note = _log_exit(lane.server_id, await process.wait(), stderr.last_line)
                lane.close()
                to_server.close()
                with anyio.move_on_after(FLUSH_SECONDS):
                    await writer_done.wait()
                await _stop(process)
            tasks.cancel_scope.cancel()


class _StderrRelay:
    """Relay of a server's stderr to the gateway's: each line tagged with the server's id, the last one kept."""

    def __init__(self, server_id: str, errlog: IO[str]) -> None:
        self._server_id = server_id
        self._errlog = errlog
        self.last_line = ""

    async def relay(self, stream: anyio.abc.ByteReceiveStream) -> None:
        """Write `stream`'s lines to the error log as `[server id] line` until it ends."""
        pending = b""
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async for chunk in stream:
                *lines, pending = (pending + chunk)[-MAX_STDERR_PENDING:].split(b"\n")
                for line in lines:
                    self._write(line)
        self._write(pending)

    def _write(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()[:MAX_STDERR_LINE_CHARS]
        if not text:
            return
        self.last_line = text
        with suppress(OSError, ValueError):
            self._errlog.write(f"[{self._server_id}] {text}\n")
            self._errlog.flush()


def _log_exit(server_id: str, status: int, last_line: str) -> str:
    """Log how a server's process ended on its own, and return that as a phrase for its error."""
    ended: dict[str, str | int] = {"exit_status": status}
    phrase = f"the server exited with status {status}"
    if status < 0:
        with suppress(ValueError):
            ended = {"signal": signal.Signals(-status).name}
            phrase = f"the server was ended by {ended['signal']}"
    log.warning("downstream_exited", server=server_id, **ended, last_stderr_line=last_line)
    return f"{phrase}; its last stderr line: {last_line}" if last_line else phrase


async def _read(stdout: anyio.abc.ByteReceiveStream, session: Any, lane: DirectLane) -> None:
    """Pass each line to the lane or, parsed, to the SDK session; at end of stream close both."""
    pending = b""
    try:
        async with session:
            async for chunk in stdout:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if not line.strip() or lane.take(line):
                        continue
                    try:
                        await session.send(_parse(line))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
        log.info("downstream_read_failed", server=lane.server_id, error=type(exc).__name__)
    finally:
        lane.close()


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:  # passed to the session, which reports it as a transport error
        return exc


async def _write(stdin: anyio.abc.ByteSendStream, messages: Any, session: Any, done: anyio.Event) -> None:
    """Write each message from the SDK session as one line."""
    try:
        async with messages:
            async for message in messages:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await stdin.send(data.encode() + b"\n")
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
        log.info("downstream_write_failed", error=type(exc).__name__)
        await session.aclose()
    finally:
        done.set()


async def _stop(process: anyio.abc.Process) -> None:
    """Close the server's stdin, give it time to exit, then end its whole process group."""
    assert process.stdin is not None and process.stdout is not None
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdin.aclose()
    if not await _exited(process, EXIT_GRACE_SECONDS):
        _signal_group(process.pid, signal.SIGTERM)
        if not await _exited(process, KILL_GRACE_SECONDS):
            _signal_group(process.pid, signal.SIGKILL)
            await _exited(process, KILL_GRACE_SECONDS)
    # Children the server left in its group go with it.
    _signal_group(process.pid, signal.SIGKILL)
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdout.aclose()
    close_transport(process)


async def _exited(process: anyio.abc.Process, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        # Polled: `process.wait()` also waits for the pipes to close, which a grandchild can hold open.
        while process.returncode is None:  # noqa: ASYNC110
            await anyio.sleep(_EXIT_POLL_SECONDS)
        return True
    return False


def _signal_group(pgid: int, number: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, number)
