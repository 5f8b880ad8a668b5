"""Running the gateway over stdio or streamable HTTP.

Both entry points start the downstream registry first, in a task group of
their own (not the SDK lifespan, which runs twice when one process serves
both transports), then serve until the client goes away or a signal arrives,
then stop every downstream connection.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
import structlog
import uvicorn
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from mcp_guard.config.models import GatewayConfig
from mcp_guard.downstream.registry import DownstreamRegistry
from mcp_guard.gateway.server import Gateway, GatewayServer, build_server

log = structlog.get_logger(module=__name__)

# Legacy HTTP sessions idle for this long are closed (the SDK's default).
HTTP_SESSION_IDLE_SECONDS = 1800


@asynccontextmanager
async def running_gateway(
    config: GatewayConfig, *, client: str, environ: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[Gateway, GatewayServer]]:
    """Start the downstream connections and yield a gateway and its SDK server."""
    registry = DownstreamRegistry(config, environ=environ)
    gateway = Gateway(config, registry, client=client)
    async with registry.running():
        yield gateway, build_server(gateway)


async def serve_stdio(config: GatewayConfig, *, client: str) -> None:
    """Serve one client over this process's stdin and stdout until stdin closes."""
    async with (
        running_gateway(config, client=client) as (_gateway, server),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_stop_on_signal, tasks.cancel_scope)
        log.info("gateway_started", transport="stdio", servers=len(config.servers))
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        tasks.cancel_scope.cancel()
    log.info("gateway_stopped", transport="stdio")


async def serve_http(
    config: GatewayConfig, *, client: str, host: str | None = None, port: int | None = None
) -> None:
    """Serve streamable HTTP until interrupted."""
    http = config.gateway.http
    host = host or http.host
    port = http.port if port is None else port
    async with running_gateway(config, client=client) as (_gateway, server):
        app = server.streamable_http_app(
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
        uvicorn_config = uvicorn.Config(
            app, host=host, port=port, access_log=False, log_config=None, lifespan="on"
        )
        web = uvicorn.Server(uvicorn_config)
        log.info("gateway_started", transport="http", host=host, port=port, path=http.path)
        await web.serve()
    log.info("gateway_stopped", transport="http")


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            log.info("gateway_stopping", signal=signal.Signals(received).name)
            scope.cancel()
            return
