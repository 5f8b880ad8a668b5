"""The upstream MCP server: what clients connect to.

`build_server` creates one lowlevel SDK `Server` that serves both protocol eras
and wires each MCP method to a `Gateway` method. The gateway looks requested
names up in the current catalogue (exact match only), sends the request to
the server that owns it, and shapes the result for the caller's era. Tool calls
go through the call pipeline; how each guard decides is left to the pipeline's
stages. Only this package imports the MCP server API.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, cast

import anyio
import mcp_types as types
import structlog
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.caching import CACHEABLE_METHODS, CacheableMethod, CacheHint
from mcp.server.context import CallNext, HandlerResult
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
from mcp.shared.message import ServerMessageMetadata
from mcp_types import methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from mcp_guard import __version__
from mcp_guard.audit import AuditedCall, AuditStore, CallIntent, new_call_id
from mcp_guard.config.models import GatewayConfig
from mcp_guard.config.sandbox import SANDBOX_SERVER_ID
from mcp_guard.downstream.catalog import LEGACY_ERA, MODERN_ERA, Catalog, ExportedTool
from mcp_guard.downstream.connection import QuestionRelay, ServerState
from mcp_guard.downstream.naming import SEPARATOR
from mcp_guard.downstream.registry import DownstreamRegistry
from mcp_guard.errors import AuditUnavailable, DownstreamError, DownstreamRejected, GuardError, NotFoundError
from mcp_guard.gateway.approval import ApprovalStage
from mcp_guard.gateway.auditing import AuditStage
from mcp_guard.gateway.code_tool import CodeTool
from mcp_guard.gateway.identity import ClientDirectory, ClientIdentity, http_client_name
from mcp_guard.gateway.limits import LimitStage
from mcp_guard.gateway.notifications import ChangeNotifier
from mcp_guard.gateway.pipeline import (
    Elicit,
    Handler,
    InputRound,
    Stage,
    ToolCall,
    ToolResult,
    UrlQuestion,
    build_call_pipeline,
    tool_error,
)
from mcp_guard.gateway.policy_guard import PolicyGuard
from mcp_guard.gateway.results import (
    is_input_required,
    shape_plain_result,
    shape_read_result,
    shape_tool_result,
)
from mcp_guard.gateway.secret_scan import Secret, SecretScan, withheld_detail, withheld_message, withhold

log = structlog.get_logger(module=__name__)

INSTRUCTIONS = (
    "mcp-guard forwards these tools to the MCP servers configured behind it. Tool names are <server>__<tool>."
)
STOPPING = (
    "mcp-guard is stopping, so this call was stopped before it finished. Retry once the gateway is back."
)
NOT_RUN_WHILE_STOPPING = "mcp-guard is stopping, so this call was not run. Retry once the gateway is back."
# The catalogue is filtered per client, so list results must never be shared between clients.
_PRIVATE = CacheHint(ttl_ms=0, scope="private")
# The rule recorded for prompts, resources and completions, which follow server-level visibility.
SERVER_VISIBILITY_RULE = "(a tool of this server is visible to the client)"
_CACHEABLE = cast("frozenset[CacheableMethod]", CACHEABLE_METHODS)
# The parameters a tools/call request of the direct lane may carry; any other goes through the SDK.
_DIRECT_PARAMS = frozenset({"name", "arguments", "_meta"})


class GatewayServer(Server[Any]):
    """A lowlevel `Server` that announces list changes to handshake-era clients.

    The streamable HTTP session manager builds initialization options without
    arguments, so the default has to change here for HTTP clients to learn of changes.
    """

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        """Build initialization options that announce list_changed for every list."""
        options = notification_options or NotificationOptions(
            prompts_changed=True, resources_changed=True, tools_changed=True
        )
        return super().create_initialization_options(options, experimental_capabilities, extensions)


class Gateway:
    """The handlers of every MCP method, backed by the catalogue and the downstream connections."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: DownstreamRegistry,
        *,
        client: str,
        guards: Guards | None = None,
        directory: ClientDirectory | None = None,
        code_tool: CodeTool | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.client = client
        self.code_tool = code_tool
        self.guards = guards or Guards()
        self.directory = directory or ClientDirectory(config)
        self.notifier = ChangeNotifier()
        # A stdio gateway serves one connection, its only session.
        self.stdio_session = f"stdio-{uuid.uuid4().hex}"
        # The protocol version of the stdio connection once the SDK has served a tool request on
        # it. Until then no call takes the direct lane.
        self.stdio_version: str | None = None
        # Why the gateway is stopping, once it is: a signal's name or "stdin closed".
        self.stopping: str | None = None
        # Cancel scopes of the calls `stop_calls` stops.
        self._stoppable: set[anyio.CancelScope] = set()
        # Set once no call is left after `stop_calls`.
        self._calls_stopped: anyio.Event | None = None
        # Listed items left out because they contain a secret, each logged once: (list, name as logged).
        self._withheld_items: set[tuple[str, str]] = set()
        self.call_pipeline = assemble_call_pipeline(
            self._forward_call, self.guards, config, stop_reason=lambda: self.stopping
        )
        if self.guards.policy is not None:
            registry.add_listener(self._observe_pins)
        registry.add_listener(self.notifier.publish)

    @property
    def catalog(self) -> Catalog:
        """The catalogue as of now."""
        return self.registry.catalog

    def client_of(self, ctx: ServerRequestContext[Any]) -> ClientIdentity:
        """Return who sent a request: the stdio profile, or the client an HTTP request authenticated as."""
        if ctx.request is None:
            return self.directory.get(self.client)
        unauthenticated = self.config.gateway.http.allow_unauthenticated_as
        if unauthenticated is not None and self.is_unauthenticated(ctx):
            return self.directory.get(unauthenticated)
        return self.directory.get(http_client_name(ctx))

    def is_unauthenticated(self, ctx: ServerRequestContext[Any]) -> bool:
        """Return whether a request came over HTTP from a caller that did not authenticate."""
        http = self.config.gateway.http
        return (
            ctx.request is not None
            and http.allow_unauthenticated_as is not None
            and not self.directory.has_credentials
        )

    def visible_tools(self, client: ClientIdentity, version: str) -> list[ExportedTool]:
        """Return the tools `client` may see, as its protocol era can carry them."""
        return [tool for tool in self.catalog.tools.values() if self.can_see(client, tool, version)]

    def can_see(self, client: ClientIdentity, tool: ExportedTool, version: str) -> bool:
        """Return whether `client`, speaking `version`, may see and call `tool`."""
        policy = self.guards.policy
        return _era(version) in tool.eras and (policy is None or policy.visible(client.name, tool))

    def visible_servers(self, client: ClientIdentity) -> set[str]:
        """Return the servers whose prompts and resources `client` may use: those with a tool it can see."""
        if self.guards.policy is None:
            return set(self.registry.connections)
        policy = self.guards.policy
        return {tool.server for tool in self.catalog.tools.values() if policy.visible(client.name, tool)}

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        """Return the tools/list result: the tools the caller may call, as its era can carry them."""
        tools = self.visible_tools(self.client_of(ctx), ctx.protocol_version)
        return self._page("tools", [tool.definition for tool in tools], params)

    async def call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> ToolResult:
        """Pass a tools/call request through the call pipeline and return its result.

        A name the caller may not see gets the same error as a name that does not exist.
        """
        client = self.client_of(ctx)
        tool = self.catalog.tools.get(params.name)
        if tool is None or not self.can_see(client, tool, ctx.protocol_version):
            reason = await self._record_unknown(client, ctx, params)
            raise _mcp_error(NotFoundError("tool", params.name, reason))
        call = ToolCall(
            client=client.name,
            organisation=client.organisation,
            anonymous=self.is_unauthenticated(ctx),
            session=_session_id(ctx) if ctx.request is not None else self.stdio_session,
            protocol_version=ctx.protocol_version,
            tool=tool,
            arguments=dict(params.arguments or {}),
            progress=_progress_relay(ctx, self.guards.secrets),
            notify=_log_relay(ctx),
            elicit=_elicit_relay(ctx),
            url_question=_url_question(ctx),
            input_round=_input_round(ctx, params),
        )
        if self.code_tool is not None and tool.server == SANDBOX_SERVER_ID and ctx.request is not None:
            # NOTE: reads the SDK's private per-session connection, as `notifications.py` does.
            self.code_tool.watch_session(getattr(ctx.session, "_connection", None), client.name, call.session)
        log.debug("tool_call_received", call_id=call.call_id, server=tool.server, tool=tool.name)
        return await self._run_stoppable(call)

    async def _run_stoppable(self, call: ToolCall) -> ToolResult:
        """Run `call` through the call pipeline, where `stop_calls` can stop it."""
        with anyio.CancelScope() as scope:
            self._stoppable.add(scope)
            try:
                return await self.call_pipeline(call)
            finally:
                self._stoppable.discard(scope)
                if not self._stoppable and self._calls_stopped is not None:
                    self._calls_stopped.set()
        # Reached only when `stop_calls` cancelled the call. Its result gives the client the reason.
        return tool_error(STOPPING)

    def stop_calls(self, reason: str) -> None:
        """Stop the calls in progress, which then return an error stating that the gateway is stopping.

        Both transports call it before they close, so that each call gets a response rather than
        being cut off.
        """
        self.stopping = reason
        self._calls_stopped = anyio.Event()
        if not self._stoppable:
            self._calls_stopped.set()
        for scope in list(self._stoppable):
            scope.cancel()

    async def calls_stopped(self) -> None:
        """Wait until every call that `stop_calls` stopped has returned its result."""
        if self._calls_stopped is not None:
            await self._calls_stopped.wait()

    def direct_call(self, params: dict[str, Any]) -> ToolCall | None:
        """Return the call a stdio `tools/call` request's `params` describes, if it may take the direct lane.

        The call must be valid for the connection's protocol era and need nothing of the SDK
        session: no progress, no question to the user, no notification, no sandbox. Any other
        request returns None and goes through the SDK.
        """
        version = self._direct_version(params)
        if version is None:
            return None
        name, arguments = params.get("name"), params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return None
        try:
            methods.validate_client_request("tools/call", version, params)
        except (ValidationError, KeyError, ValueError):
            return None
        client = self.directory.get(self.client)
        tool = self.catalog.tools.get(name)
        if tool is None or tool.server == SANDBOX_SERVER_ID or _era(version) not in tool.eras:
            return None
        connection = self.registry.connections.get(tool.server)
        if connection is None or connection.config.relay_questions:
            return None
        # One lookup of the rules answers both: visible to the client, and never asks or notifies.
        policy = self.guards.policy
        if policy is not None and not policy.plain_call(client.name, tool):
            return None
        return ToolCall(
            client=client.name,
            organisation=client.organisation,
            session=self.stdio_session,
            protocol_version=version,
            tool=tool,
            arguments=dict(arguments),
        )

    def _direct_version(self, params: dict[str, Any]) -> str | None:
        """Return the protocol version a direct call's `params` are read in, or None if they cannot be."""
        served = self.stdio_version
        meta = params.get("_meta") or {}
        if served is None or not _DIRECT_PARAMS.issuperset(params) or not isinstance(meta, dict):
            return None
        if "progressToken" in meta:
            return None
        if served not in MODERN_PROTOCOL_VERSIONS:
            # The SDK rejects a 2026-07-28 envelope on a handshake-era connection.
            return None if types.PROTOCOL_VERSION_META_KEY in meta else served
        route = classify_inbound_request({"method": "tools/call", "params": params})
        if isinstance(route, InboundLadderRejection):
            return None
        return route.protocol_version

    async def run_call(self, call: ToolCall) -> ToolResult:
        """Run a call of the direct lane through the call pipeline."""
        log.debug(
            "tool_call_received",
            call_id=call.call_id,
            server=call.tool.server,
            tool=call.tool.name,
            direct=True,
        )
        return await self._run_stoppable(call)

    async def note_stdio_era(self, ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
        """Middleware: record the stdio connection's protocol version once the SDK served a tool request.

        A tool request gets this far only after the SDK's handshake check on a handshake-era
        connection, so the version recorded is the negotiated one (or 2026-07-28).
        """
        result = await call_next(ctx)
        if self.stdio_version is None and ctx.request is None and ctx.method in ("tools/list", "tools/call"):
            self.stdio_version = ctx.protocol_version
        return result

    async def _record_unknown(
        self, client: ClientIdentity, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> str | None:
        """Audit a call of a name the client cannot see: probing for hidden tools leaves a trace.

        Returns:
            What the error may add to "Unknown tool": that the server is not available, when a rule
            would grant the client the name if the server were.
        """
        server, tool, rule, detail = self._unknown_name(client.name, params.name)
        log.warning("tool_call_unknown_name", client=client.name, name=params.name[:200], detail=detail)
        reason = None
        policy = self.guards.policy
        if (
            server
            and not self._ready(server)
            and policy is not None
            and policy.grants(client.name, server, tool)
        ):
            connection = self.registry.connections[server]
            if connection.state is ServerState.STARTING and connection.last_error is None:
                reason = f"Server {server!r} is still starting, so its tools cannot be called yet; try again shortly"
            else:
                reason = (
                    f"Server {server!r} is not available, so its tools cannot be called now; "
                    "the gateway's log says why"
                )
        if self.guards.audit is None:
            return reason
        intent = CallIntent(
            call_id=new_call_id(),
            client=client.name,
            organisation=client.organisation,
            session=_session_id(ctx),
            protocol_era=ctx.protocol_version,
            server=server,
            tool=tool,
            arguments=dict(params.arguments or {}),
            decision="deny",
            rule=rule,
        )
        try:
            async with AuditedCall(self.guards.audit, intent) as audited:
                audited.finish("denied", detail=detail)
        except AuditUnavailable as exc:
            log.error("audit_unavailable", reason=exc.reason)
        return reason

    def _unknown_name(self, client: str, name: str) -> tuple[str, str, str | None, str]:
        """Return the server, tool, rule and detail to record for a call of a name the client cannot see.

        A name the gateway exports is recorded as its server's tool, with the deny rule that hides
        it, so that searches by server and tool find the attempt. A name under the prefix of a
        server that is not available says so. The client gets "Unknown tool" in every case.
        """
        known = self.catalog.tools.get(name)
        if known is not None and self.guards.policy is not None and not self.guards.policy.pinned(known):
            return (
                known.server,
                known.name,
                None,
                "the tool is withheld until its changed or new definition is approved; "
                "run `mcp-guard pins review`",
            )
        if known is not None:
            rule = self.guards.policy.deny_rule(client, known) if self.guards.policy is not None else None
            hidden_by = f"rule {rule!r}" if rule is not None else "the policy"
            return known.server, known.name, rule, f"the tool is hidden from the client by {hidden_by}"
        prefix, separator, rest = name.partition(SEPARATOR)
        for server_id, settings in self.config.servers.items():
            if separator and prefix == (settings.prefix or server_id) and not self._ready(server_id):
                return (
                    server_id,
                    rest[:200],
                    None,
                    f"server {server_id!r} is not available, so it lists no tools",
                )
        return "", name[:200], None, "no tool with this name is visible to the client"

    def _ready(self, server_id: str) -> bool:
        """Return whether the server is connected and has listed its tools."""
        connection = self.registry.connections.get(server_id)
        return connection is not None and connection.state is ServerState.READY

    def _question_relay(self, call: ToolCall) -> QuestionRelay | None:
        """Return how a question the server asks during `call` reaches the caller's user, or None.

        The question is labelled with the server's name and never counts as an approval: the
        gateway's own approvals are asked and recorded by the approval stage alone.
        """
        elicit = call.elicit
        if elicit is None:
            return None
        server = call.tool.server
        seconds = self.config.approval.timeout_seconds
        scan = self.guards.secrets

        async def relay(params: types.ElicitRequestParams) -> types.ElicitResult:
            assert isinstance(params, types.ElicitRequestFormParams)  # the connection passes forms only
            found = scan.find_secret([params.message, params.requested_schema]) if scan is not None else None
            if found is not None:
                log.warning(
                    "downstream_question_withheld",
                    call_id=call.call_id,
                    server=server,
                    contains=found.description,
                )
                return types.ElicitResult(action="decline")
            message = (
                f"Server {server!r} asks (passed on by mcp-guard; this is the server's question, not an "
                f"approval by mcp-guard):\n\n{params.message}"
            )
            try:
                response = await elicit(message, params.requested_schema, seconds)
            except TimeoutError:
                return types.ElicitResult(action="cancel")
            except Exception as exc:  # contained: the server gets a refusal, the call goes on
                log.info(
                    "downstream_question_failed",
                    call_id=call.call_id,
                    server=server,
                    error=type(exc).__name__,
                )
                return types.ElicitResult(action="decline")
            return types.ElicitResult.model_validate(response)

        return relay

    def still_current(self, call: ToolCall) -> bool:
        """Return whether the tool `call` was decided for is still exported with the same, approved definition."""
        tool = self.catalog.tools.get(call.tool.exported)
        if tool is None or tool.digest != call.tool.digest:
            return False
        return self.guards.policy is None or self.guards.policy.pinned(tool)

    async def _observe_pins(self, kinds: frozenset[str]) -> None:
        if "tools" in kinds and self.guards.policy is not None:
            await self.guards.policy.observe(self.registry)

    async def tools_changed(self) -> None:
        """Tell clients their tool lists changed: a pin was approved or rejected, or a rule's window moved."""
        await self.notifier.publish(frozenset({"tools"}))

    async def _forward_call(self, call: ToolCall) -> ToolResult:
        if call.tool.server == SANDBOX_SERVER_ID:
            if self.code_tool is None:
                raise _mcp_error(NotFoundError("tool", call.tool.exported))
            return await self.code_tool(call)
        connection = self.registry.connection(call.tool.server)
        call.forwarded_at = time.monotonic()
        try:
            result = await connection.call_tool(
                call.tool.name,
                call.arguments,
                progress_callback=call.progress,
                question_relay=self._question_relay(call),
            )
        except DownstreamError as exc:
            found = self._secret_in_error(exc)
            if found is not None:
                return withhold(call, found, "the server's error")
            if isinstance(exc, DownstreamRejected):
                call.outcome, call.detail = "downstream_failed", str(exc)
                raise _mcp_error(exc) from None
            log.warning("tool_call_failed", call_id=call.call_id, server=exc.server, error=str(exc))
            call.outcome, call.detail = "downstream_failed", str(exc)
            return tool_error(str(exc))
        if is_input_required(result):
            # NOTE: relaying a downstream server's own questions (MRTR) is not built yet, so the
            # call fails closed instead of leaving the client with a result it cannot answer.
            return tool_error(
                f"Server {call.tool.server!r} asked for user input, which mcp-guard does not relay; "
                "the call was not completed."
            )
        return shape_tool_result(result, call.tool.server, self.catalog, call.protocol_version)

    async def list_prompts(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        """Answer prompts/list."""
        servers = self.visible_servers(self.client_of(ctx))
        prompts = [p.definition for p in self.catalog.prompts.values() if p.server in servers]
        return self._page("prompts", prompts, params)

    async def get_prompt(
        self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> dict[str, Any]:
        """Forward prompts/get to the server that owns the prompt."""
        prompt = self.catalog.prompts.get(params.name)
        if prompt is None or prompt.server not in self.visible_servers(self.client_of(ctx)):
            raise _mcp_error(NotFoundError("prompt", params.name))
        request = types.GetPromptRequest(
            params=types.GetPromptRequestParams(name=prompt.name, arguments=params.arguments)
        )
        result = await self._request(prompt.server, request, ctx)
        return shape_plain_result(result)

    async def list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        """Answer resources/list."""
        servers = self.visible_servers(self.client_of(ctx))
        resources = [r.definition for r in self.catalog.resources.values() if r.server in servers]
        return self._page("resources", resources, params)

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        """Answer resources/templates/list."""
        servers = self.visible_servers(self.client_of(ctx))
        templates = [t.definition for t in self.catalog.templates if t.server in servers]
        return self._page("resourceTemplates", templates, params)

    async def read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> dict[str, Any]:
        """Forward resources/read to the server that owns the URI."""
        catalog = self.catalog
        owner = catalog.resource_for_uri(params.uri)
        if owner is None or owner[0] not in self.visible_servers(self.client_of(ctx)):
            raise _mcp_error(NotFoundError("resource", params.uri))
        server, uri = owner
        request = types.ReadResourceRequest(params=types.ReadResourceRequestParams(uri=uri))
        return shape_read_result(await self._request(server, request, ctx), server, catalog)

    async def complete(
        self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> dict[str, Any]:
        """Forward completion/complete to the server that owns the prompt or template."""
        ref = params.ref
        server: str | None = None
        if isinstance(ref, types.PromptReference):
            prompt = self.catalog.prompts.get(ref.name)
            if prompt is not None:
                server, ref = prompt.server, types.PromptReference(name=prompt.name)
        else:
            server = next(
                (t.server for t in self.catalog.templates if t.definition.get("uriTemplate") == ref.uri), None
            )
        if (
            server is None
            or server not in self.catalog.completions
            or server not in self.visible_servers(self.client_of(ctx))
        ):
            return {"completion": {"values": [], "hasMore": False}}
        request = types.CompleteRequest(
            params=types.CompleteRequestParams(ref=ref, argument=params.argument, context=params.context)
        )
        return shape_plain_result(await self._request(server, request, ctx))

    async def _request(
        self, server: str, request: types.ClientRequest, ctx: ServerRequestContext[Any]
    ) -> dict[str, Any]:
        """Forward a prompts/get, resources/read or completion/complete request, with an audit record.

        These requests are allowed by server-level visibility, and argument constraints of rules do
        not apply to them; one that names a protected file is refused. Each is recorded like a tool
        call, under `<method> <name or URI>`.
        """
        params = (
            request.params.model_dump(by_alias=True, mode="json", exclude_none=True) if request.params else {}
        )
        policy = self.guards.policy
        problem = policy.protected_problem(server, params) if policy is not None else None
        audit = self.guards.audit
        if audit is None and problem is None:
            return self._checked_result(await self._send(server, request, ctx), request.method)
        client = self.client_of(ctx)
        target = params.get("name") or params.get("uri") or (params.get("ref") or {}).get("name") or ""
        intent = CallIntent(
            call_id=new_call_id(),
            client=client.name,
            organisation=client.organisation,
            session=_session_id(ctx),
            protocol_era=ctx.protocol_version,
            server=server,
            tool=f"{request.method} {target}"[:200],
            arguments=params,
            decision="auto" if problem is None else "deny",
            rule=SERVER_VISIBILITY_RULE if problem is None else None,
        )
        if problem is not None:
            await self._reject_request(intent, problem)
        assert audit is not None
        async with AsyncExitStack() as stack:
            try:
                audited = await stack.enter_async_context(AuditedCall(audit, intent))
            except AuditUnavailable as exc:
                if self.config.audit.on_failure == "proceed":
                    log.warning("request_not_audited", method=request.method, reason=exc.reason)
                    return self._checked_result(await self._send(server, request, ctx), request.method)
                log.error("request_denied_audit_unavailable", method=request.method, reason=exc.reason)
                raise MCPError(types.INTERNAL_ERROR, str(exc)) from None
            try:
                result = self._checked_result(await self._send(server, request, ctx), request.method)
            except _Withheld as exc:
                audited.finish("denied", detail=exc.detail)
                raise
            audited.finish("succeeded", result_bytes=len(str(result)))
            return result
        raise AssertionError("unreachable: the block above always returns or raises")

    def _checked_result(self, result: dict[str, Any], method: str) -> dict[str, Any]:
        """Return the result of a prompts/get, resources/read or completion/complete request.

        Raises:
            _Withheld: The result contains a secret of the gateway, so it is withheld.
        """
        scan = self.guards.secrets
        found = scan.find_secret(result) if scan is not None else None
        if found is None:
            return result
        log.warning("request_result_withheld", request=method, contains=found.description)
        raise _Withheld(found, "the result")

    def _secret_in_error(self, exc: GuardError) -> Secret | None:
        """Return the gateway secret that a server's error would pass on to the client, or None."""
        scan = self.guards.secrets
        if scan is None or not isinstance(exc, DownstreamError):
            return None
        return scan.find_secret([str(exc), exc.data if isinstance(exc, DownstreamRejected) else None])

    async def _reject_request(self, intent: CallIntent, problem: str) -> NoReturn:
        """Record a rejected prompts/get, resources/read or completion/complete request, and raise its error."""
        log.info("request_denied", client=intent.client, request=intent.tool, reason=problem)
        if self.guards.audit is not None:
            try:
                async with AuditedCall(self.guards.audit, intent) as audited:
                    audited.finish("denied", detail=problem)
            except AuditUnavailable as exc:
                log.error("audit_unavailable", reason=exc.reason)
        raise MCPError(types.INVALID_PARAMS, f"Denied by mcp-guard: {problem}")

    async def _send(
        self, server: str, request: types.ClientRequest, ctx: ServerRequestContext[Any]
    ) -> dict[str, Any]:
        try:
            result = await self.registry.connection(server).request(
                request, progress_callback=_progress_relay(ctx, self.guards.secrets)
            )
        except GuardError as exc:
            found = self._secret_in_error(exc)
            if found is not None:
                log.warning(
                    "request_error_withheld",
                    request=request.method,
                    server=server,
                    contains=found.description,
                )
                raise _Withheld(found, "the server's error") from None
            raise _mcp_error(exc) from None
        if is_input_required(result):
            raise MCPError(
                types.INTERNAL_ERROR,
                f"Server {server!r} asked for user input, which mcp-guard does not relay.",
            )
        return result

    def _page(
        self, key: str, items: list[dict[str, Any]], params: types.PaginatedRequestParams | None
    ) -> dict[str, Any]:
        items = self._without_secrets(key, items)
        size = self.config.gateway.page_size
        start = _cursor_offset(params.cursor if params is not None else None)
        page: dict[str, Any] = {key: items[start : start + size]}
        if start + size < len(items):
            page["nextCursor"] = str(start + size)
        return page

    def _without_secrets(self, key: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return `items` without those whose name, description or schema contains a secret of the gateway."""
        scan = self.guards.secrets
        if scan is None:
            return items
        listed: list[dict[str, Any]] = []
        for item in items:
            found = scan.find_secret(item)
            if found is None:
                listed.append(item)
                continue
            name = str(item.get("name") or item.get("uri") or item.get("uriTemplate") or "")
            logged_name = name if scan.find_secret(name) is None else "(its name contains the secret)"
            if (key, logged_name) not in self._withheld_items:
                self._withheld_items.add((key, logged_name))
                log.warning("listed_item_withheld", list=key, name=logged_name, contains=found.description)
        return listed

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """Return the input schema of an exported tool (the SDK checks 2026 HTTP headers against it)."""
        tool = self.catalog.tools.get(name)
        return None if tool is None else tool.definition.get("inputSchema")


class _Withheld(MCPError):
    """The error a client gets instead of a request's result or error that contains a secret of the gateway.

    Attributes:
        detail: What the audit trail records: what contained which secret, without the secret.
    """

    def __init__(self, found: Secret, source: str) -> None:
        super().__init__(types.INTERNAL_ERROR, withheld_message("request", found))
        self.detail = withheld_detail(source, found)


@dataclass(frozen=True)
class Guards:
    """The guard components a gateway applies to tool calls; a missing one is skipped."""

    audit: AuditStore | None = None
    policy: PolicyGuard | None = None
    limits: LimitStage | None = None
    approval: ApprovalStage | None = None
    secrets: SecretScan | None = None


def assemble_call_pipeline(
    forward: Handler,
    guards: Guards,
    config: GatewayConfig,
    *,
    stop_reason: Callable[[], str | None] = lambda: None,
) -> Handler:
    """Chain the guards in front of `forward`, in the one order they apply.

    The policy decides first, because the intent row records the decision.
    The audit stage comes next, so denials, limit refusals, failures, timeouts
    and cancellations are all recorded. Then the decision is enforced, so a
    denied call spends no rate-limit budget; the limits are taken before
    approval, so no person is asked about a call the limits would refuse; and
    the call is forwarded.
    """
    stages: list[Stage] = []
    if guards.policy is not None:
        # Deciding is pure and comes first only so the intent row can record the decision.
        stages.append(guards.policy.decide)
    if guards.audit is not None:
        proceed = config.audit.on_failure == "proceed"
        stages.append(AuditStage(guards.audit, proceed_without_audit=proceed, stop_reason=stop_reason))
    if guards.secrets is not None:
        # Inside the audit stage, so the trail records a withheld result as a denial, not the secret.
        stages.append(guards.secrets)
    stages.append(partial(_reject_while_stopping, stop_reason))
    if guards.policy is not None:
        stages.append(guards.policy.enforce)
    if guards.limits is not None:
        stages.append(guards.limits)
    if guards.approval is not None:
        stages.append(guards.approval)
    elif guards.policy is not None:
        # Without an approval stage, calls that need a person's approval are rejected (fail closed).
        stages.append(guards.policy.refuse_unapproved)
    return build_call_pipeline(forward, stages)


async def _reject_while_stopping(
    stop_reason: Callable[[], str | None], call: ToolCall, next_handler: Handler
) -> ToolResult:
    """Stage: run no call that arrives once the gateway is stopping.

    Such a call would be cut off at once, or run after its client has gone.
    """
    reason = stop_reason()
    if reason is None:
        return await next_handler(call)
    call.outcome = "gateway_shutdown"
    call.detail = f"the gateway was stopping ({reason}), so the call did not run"
    log.info("tool_call_refused_while_stopping", call_id=call.call_id, reason=reason)
    return tool_error(NOT_RUN_WHILE_STOPPING)


def build_server(gateway: Gateway) -> GatewayServer:
    """Create the SDK server whose handlers are the methods of `gateway`."""
    server = GatewayServer(
        gateway.config.gateway.name,
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=_with_result_type(gateway.list_tools),
        on_call_tool=_with_result_type(gateway.call_tool),
        on_list_prompts=_with_result_type(gateway.list_prompts),
        on_get_prompt=_with_result_type(gateway.get_prompt),
        on_list_resources=_with_result_type(gateway.list_resources),
        on_list_resource_templates=_with_result_type(gateway.list_resource_templates),
        on_read_resource=_with_result_type(gateway.read_resource),
        on_completion=_with_result_type(gateway.complete),
        on_subscriptions_listen=ListenHandler(gateway.notifier.bus),
        get_tool_input_schema=gateway.input_schema,
        # Every cacheable method gets a hint: the SDK's 2026-07-28 check of a wire dict that
        # lacks `ttlMs` and `cacheScope` keeps only the envelope and silently drops the rest.
        cache_hints={method: _PRIVATE for method in _CACHEABLE},
    )
    # Right after the SDK's tracing middleware, so it also covers every later middleware.
    server.middleware.insert(1, hide_internal_errors)
    server.middleware.append(gateway.notifier.track_sessions)
    server.middleware.append(gateway.note_stdio_era)
    return server


def _with_result_type(handler: Callable[[ServerRequestContext[Any], Any], Awaitable[dict[str, Any]]]) -> Any:
    """Wrap a handler so its wire dict carries the `resultType` 2026-07-28 requires.

    The SDK adds it to result models on its own, but checks wire dicts as they are.
    """

    async def handle(ctx: ServerRequestContext[Any], params: Any) -> dict[str, Any]:
        result = await handler(ctx, params)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            result.setdefault("resultType", "complete")
        return result

    return handle


async def hide_internal_errors(ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
    """Middleware: replace the text of unexpected exceptions with a generic message.

    On handshake-era connections the SDK sends an unexpected exception's text to
    the client as the error message, which could reveal paths, hosts or secrets.
    """
    try:
        return await call_next(ctx)
    except (MCPError, ValidationError):
        raise
    except Exception:
        log.exception("request_failed", method=ctx.method, request_id=ctx.request_id)
        raise MCPError(types.INTERNAL_ERROR, "Internal server error") from None


def _mcp_error(exc: GuardError) -> MCPError:
    """Turn a gateway error into the JSON-RPC error the client receives."""
    if isinstance(exc, DownstreamRejected):
        return MCPError(exc.code, exc.error_message, exc.data)
    if isinstance(exc, NotFoundError):
        return MCPError(types.INVALID_PARAMS, str(exc))
    return MCPError(types.INTERNAL_ERROR, str(exc))


def _cursor_offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        raise MCPError(types.INVALID_PARAMS, f"Invalid cursor: {cursor[:40]!r}; list again without a cursor.")
    return int(cursor)


def _era(version: str) -> str:
    """Return the catalogue era a protocol version belongs to."""
    return MODERN_ERA if version == MODERN_ERA else LEGACY_ERA


def _session_id(ctx: ServerRequestContext[Any]) -> str | None:
    """Return the MCP session of an HTTP request, which only a handshake-era request has.

    The SDK checks the `Mcp-Session-Id` header only on handshake-era requests, so on a
    2026-07-28 request it is whatever the client chose and is not used.
    """
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is not None:
        value = headers.get("mcp-session-id")
        return str(value) if value is not None else None
    return None


def _log_relay(ctx: ServerRequestContext[Any]) -> Callable[[str], Awaitable[None]]:
    """Return a callback that sends a warning log message to the caller."""
    session = ctx.session
    request_id = ctx.request_id

    async def send(message: str) -> None:
        try:
            # Log messages to the client are deprecated from 2026-07-28 on, but are still delivered
            # to clients that opt in. The warning gives an operator nothing to act on.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await session.send_log_message(
                    "warning", message, logger="mcp-guard", related_request_id=request_id
                )
        except Exception as exc:  # contained: a client that cannot take the message still gets its result
            log.info("notification_not_delivered", error=type(exc).__name__)

    return send


def _elicit_relay(ctx: ServerRequestContext[Any]) -> Elicit | None:
    """Return a callback that asks the caller's user a form question, or None if the caller cannot be asked.

    Only a handshake-era client that declared form elicitation, on a connection that can carry a
    request to it within this call, is asked. A 2026-07-28 client is asked through an
    input-required result instead (see `_input_round`).
    """
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS or not _accepts_forms(ctx):
        return None
    session = ctx.session
    if not session.can_send_request:
        return None
    request_id = ctx.request_id

    async def ask(message: str, schema: dict[str, Any], wait_seconds: float) -> dict[str, Any]:
        params = types.ElicitRequestFormParams(message=message, requested_schema=schema)
        return await _elicit(session, params, request_id, wait_seconds)

    return ask


async def _elicit(
    session: Any,
    params: types.ElicitRequestFormParams | types.ElicitRequestURLParams,
    request_id: Any,
    wait_seconds: float,
) -> dict[str, Any]:
    """Send one elicitation request within the call `request_id` and return the response as a dict.

    Raises:
        TimeoutError: No response came within `wait_seconds`.
    """
    try:
        result = await session.send_request(
            types.ElicitRequest(params=params),
            types.ElicitResult,
            request_read_timeout_seconds=wait_seconds,
            metadata=ServerMessageMetadata(related_request_id=request_id),
        )
    except MCPError as exc:
        if exc.error.code == types.REQUEST_TIMEOUT:
            raise TimeoutError("no response to the approval question") from None
        raise
    dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped


def _input_round(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> InputRound | None:
    """Return the MRTR fields of a call whose client can be asked through an input-required result, or None.

    Only a 2026-07-28 request from a client that declared form elicitation qualifies. The SDK parses
    `inputResponses` and `requestState` on handshake-era requests too, and there they are ignored.
    """
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS or not _accepts_forms(ctx):
        return None
    responses = {
        key: response.model_dump(by_alias=True, mode="json", exclude_none=True)
        for key, response in (params.input_responses or {}).items()
    }
    return InputRound(responses=responses, state=params.request_state)


def _accepts_forms(ctx: ServerRequestContext[Any]) -> bool:
    """Return whether the request's client declared form elicitation. An empty `elicitation` means form only."""
    capabilities = ctx.session.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


def _url_question(ctx: ServerRequestContext[Any]) -> UrlQuestion | None:
    """Return a way to send the caller's user to a web page, or None if the caller cannot be sent.

    Only a handshake-era client that declared URL-mode elicitation, on a connection that can
    carry a request to it within this call, is sent.
    """
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return None
    session = ctx.session
    capabilities = session.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None or elicitation.url is None or not session.can_send_request:
        return None
    request_id = ctx.request_id

    async def ask(message: str, url: str, elicitation_id: str, wait_seconds: float) -> dict[str, Any]:
        params = types.ElicitRequestURLParams(message=message, url=url, elicitation_id=elicitation_id)
        return await _elicit(session, params, request_id, wait_seconds)

    async def complete(elicitation_id: str) -> None:
        await session.send_elicit_complete(elicitation_id, related_request_id=request_id)

    return UrlQuestion(ask=ask, complete=complete)


def _progress_relay(ctx: ServerRequestContext[Any], scan: SecretScan | None) -> Any:
    """Return a callback that passes downstream progress to the caller, if it asked for progress.

    A message that contains a secret of the gateway is replaced by a note naming what it contained.
    """
    if ctx.meta is None or "progress_token" not in ctx.meta:
        return None
    session = ctx.session

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        found = scan.find_secret(message) if scan is not None and message else None
        if found is not None:
            log.warning("progress_message_withheld", request_id=ctx.request_id, contains=found.description)
            message = f"mcp-guard withheld this progress message: it contains {found.description}."
        await session.report_progress(progress, total, message)

    return relay
