"""Running the gateway over stdio or streamable HTTP.

Both entry points start the downstream registry first, in a task group of
their own. The SDK lifespan is not used because it runs twice when one process
serves both transports. They serve until the client goes away or a signal
arrives, and then stop every downstream connection.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog
import uvicorn
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl

from mcp_guard.approval.cli import approvals_command
from mcp_guard.approval.page import ApprovalPage
from mcp_guard.approval.sealed import KEY_FILE as APPROVAL_KEY_FILE
from mcp_guard.approval.sealed import ApprovalKeyError, load_or_create_key
from mcp_guard.approval.store import ApprovalRequest, ApprovalStore
from mcp_guard.approval.webhook import post_webhook, webhook_message
from mcp_guard.audit import Redactor, SqliteAuditStore
from mcp_guard.config.models import GatewayConfig
from mcp_guard.downstream.registry import DownstreamRegistry
from mcp_guard.errors import AuditUnavailable, GuardError, ListenFailed
from mcp_guard.gateway.approval import ApprovalStage
from mcp_guard.gateway.code_tool import running_code_tool
from mcp_guard.gateway.direct import DirectCalls
from mcp_guard.gateway.identity import ApiKeyVerifier, MissingTokenLog
from mcp_guard.gateway.limits import LimitStage
from mcp_guard.gateway.policy_guard import PolicyGuard, protected_places
from mcp_guard.gateway.secret_scan import SecretScan, gateway_secrets
from mcp_guard.gateway.server import Gateway, GatewayServer, Guards, build_server
from mcp_guard.gateway.stdio import gateway_stdio
from mcp_guard.pinning import PinStore
from mcp_guard.policy import PolicyEngine
from mcp_guard.policy.protected import ProtectedPaths
from mcp_guard.ratelimit import Limiter, open_limit_store
from mcp_guard.state.clock import HighWaterClock, SteadyClock
from mcp_guard.state.usage import UsageStore

if TYPE_CHECKING:
    from mcp_guard.gateway.oauth import JwtVerifier

log = structlog.get_logger(module=__name__)

# Legacy HTTP sessions idle for this long are closed (the SDK's default).
HTTP_SESSION_IDLE_SECONDS = 1800
# On shutdown, open response streams (a legacy client's GET stream never ends on its own) get
# this long before they are closed.
HTTP_SHUTDOWN_GRACE_SECONDS = 2
# On a signal over stdio, the calls in progress get this long to return their errors.
STDIO_STOP_GRACE_SECONDS = 2
# Then their responses get this long to reach stdout, since the SDK writes them a few
# event-loop turns later.
# NOTE: an estimate, not a wait for the write itself. On a machine too slow for it, a response is lost.
STDIO_RESPONSE_SECONDS = 0.05
HTTP_BACKLOG = 512
USAGE_FILE = "state.sqlite3"
# The approval page listens on the loopback interface only.
PAGE_HOST = "127.0.0.1"


@asynccontextmanager
async def running_gateway(
    config: GatewayConfig,
    *,
    client: str,
    environ: Mapping[str, str] | None = None,
    clock: HighWaterClock | None = None,
    limit_clock: SteadyClock | None = None,
    policy_path: str | None = None,
) -> AsyncIterator[tuple[Gateway, GatewayServer]]:
    """Open the state, start the downstream connections, and yield a gateway and its SDK server.

    The audit store is entered first and left last, so calls still running when
    the servers stop can record their outcomes.
    """
    state_dir = Path(config.gateway.state_dir)
    async with AsyncExitStack() as stack:
        audit: SqliteAuditStore | None = None
        if config.audit.enabled:
            audit = await stack.enter_async_context(open_audit_store(config))
            await prune_audit(audit, config)
        else:
            log.warning("audit_disabled", hint="no call is recorded; set audit.enabled = true")
        pins = await stack.enter_async_context(PinStore.in_state_dir(state_dir))
        usage = await stack.enter_async_context(UsageStore(state_dir / USAGE_FILE, clock or HighWaterClock()))
        limit_clock = limit_clock or SteadyClock()
        limit_store = await stack.enter_async_context(
            open_limit_store(config.limits, state_dir, clock=limit_clock, environ=environ)
        )
        limits = LimitStage(Limiter(config.limits, config.clients, limit_store), config, limit_clock)
        engine = PolicyEngine(config.rules, config.clients, config.servers)
        protected = ProtectedPaths(protected_places(config, policy_path=policy_path, environ=environ))
        policy = PolicyGuard(config, engine, pins, usage, protected)
        code_tool = await stack.enter_async_context(
            running_code_tool(config.sandbox, os.environ if environ is None else environ)
        )
        builtin = [code_tool.exported] if code_tool is not None else []
        registry = DownstreamRegistry(config, environ=environ, builtin=builtin)
        approvals = await stack.enter_async_context(ApprovalStore.in_state_dir(state_dir))
        page = ApprovalPage(approvals, config.approval) if config.approval.page_port is not None else None
        command = approvals_command(policy_path)
        webhook = _webhook_url(config, os.environ if environ is None else environ)

        def announce(request: ApprovalRequest, link: str | None) -> None:
            if webhook is not None:
                tasks.start_soon(post_webhook, webhook, webhook_message(request, link, command))

        approval = ApprovalStage(
            approvals,
            config,
            _redactor(config),
            still_current=lambda call: gateway.still_current(call),
            charge_question=limits.charge_approval,
            link_for=page.link_for if page is not None else None,
            command=command,
            announce=announce,
        )
        # Built once the audit store is open and the approval key exists, so the scan finds both keys.
        await _make_approval_key(state_dir)
        secrets = SecretScan(gateway_secrets(config, environ))
        guards = Guards(audit=audit, policy=policy, limits=limits, approval=approval, secrets=secrets)
        gateway = Gateway(config, registry, client=client, guards=guards, code_tool=code_tool)
        await stack.enter_async_context(registry.running(config.gateway.startup_wait_seconds))
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        tasks.start_soon(policy.watch_pins, registry, gateway.tools_changed)
        tasks.start_soon(policy.watch_windows, {*config.clients, client}, gateway.tools_changed)
        if page is not None and config.approval.page_port is not None:
            web = _approval_page_server(page, config.approval.page_port)
            stack.callback(setattr, web, "should_exit", True)
            tasks.start_soon(web.serve_page)
        yield gateway, build_server(gateway)


def _webhook_url(config: GatewayConfig, environ: Mapping[str, str]) -> str | None:
    """Return the approval webhook's URL from the environment, if the policy names a variable for it."""
    variable = config.approval.webhook_url_from
    return environ.get(variable) if variable is not None else None


def open_audit_store(config: GatewayConfig) -> SqliteAuditStore:
    """Build the audit store of the configured state directory."""
    settings = config.audit
    return SqliteAuditStore.in_state_dir(
        Path(config.gateway.state_dir),
        _redactor(config),
        key_env_var=settings.key_env,
        power_safe=settings.power_safe,
    )


def _redactor(config: GatewayConfig) -> Redactor:
    """Build the redactor of audit rows, which also redacts what a person is asked to approve."""
    return Redactor(extra_keys=config.audit.redact_keys, extra_patterns=config.audit.redact_patterns)


async def _make_approval_key(state_dir: Path) -> None:
    """Create the key that seals approval request states now, rather than at the first question.

    The secret scan reads it when the gateway starts. The cipher is set up only when a question
    is sealed, which keeps its memory out of gateways that never ask. A key that cannot be created
    is reported by the approval stage on each call that needs it.
    """
    try:
        await anyio.to_thread.run_sync(load_or_create_key, state_dir / APPROVAL_KEY_FILE)
    except ApprovalKeyError as exc:
        log.warning("approval_key_unavailable", reason=exc.reason)


async def prune_audit(store: SqliteAuditStore, config: GatewayConfig) -> None:
    """Apply the configured retention to the audit trail."""
    settings = config.audit
    if settings.retention_days is None and settings.max_rows is None:
        return
    older_than = timedelta(days=settings.retention_days) if settings.retention_days is not None else None
    try:
        pruned = await store.prune(older_than=older_than, max_rows=settings.max_rows)
    except AuditUnavailable as exc:
        # The gateway still starts, and denies each call until the trail can be written. The next
        # start prunes.
        log.warning("audit_prune_skipped", reason=exc.reason)
        return
    log.info("audit_pruned", result=str(pruned))


async def serve_stdio(config: GatewayConfig, *, client: str, policy_path: str | None = None) -> None:
    """Serve one client over this process's stdin and stdout until stdin closes."""
    async with anyio.create_task_group() as tasks:
        stopper = _Stopper(tasks.cancel_scope)
        await tasks.start(stopper.watch)
        async with running_gateway(config, client=client, policy_path=policy_path) as (gateway, server):
            with anyio.CancelScope() as serving:
                stopper.serving(gateway, serving)
                log.info("gateway_started", transport="stdio", servers=len(config.servers), client=client)

                def stdin_closed() -> None:
                    gateway.stopping = gateway.stopping or "stdin closed"

                async with gateway_stdio(DirectCalls(gateway, server.server_info_stamp), stdin_closed) as (
                    read_stream,
                    write_stream,
                ):
                    await server.run(read_stream, write_stream, server.create_initialization_options())
        tasks.cancel_scope.cancel()
    log.info("gateway_stopped", transport="stdio")


async def serve_http(
    config: GatewayConfig,
    *,
    client: str,
    host: str | None = None,
    port: int | None = None,
    port_file: Path | None = None,
    policy_path: str | None = None,
) -> None:
    """Serve streamable HTTP until SIGINT or SIGTERM.

    Args:
        port_file: If given, the bound port is written there once connections are accepted.
    """
    http = config.gateway.http
    host = host or http.host
    port = http.port if port is None else port
    # Read the JWKS before anything starts, so a bad file stops the gateway with a ConfigError.
    oauth = config.gateway.oauth
    jwts: JwtVerifier | None = None
    if oauth is not None:
        # Imported only here: the JWT library and its cryptography add about 2 MB to a gateway
        # that checks no tokens, over stdio or with API keys only.
        from mcp_guard.gateway.oauth import JwtVerifier

        jwts = JwtVerifier(oauth, config.clients)
    # Bound before anything starts, so a port in use stops the gateway with a plain message.
    try:
        sock = _listening_socket(host, port)
    except OSError as exc:
        raise ListenFailed(f"Cannot listen on {host} port {port}: {_listen_fix(exc)}.") from None
    async with anyio.create_task_group() as tasks:
        stopper = _Stopper(tasks.cancel_scope)
        await tasks.start(stopper.watch)
        await _serve_http_app(config, client, policy_path, stopper, sock, jwts, host, port_file)
        tasks.cancel_scope.cancel()
    log.info("gateway_stopped", transport="http")


async def _serve_http_app(
    config: GatewayConfig,
    client: str,
    policy_path: str | None,
    stopper: _Stopper,
    sock: socket.socket,
    jwts: JwtVerifier | None,
    host: str,
    port_file: Path | None,
) -> None:
    http = config.gateway.http
    async with running_gateway(config, client=client, policy_path=policy_path) as (gateway, server):
        app = server.streamable_http_app(
            **_auth_options(gateway, jwts),
            streamable_http_path=http.path,
            host=host,
            transport_security=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=list(http.allowed_hosts),
                allowed_origins=list(http.allowed_origins),
            ),
            max_request_body_size=http.max_request_body_bytes,
            session_idle_timeout=HTTP_SESSION_IDLE_SECONDS,
        )
        served: Any = MissingTokenLog(app, http.path) if gateway.directory.has_credentials else app
        bound_port = sock.getsockname()[1]
        if port_file is not None:
            _write_atomically(port_file, str(bound_port))
        uvicorn_config = uvicorn.Config(
            served,
            access_log=False,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=HTTP_SHUTDOWN_GRACE_SECONDS,
        )
        web = _QuietServer(uvicorn_config)
        stopper.serving(gateway, web=web)
        log.info("gateway_started", transport="http", host=host, port=bound_port, path=http.path)
        await web.serve(sockets=[sock])


# No OAuth endpoints are served, so the issuer only fills a required field.
_AUTH_SETTINGS = AuthSettings(issuer_url=AnyHttpUrl("http://127.0.0.1"), resource_server_url=None)


def _auth_options(gateway: Gateway, jwts: JwtVerifier | None) -> dict[str, Any]:
    """Return the SDK options that make every HTTP request prove which client sent it."""
    if not gateway.directory.has_credentials:
        # The command line refuses this case unless `allow_unauthenticated_as` names a client.
        return {}
    if jwts is None:
        return {"auth": _AUTH_SETTINGS, "token_verifier": ApiKeyVerifier(gateway.directory)}
    from mcp_guard.gateway.oauth import CombinedVerifier  # loaded with JwtVerifier, see serve_http

    return {"auth": _AUTH_SETTINGS, "token_verifier": CombinedVerifier(gateway.directory, jwts)}


def _listening_socket(host: str, port: int) -> socket.socket:
    # asyncio turns Nagle's algorithm off only on sockets created with IPPROTO_TCP, and accepted
    # sockets inherit the setting. With the default protocol 0, a small response waited about
    # 40 ms for a delayed ACK in our HTTP tests on Python 3.11.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(HTTP_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _listen_fix(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "another process uses this port; stop it, or pass --port (0 picks a free port)"
    if exc.errno == errno.EACCES:
        return "permission denied; ports below 1024 need privileges, so pass --port with a higher one"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no network interface of this machine has this address; check gateway.http.host or --host"
    return f"{exc.strerror or exc}; check gateway.http.host and gateway.http.port, or --host and --port"


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _approval_page_server(page: ApprovalPage, port: int) -> _PageServer:
    """Bind the approval page's port on 127.0.0.1 and build its server."""
    try:
        sock = _listening_socket(PAGE_HOST, port)
    except OSError as exc:
        raise ApprovalPageUnavailable(port, exc.strerror or str(exc)) from None
    bound_port = sock.getsockname()[1]
    app = page.app(bound_port)
    log.info("approval_page_started", url=f"http://{PAGE_HOST}:{bound_port}")
    return _PageServer(uvicorn.Config(app, access_log=False, log_config=None, lifespan="off"), sock)


class ApprovalPageUnavailable(GuardError):
    """The approval page's port cannot be bound, so the gateway does not start."""

    def __init__(self, port: int, reason: str) -> None:
        super().__init__(
            f"The approval page cannot listen on {PAGE_HOST}:{port} ({reason}). Choose a free port in "
            "approval.page_port, or 0 to let the system pick one."
        )


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the gateway.

    uvicorn re-raises a captured SIGTERM once it has served its last request,
    which would kill the process before the downstream servers are stopped.
    """

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _PageServer(_QuietServer):
    """The approval page's server, with the socket it serves on."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config)
        self._sock = sock

    async def serve_page(self) -> None:
        """Serve until the gateway stops."""
        await self.serve(sockets=[self._sock])


class _Stopper:
    """Stops the gateway on SIGTERM or SIGINT, from before its servers start until it has stopped.

    While the servers start, a signal cancels the start, and each server is stopped as its
    transport closes. The default action would end the process at once and leave the servers,
    which run in sessions of their own, behind. Once serving, both transports stop the calls in
    progress, which return an error saying the gateway is stopping; then stdio closes and HTTP
    finishes the requests it has.
    """

    def __init__(self, scope: anyio.CancelScope) -> None:
        self._scope = scope
        self._gateway: Gateway | None = None
        self._serving: anyio.CancelScope | None = None
        self._web: uvicorn.Server | None = None

    def serving(
        self, gateway: Gateway, scope: anyio.CancelScope | None = None, *, web: uvicorn.Server | None = None
    ) -> None:
        """Stop `gateway` from now on: cancel `scope` (stdio), or tell `web` to finish (HTTP)."""
        self._gateway, self._serving, self._web = gateway, scope, web

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Wait for the first signal and stop; `task_status` is set once the signals are caught."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for received in signals:
                name = signal.Signals(received).name
                log.info("gateway_stopping", signal=name)
                await self._stop(name)
                return

    async def _stop(self, name: str) -> None:
        gateway = self._gateway
        if gateway is None:
            self._scope.cancel()
            return
        gateway.stop_calls(name)
        if self._web is not None:
            self._web.should_exit = True
        elif self._serving is not None:
            # The stopped calls return their errors, and the responses go out before the wire closes.
            with anyio.move_on_after(STDIO_STOP_GRACE_SECONDS):
                await gateway.calls_stopped()
                await anyio.sleep(STDIO_RESPONSE_SECONDS)
            self._serving.cancel()
