"""Starting each imported server once to list its tools, as `mcp-guard check` does.

The tools a server annotates `readOnlyHint: true` become its `read_only_tools`, and every
other tool counts as writing. The annotations are the server's own claims, so a comment in
the policy names them as the source. Nothing is pinned or recorded here, because the
gateway pins definitions the first time it starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from mcp_guard.config.models import GatewayConfig
from mcp_guard.config.rules import WILDCARD
from mcp_guard.downstream.connection import ServerState
from mcp_guard.setup.importing import ImportResult

# How long one server may take to start and list its tools. Servers started through npx or
# uvx may first download their package.
PROBE_STARTUP_SECONDS = 60.0
# Bounds the whole probe, a little above the per-server limit, since servers start in parallel.
PROBE_TOTAL_SECONDS = PROBE_STARTUP_SECONDS + 15.0


@dataclass(frozen=True)
class ToolListing:
    """The tools one server listed when init connected to it, or the reason it could not connect."""

    read_only: tuple[str, ...] = ()
    writing: tuple[str, ...] = ()
    error: str | None = None
    """The reason the server could not be reached, or None when it listed its tools."""
    skipped: tuple[str, ...] = ()
    """Tool names no rule can name, such as "*", which means every tool in a rule."""

    @property
    def reached(self) -> bool:
        """Whether the server listed its tools."""
        return self.error is None


async def list_tools(
    imported: ImportResult, environ: Mapping[str, str] | None = None
) -> dict[str, ToolListing]:
    """Connect to every imported server at once and return each one's tools by server id."""
    from mcp_guard.downstream.registry import DownstreamRegistry

    config = _probe_config(imported)
    probe_environ = {**(os.environ if environ is None else environ), **_known_values(imported)}
    listings = {server.server_id: ToolListing(error="no answer in time") for server in imported.servers}
    with anyio.move_on_after(PROBE_TOTAL_SECONDS):
        async with DownstreamRegistry(config, environ=probe_environ).running() as registry:
            for server_id, connection in registry.connections.items():
                if connection.state is not ServerState.READY:
                    listings[server_id] = ToolListing(error=connection.last_error or "not ready")
                    continue
                listings[server_id] = _classify(connection.listing.tools)
    return listings


def _probe_config(imported: ImportResult) -> GatewayConfig:
    servers = {
        server.server_id: {**server.table, "startup_timeout_seconds": PROBE_STARTUP_SECONDS}
        for server in imported.servers
    }
    return GatewayConfig.model_validate({"servers": servers})


def _known_values(imported: ImportResult) -> dict[str, str]:
    return {
        name: variable.probe_value
        for name, variable in imported.variables.items()
        if variable.probe_value is not None
    }


def _classify(tools: tuple[dict[str, object], ...]) -> ToolListing:
    read_only: list[str] = []
    writing: list[str] = []
    skipped: list[str] = []
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not name or name == WILDCARD:
            skipped.append(str(name))
            continue
        annotations = tool.get("annotations")
        hint = annotations.get("readOnlyHint") if isinstance(annotations, dict) else None
        (read_only if hint is True else writing).append(name)
    return ToolListing(read_only=tuple(read_only), writing=tuple(writing), skipped=tuple(skipped))
