"""One supervised connection to one downstream MCP server.

A single long-lived task owns the SDK `Client` for the server (the SDK requires
that the task entering a session also exits it). That task starts the server,
fetches its listing, refreshes the listing on `list_changed`, notices when the
connection closes, and reconnects with backoff. Handlers borrow the client only
to send requests through `request()`, which translates every MCP client error
into a `DownstreamError`: no SDK client exception leaves this module.

What a listing means to clients (names, filtering, per-era shapes) is left to
`catalog.py`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TextIO

import anyio
import httpx2
import mcp_types as types
import structlog
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._stream_protocols import ReadStream
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import TypeAdapter, ValidationError

from mcp_guard import __version__
from mcp_guard.config.loading import resolve_templates, server_environment_problems
from mcp_guard.config.models import HttpServerConfig, ServerConfig, StdioServerConfig
from mcp_guard.downstream.stdio import DirectLane, stdio_transport
from mcp_guard.errors import (
    ConfigError,
    DownstreamCrashed,
    DownstreamProtocolError,
    DownstreamRejected,
    DownstreamTimeout,
    DownstreamUnavailable,
)
from mcp_guard.processes import POLICY_CHAIN_VARIABLE

log = structlog.get_logger(module=__name__)

# Variables a child process may need to find programs and behave normally. Nothing else from
# the gateway's environment is passed on, so the gateway's own secrets never reach a server.
SAFE_BASE_ENVIRONMENT = (
    POLICY_CHAIN_VARIABLE,
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
)
# Reconnect delays grow from the first to the last value and stay there.
BACKOFF_SECONDS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Changes arriving within this window are fetched once.
REFRESH_DEBOUNCE_SECONDS = 0.1
# A server that keeps returning cursors is cut off after this many pages.
MAX_LIST_PAGES = 1000
# Largest single SSE event accepted from an HTTP server: one event carries one whole result.
MAX_SSE_EVENT_BYTES = 64 * 1024 * 1024
HTTP_CONNECT_TIMEOUT_SECONDS = 30.0

# Results are kept as the wire dicts the server sent (after the SDK validated them against the
# protocol), so they pass through without a parse-and-dump round trip. The SDK types this
# parameter for models only, hence the cast.
_RAW_RESULT: Any = TypeAdapter(dict[str, Any])

ProgressCallback = ProgressFnT
ListingCallback = Callable[[str], Awaitable[None]]
QuestionRelay = Callable[[types.ElicitRequestParams], Awaitable[types.ElicitResult]]
"""Passes a downstream server's question on to the user of the call in flight, and returns the response."""


class ServerState(StrEnum):
    """The life-cycle state of a downstream connection."""

    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ServerListing:
    """The tools, resources, templates and prompts of one downstream server, as the wire dicts it sent."""

    tools: tuple[dict[str, Any], ...] = ()
    resources: tuple[dict[str, Any], ...] = ()
    resource_templates: tuple[dict[str, Any], ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()
    completions: bool = False


@dataclass
class _Session:
    client: Client
    lane: DirectLane | None = None
    closed: anyio.Event = field(default_factory=anyio.Event)
    refresh: anyio.Event = field(default_factory=anyio.Event)


class DownstreamConnection:
    """A supervised connection to one downstream server.

    Run `run()` in a long-lived task group; it returns only when cancelled.
    """

    def __init__(
        self,
        server_id: str,
        config: ServerConfig,
        *,
        environ: Mapping[str, str] | None = None,
        on_listing: ListingCallback | None = None,
        errlog: TextIO | None = None,
    ) -> None:
        self.server_id = server_id
        self.config = config
        # Where a stdio server's stderr lines go: the gateway's stderr unless a caller collects them.
        self._errlog = errlog
        self.state = ServerState.STARTING
        self.listing = ServerListing()
        self.protocol_version: str | None = None
        self.last_error: str | None = None
        self._environ = os.environ if environ is None else environ
        self._on_listing = on_listing
        self._session: _Session | None = None
        self._lane: DirectLane | None = None
        self._first_attempt: anyio.abc.TaskStatus[None] | None = None
        self._log = log.bind(server=server_id)
        # The question relays of the calls in flight, by a number of this connection's own.
        self._relays: dict[int, QuestionRelay] = {}
        self._next_relay = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the server connected until cancelled.

        `task_status.started()` is called after the first attempt, whether it
        succeeded or not, so the gateway can start serving with what it has.
        """
        self._first_attempt = task_status
        failures = 0
        try:
            problems = server_environment_problems(self.server_id, self.config, self._environ)
            if problems:
                # Retrying cannot help: the gateway's environment does not change while it runs.
                self.last_error = "; ".join(problems)
                self.state = ServerState.STOPPED
                self._log.error("downstream_not_started", error=self.last_error)
                self._report_first_attempt()
                await anyio.sleep_forever()
            while True:
                connected = await self._connect_once()
                self._report_first_attempt()
                failures = 0 if connected else failures + 1
                self.state = ServerState.RESTARTING
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                self._log.info("downstream_reconnecting", delay_seconds=delay, error=self.last_error)
                await anyio.sleep(delay)
        finally:
            self.state = ServerState.STOPPED

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        progress_callback: ProgressCallback | None = None,
        question_relay: QuestionRelay | None = None,
    ) -> dict[str, Any]:
        """Call one tool of the server and return its result as a wire dict.

        A call without progress to a stdio server takes the transport's direct lane. Any other
        goes through the SDK session. Both raise the errors `request()` raises.
        """
        session = self._session
        lane = session.lane if session is not None else None
        version = self.protocol_version
        if (
            lane is None
            or version is None
            or progress_callback is not None
            or self.state is not ServerState.READY
        ):
            request = types.CallToolRequest(
                params=types.CallToolRequestParams(name=name, arguments=arguments)
            )
            return await self.request(
                request, progress_callback=progress_callback, question_relay=question_relay
            )
        assert session is not None
        data: dict[str, Any] = {"method": "tools/call", "params": {"name": name, "arguments": arguments}}
        # NOTE: the SDK session's stamp is private. It adds the `_meta` that a 2026-07-28 server
        # needs on every request (protocol version, client info and capabilities).
        session.client.session._stamp(data, {})  # pyright: ignore[reportPrivateUsage]
        number = self._hold_relay(question_relay)
        try:
            return await lane.request(
                data["method"], data["params"], version, self.config.call_timeout_seconds
            )
        except DownstreamCrashed:
            session.closed.set()
            raise
        finally:
            self._relays.pop(number, None)

    def _hold_relay(self, question_relay: QuestionRelay | None) -> int:
        number = self._next_relay
        self._next_relay += 1
        if question_relay is not None:
            self._relays[number] = question_relay
        return number

    async def request(
        self,
        request: types.ClientRequest,
        *,
        progress_callback: ProgressCallback | None = None,
        read_timeout_seconds: float | None = None,
        question_relay: QuestionRelay | None = None,
    ) -> dict[str, Any]:
        """Send one request to the server and return its result as a wire dict.

        While it waits, a form question the server asks is passed to `question_relay`, if the
        server's `relay_questions` allows it and this is the only call in flight that can relay.

        Raises:
            DownstreamUnavailable: The server is not connected.
            DownstreamCrashed: The connection closed while waiting.
            DownstreamTimeout: No response within `read_timeout_seconds` (default: the server's call timeout).
            DownstreamRejected: The server responded with a JSON-RPC error.
            DownstreamProtocolError: The response is not a valid result.
        """
        session = self._session
        if session is None or self.state is not ServerState.READY:
            raise DownstreamUnavailable(self.server_id, self.state.value)
        seconds = self.config.call_timeout_seconds if read_timeout_seconds is None else read_timeout_seconds
        number = self._hold_relay(question_relay)
        try:
            result: dict[str, Any] = await session.client.session.send_request(
                request,
                _RAW_RESULT,
                request_read_timeout_seconds=seconds,
                progress_callback=progress_callback,
            )
            return result
        except MCPError as exc:
            raise self._translate(exc, session, seconds) from exc
        except ValidationError as exc:
            raise DownstreamProtocolError(self.server_id, f"{exc.error_count()} validation errors") from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            session.closed.set()
            raise DownstreamCrashed(self.server_id) from exc
        finally:
            self._relays.pop(number, None)

    async def _on_question(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        """Answer a question the server asks: relay it to the one call in flight that can, or decline.

        The server does not say which call its question belongs to, so with several calls in flight
        the question could reach the wrong user; it is declined then, as it is for URL-mode questions.
        """
        relays = list(self._relays.values())
        if len(relays) != 1 or not isinstance(params, types.ElicitRequestFormParams):
            self._log.info("downstream_question_declined", calls_in_flight=len(relays), mode=params.mode)
            return types.ElicitResult(action="decline")
        self._log.info("downstream_question_relayed")
        return await relays[0](params)

    def _translate(self, exc: MCPError, session: _Session, seconds: float) -> Exception:
        if exc.error.code == types.CONNECTION_CLOSED:
            session.closed.set()
            return DownstreamCrashed(self.server_id)
        if exc.error.code == types.REQUEST_TIMEOUT:
            return DownstreamTimeout(self.server_id, seconds)
        return DownstreamRejected(self.server_id, exc.error.code, exc.error.message, exc.error.data)

    async def _connect_once(self) -> bool:
        """Run one session from start to close; return whether it got ready."""
        self.state = ServerState.STARTING
        got_ready = False
        deadline = anyio.current_time() + self.config.startup_timeout_seconds
        try:
            with anyio.CancelScope(deadline=deadline) as startup:
                async with self._client() as client:
                    session = _Session(client, self._lane)
                    self.protocol_version = client.protocol_version
                    self.listing = await self._fetch_listing(client)
                    startup.deadline = math.inf
                    self._session = session
                    self.state = ServerState.READY
                    got_ready = True
                    self._log.info(
                        "downstream_ready",
                        protocol=client.protocol_version,
                        tools=len(self.listing.tools),
                        prompts=len(self.listing.prompts),
                        resources=len(self.listing.resources),
                    )
                    await self._notify_listing()
                    # Only now is the catalogue (and every listener's view of it) up to date.
                    self._report_first_attempt()
                    await self._serve(session)
                    self.last_error = "the connection closed"
            if startup.cancelled_caught and not got_ready:
                self.last_error = (
                    f"not ready within {self.config.startup_timeout_seconds:g} s "
                    "(raise startup_timeout_seconds if it needs longer)"
                )
        except Exception as exc:  # contained: a failing server must not take the gateway down
            self.last_error = _describe_failure(exc)
        finally:
            self._session = None
        exit_note = self._lane.exit_note if self._lane is not None else None
        if exit_note is not None:
            self.last_error = f"{self.last_error} ({exit_note})"
        level = "warning" if got_ready else "error"
        getattr(self._log, level)("downstream_disconnected", error=self.last_error)
        return got_ready

    def _report_first_attempt(self) -> None:
        if self._first_attempt is not None:
            self._first_attempt.started()
            self._first_attempt = None

    async def _serve(self, session: _Session) -> None:
        """Refresh the listing on change until the connection closes."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._refresh_on_change, session)
            if self.protocol_version in _MODERN and _announces_changes(session.client):
                tasks.start_soon(self._listen, session)
            await session.closed.wait()
            tasks.cancel_scope.cancel()

    async def _refresh_on_change(self, session: _Session) -> None:
        while True:
            await session.refresh.wait()
            await anyio.sleep(REFRESH_DEBOUNCE_SECONDS)
            session.refresh = anyio.Event()
            try:
                self.listing = await self._fetch_listing(session.client)
            except (MCPError, ValidationError, OSError, anyio.BrokenResourceError) as exc:
                self._log.warning("downstream_refresh_failed", error=_describe_failure(exc))
                session.closed.set()
                return
            self._log.info("downstream_listing_changed", tools=len(self.listing.tools))
            await self._notify_listing()

    async def _listen(self, session: _Session) -> None:
        """Follow change events of a 2026-07-28 server, which sends none unasked."""
        try:
            async with session.client.listen(
                tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True
            ) as events:
                async for _event in events:
                    session.refresh.set()
        except Exception as exc:  # contained: without events the listing only goes stale
            self._log.warning("downstream_listen_failed", error=_describe_failure(exc))

    async def _on_message(self, message: types.ServerNotification | Exception) -> None:
        session = self._session
        if isinstance(message, Exception):
            self._log.warning("downstream_transport_error", error=_describe_failure(message))
            return
        changed = (
            types.ToolListChangedNotification,
            types.PromptListChangedNotification,
            types.ResourceListChangedNotification,
        )
        if session is not None and isinstance(message, changed):
            session.refresh.set()

    async def _notify_listing(self) -> None:
        if self._on_listing is not None:
            await self._on_listing(self.server_id)

    async def _fetch_listing(self, client: Client) -> ServerListing:
        capabilities = client.server_capabilities
        tools: tuple[dict[str, Any], ...] = ()
        resources, templates, prompts = tools, tools, tools
        if capabilities.tools is not None:
            tools = await self._fetch_all(client, types.ListToolsRequest, "tools")
        if capabilities.resources is not None:
            resources = await self._fetch_all(client, types.ListResourcesRequest, "resources")
            templates = await self._fetch_all(client, types.ListResourceTemplatesRequest, "resourceTemplates")
        if capabilities.prompts is not None:
            prompts = await self._fetch_all(client, types.ListPromptsRequest, "prompts")
        return ServerListing(tools, resources, templates, prompts, capabilities.completions is not None)

    async def _fetch_all(
        self,
        client: Client,
        request_type: type[types.ListToolsRequest]
        | type[types.ListResourcesRequest]
        | type[types.ListResourceTemplatesRequest]
        | type[types.ListPromptsRequest],
        key: str,
    ) -> tuple[dict[str, Any], ...]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _page in range(MAX_LIST_PAGES):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor is not None else None
            result = await client.session.send_request(
                request_type(params=params),
                _RAW_RESULT,
                request_read_timeout_seconds=self.config.call_timeout_seconds,
            )
            items.extend(item for item in result.get(key, []) if isinstance(item, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or cursor in seen:
                break
            seen.add(cursor)
        else:
            self._log.warning("downstream_listing_truncated", key=key, pages=MAX_LIST_PAGES)
        return tuple(items)

    def _client(self) -> Client:
        return Client(
            self._transport(),
            mode=self.config.protocol,
            client_info=types.Implementation(name="mcp-guard", version=__version__),
            message_handler=self._on_message,
            elicitation_callback=self._on_question if self.config.relay_questions else None,
            cache=None,
        )

    def _stderr(self) -> TextIO:
        return self._errlog if self._errlog is not None else sys.stderr

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        self._lane = None
        if isinstance(self.config, StdioServerConfig):
            if sys.platform == "win32":  # the direct lane's transport is written for POSIX process groups
                return _watched(
                    stdio_client(self._stdio_parameters(self.config), errlog=self._stderr()), self
                )
            self._lane = DirectLane(self.server_id)
            config = self.config
            transport = stdio_transport(
                config.command,
                list(config.args),
                env=self._stdio_environment(config),
                cwd=config.cwd,
                errlog=self._stderr(),
                lane=self._lane,
            )
            return _watched(transport, self)
        return _watched(self._http_transport(self.config), self)

    def _require_variables(self, config: StdioServerConfig | HttpServerConfig) -> None:
        problems = server_environment_problems(self.server_id, config, self._environ)
        if problems:
            raise ConfigError(f"servers.{self.server_id}", problems)

    def _stdio_environment(self, config: StdioServerConfig) -> dict[str, str]:
        self._require_variables(config)
        env = {name: self._environ[name] for name in SAFE_BASE_ENVIRONMENT if name in self._environ}
        env.update(config.env)
        env.update(resolve_templates(config.env_from, self._environ))
        return env

    def _stdio_parameters(self, config: StdioServerConfig) -> StdioServerParameters:
        return StdioServerParameters(
            command=config.command,
            args=list(config.args),
            cwd=config.cwd,
            env=self._stdio_environment(config),
        )

    @asynccontextmanager
    async def _http_transport(self, config: HttpServerConfig) -> AsyncIterator[Any]:
        self._require_variables(config)
        headers = {**config.headers, **resolve_templates(config.headers_from, self._environ)}
        timeout = httpx2.Timeout(HTTP_CONNECT_TIMEOUT_SECONDS, read=config.call_timeout_seconds)
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
            streamable_http_client(
                config.url, http_client=http, max_sse_event_size=MAX_SSE_EVENT_BYTES
            ) as streams,
        ):
            yield streams

    def mark_closed(self) -> None:
        """Treat the current session as closed (its transport reached end of stream)."""
        if self._session is not None:
            self._session.closed.set()


_MODERN = frozenset({"2026-07-28"})


def _announces_changes(client: Client) -> bool:
    capabilities = client.server_capabilities
    return any(
        part is not None and part.list_changed
        for part in (capabilities.tools, capabilities.prompts, capabilities.resources)
    )


@asynccontextmanager
async def _watched(
    transport: AbstractAsyncContextManager[Any], connection: DownstreamConnection
) -> AsyncIterator[tuple[ReadStream[SessionMessage | Exception], Any]]:
    """Wrap a transport so that the end of its read stream closes the session.

    The SDK fails requests in flight when a stdio server exits, but gives no
    signal while the connection is idle. Without one, a dead server would only
    be noticed at the next call.
    """
    async with transport as (read_stream, write_stream):
        yield _WatchedReadStream(read_stream, connection), write_stream


class _WatchedReadStream:
    def __init__(
        self, inner: ReadStream[SessionMessage | Exception], connection: DownstreamConnection
    ) -> None:
        self._inner = inner
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        # Forwards `last_context`, which the SDK reads to run callbacks in the sender's context.
        return getattr(self._inner, name)

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._connection.mark_closed()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedReadStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _WatchedReadStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _describe_failure(exc: BaseException) -> str:
    """Summarise an error, flattening the exception groups the SDK's task groups raise."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe_failure(inner) for inner in exc.exceptions)
    if isinstance(exc, ConfigError):
        return "; ".join(exc.problems)
    if isinstance(exc, MCPError):
        return f"{exc.error.message} (code {exc.error.code})"
    if isinstance(exc, FileNotFoundError) and exc.filename is not None:
        if str(exc.filename).startswith("/"):
            # A missing working directory is reported with its own path, so both are named.
            return f"not found: {exc.filename!r} does not exist; check the server's command and cwd"
        return (
            f"command not found: {exc.filename!r}; give its absolute path, or start the gateway with a "
            "PATH that contains it (the server is started with the gateway's PATH, or the PATH in its env)"
        )
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
