"""The direct lane for tool calls from a stdio client.

The SDK server handles each request through a relay task, a dispatcher, a task
per request and memory streams, about a dozen trips through the event loop per
call (counted on the `echo` benchmark). The lane takes a plain `tools/call` line
off the wire itself, runs it through the same call pipeline in a task of its
own, and writes the response line. The SDK's checks are kept: the parameters
are validated against the protocol version's schema (a 2026-07-28 request's
envelope first), and so is the result before it is sent, with the 2026-07-28
server identity stamp added.

A call takes the lane only when nothing in it needs the SDK session. The SDK
must have served a tool request on the connection already, so the handshake
is done and the era is known. The call must request no progress, its tool must
not be `run_code`, and its server must not pass questions on. No rule that
applies to it may ask a person or notify the client. Every other line,
including any the lane cannot parse, goes to the SDK unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, TypeGuard

import anyio
import anyio.abc
import mcp_types as types
import structlog
from mcp.shared.exceptions import MCPError
from mcp_types import methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from mcp_guard.gateway.pipeline import ToolCall, ToolResult
from mcp_guard.gateway.stdio import Wire

log = structlog.get_logger(module=__name__)

_CALL_MARK = b'"tools/call"'
_CANCEL_MARK = b'"notifications/cancelled"'
# The errors the SDK's path sends for these cases, word for word.
_INTERNAL_ERROR = types.ErrorData(code=types.INTERNAL_ERROR, message="Internal server error")
_INVALID_RESULT = types.ErrorData(code=types.INTERNAL_ERROR, message="Handler returned an invalid result")


class CallSource(Protocol):
    """The gateway, as the lane uses it."""

    def direct_call(self, params: dict[str, Any]) -> ToolCall | None:
        """Return the call `params` describes if it may take the lane, else None."""
        ...

    async def run_call(self, call: ToolCall) -> ToolResult:
        """Run `call` through the call pipeline and return its result."""
        ...


class DirectCalls:
    """The lane: takes eligible tool calls and cancellations of them off the stdio wire."""

    def __init__(self, gateway: CallSource, server_info: dict[str, Any]) -> None:
        """Take calls for `gateway`, stamping `server_info` into 2026-07-28 results as the server's identity."""
        self._gateway = gateway
        self._server_info = server_info
        self._wire: Wire | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._running: dict[int | str, anyio.CancelScope] = {}

    def attach(self, wire: Wire, tasks: anyio.abc.TaskGroup) -> None:
        """Start taking lines: write responses to `wire`, and run calls in `tasks`."""
        self._wire, self._tasks = wire, tasks

    def take(self, line: bytes) -> bool:
        """Run `line` if it is a call for the lane, or cancel a call it runs; otherwise return False."""
        if self._tasks is None or (_CALL_MARK not in line and _CANCEL_MARK not in line):
            return False
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return False
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return False
        params = message.get("params")
        if not isinstance(params, dict):
            return False
        method = message.get("method")
        if method == "notifications/cancelled" and "id" not in message:
            return self._cancel(params.get("requestId"))
        request_id = message.get("id")
        if method != "tools/call" or not _is_request_id(request_id) or request_id in self._running:
            return False
        try:
            call = self._gateway.direct_call(params)
        except Exception:  # contained: the SDK's path handles the request with every check
            log.exception("direct_call_check_failed", request_id=request_id)
            return False
        if call is None:
            return False
        scope = anyio.CancelScope()
        self._running[request_id] = scope
        self._tasks.start_soon(self._run, request_id, call, scope)
        return True

    def _cancel(self, request_id: Any) -> bool:
        if not _is_request_id(request_id) or request_id not in self._running:
            return False
        self._running[request_id].cancel()
        return True

    async def _run(self, request_id: int | str, call: ToolCall, scope: anyio.CancelScope) -> None:
        assert self._wire is not None
        response: bytes | None = None
        try:
            with scope:
                response = await self._respond(request_id, call)
        finally:
            del self._running[request_id]
        # A cancelled request gets no response, as on the SDK's path.
        if response is not None:
            await self._wire.send(response)

    async def _respond(self, request_id: int | str, call: ToolCall) -> bytes:
        try:
            result = await self._gateway.run_call(call)
        except MCPError as exc:
            return _error_line(request_id, exc.error)
        except Exception:
            log.exception("request_failed", method="tools/call", request_id=request_id)
            return _error_line(request_id, _INTERNAL_ERROR)
        version = call.protocol_version
        modern = version in MODERN_PROTOCOL_VERSIONS
        if modern:
            result.setdefault("resultType", "complete")
        try:
            wire = methods.serialize_server_result("tools/call", version, result)
            if modern:
                wire = _with_server_info(wire, self._server_info)
            return _line({"jsonrpc": "2.0", "id": request_id, "result": wire})
        except (ValidationError, ValueError) as exc:
            # Pydantic's message quotes the result, so only the error's type is logged.
            log.error(
                "tool_result_invalid", call_id=call.call_id, request_id=request_id, error=type(exc).__name__
            )
            return _error_line(request_id, _INVALID_RESULT)


def _with_server_info(result: dict[str, Any], server_info: dict[str, Any]) -> dict[str, Any]:
    """Stamp the gateway's identity into a 2026-07-28 result's `_meta`, unless the result has one."""
    meta = result.get("_meta")
    if meta is None:
        return {**result, "_meta": {types.SERVER_INFO_META_KEY: server_info}}
    if isinstance(meta, dict) and meta.get(types.SERVER_INFO_META_KEY) is None:
        return {**result, "_meta": {**meta, types.SERVER_INFO_META_KEY: server_info}}
    return result


def _is_request_id(value: object) -> TypeGuard[int | str]:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _error_line(request_id: int | str, error: types.ErrorData) -> bytes:
    body = error.model_dump(by_alias=True, mode="json", exclude_none=True)
    return _line({"jsonrpc": "2.0", "id": request_id, "error": body})


def _line(message: dict[str, Any]) -> bytes:
    """Encode one message as a line. NaN and infinities are not JSON, so they raise ValueError."""
    return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\n"
