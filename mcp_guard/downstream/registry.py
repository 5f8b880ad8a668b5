"""All downstream connections and the catalogue built from their listings.

The registry starts one supervised connection per configured server, rebuilds
the catalogue when any listing changes, and notifies its listeners of the kinds of
list that changed so the gateway can notify clients. Looking names up and routing
requests to the right connection also live here; deciding whether a request is
allowed does not.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import structlog

from mcp_guard.config.models import GatewayConfig
from mcp_guard.downstream.catalog import Catalog, ExportedTool, SourceListing, build_catalog
from mcp_guard.downstream.connection import DownstreamConnection, ServerState

log = structlog.get_logger(module=__name__)

ChangeListener = Callable[[frozenset[str]], Awaitable[None]]
"""Called with the kinds of list that changed: "tools", "prompts", "resources"."""


class DownstreamRegistry:
    """The connections to every configured downstream server.

    Use as an async context manager: entering starts every connection and waits
    until each has made its first attempt; leaving stops them all.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        environ: Mapping[str, str] | None = None,
        builtin: Sequence[ExportedTool] = (),
        errlog: TextIO | None = None,
    ) -> None:
        self._config = config
        self._builtin = tuple(builtin)
        self.connections = {
            server_id: DownstreamConnection(
                server_id, server, environ=environ, on_listing=self._on_listing, errlog=errlog
            )
            for server_id, server in config.servers.items()
        }
        # The gateway's own tools are listed from the start, before any server has responded.
        self.catalog = build_catalog({}, {}, config.gateway.max_tool_name_length, self._builtin)
        self._listeners: list[ChangeListener] = []
        self._entered = False

    def add_listener(self, listener: ChangeListener) -> None:
        """Register a callback for catalogue changes."""
        self._listeners.append(listener)

    @asynccontextmanager
    async def running(self, wait_seconds: float = math.inf) -> AsyncIterator[DownstreamRegistry]:
        """Start every connection, yield once each made its first attempt, stop all on exit.

        Args:
            wait_seconds: Yield after this long even if some connections are still on their first
                attempt. Each such server joins the catalogue when it gets ready, as after a restart.
        """
        if self._entered:
            raise RuntimeError("the registry is already running; create a new one to start again")
        self._entered = True
        async with anyio.create_task_group() as tasks:
            first_attempts_done = anyio.Event()
            tasks.start_soon(self._first_attempts, tasks, first_attempts_done)
            with anyio.move_on_after(wait_seconds):
                await first_attempts_done.wait()
            if not first_attempts_done.is_set():
                starting = [
                    sid for sid, conn in self.connections.items() if conn.state is ServerState.STARTING
                ]
                log.warning("downstream_still_starting", servers=starting, waited_seconds=wait_seconds)
            try:
                yield self
            finally:
                tasks.cancel_scope.cancel()

    async def _first_attempts(self, tasks: anyio.abc.TaskGroup, done: anyio.Event) -> None:
        """Start every connection, then log each that did not get ready in its first attempt."""
        async with anyio.create_task_group() as first_attempts:
            for connection in self.connections.values():
                first_attempts.start_soon(self._start, tasks, connection)
        done.set()
        unavailable = [sid for sid, conn in self.connections.items() if conn.state is not ServerState.READY]
        for server_id in unavailable:
            log.error(
                "downstream_unavailable_at_start",
                server=server_id,
                error=self.connections[server_id].last_error,
            )

    def connection(self, server_id: str) -> DownstreamConnection:
        """Return the connection of a configured server."""
        return self.connections[server_id]

    def status(self) -> dict[str, dict[str, Any]]:
        """Return each server's state, protocol version and last error, for operators."""
        return {
            server_id: {
                "state": conn.state.value,
                "protocol": conn.protocol_version,
                "tools": len(conn.listing.tools),
                "last_error": conn.last_error,
            }
            for server_id, conn in self.connections.items()
        }

    @staticmethod
    async def _start(tasks: anyio.abc.TaskGroup, connection: DownstreamConnection) -> None:
        await tasks.start(_run_connection, connection)

    async def _on_listing(self, server_id: str) -> None:
        before = self.catalog
        self.catalog = self._build()
        changed = _changed_kinds(before, self.catalog)
        if not changed:
            return
        for listener in self._listeners:
            await listener(changed)

    def _build(self) -> Catalog:
        listings = {
            server_id: SourceListing(
                conn.listing.tools,
                conn.listing.resources,
                conn.listing.resource_templates,
                conn.listing.prompts,
                conn.listing.completions,
            )
            # A restarting server keeps its last listing, so clients see no churn and its
            # calls fail with a "retry shortly" error rather than "unknown tool".
            for server_id, conn in self.connections.items()
        }
        prefixes = {server_id: self._config.prefix_of(server_id) for server_id in self._config.servers}
        return build_catalog(listings, prefixes, self._config.gateway.max_tool_name_length, self._builtin)


async def _run_connection(
    connection: DownstreamConnection, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    await connection.run(task_status=task_status)


def _changed_kinds(before: Catalog, after: Catalog) -> frozenset[str]:
    kinds = set()
    if [t.definition for t in before.tools.values()] != [t.definition for t in after.tools.values()]:
        kinds.add("tools")
    if [p.definition for p in before.prompts.values()] != [p.definition for p in after.prompts.values()]:
        kinds.add("prompts")
    if [r.definition for r in before.resources.values()] != [
        r.definition for r in after.resources.values()
    ] or [t.definition for t in before.templates] != [t.definition for t in after.templates]:
        kinds.add("resources")
    return frozenset(kinds)
