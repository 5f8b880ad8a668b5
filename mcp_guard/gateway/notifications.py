"""Telling connected clients that a list changed, in both protocol eras.

2026-07-28 clients receive change events only on `subscriptions/listen`
streams, which the SDK serves from a subscription bus. Handshake-era clients
receive `notifications/*/list_changed` on their connection, and the SDK keeps
no list of those connections, so a middleware records each one the first
time it sends a request and drops it when the connection closes.
"""

from __future__ import annotations

from typing import Any

import structlog
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

log = structlog.get_logger(module=__name__)


class ChangeNotifier:
    """Sends list-changed notifications to every connected client."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._legacy_sessions: dict[int, ServerSession] = {}

    @property
    def legacy_session_count(self) -> int:
        """Number of handshake-era connections that would receive a notification now."""
        return len(self._legacy_sessions)

    async def track_sessions(self, ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
        """Middleware: remember each handshake-era connection that has a channel back to it."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._remember(ctx.session)
        return await call_next(ctx)

    async def publish(self, kinds: frozenset[str]) -> None:
        """Notify clients of both eras that the lists of `kinds` changed."""
        events: dict[str, ServerEvent] = {
            "tools": ToolsListChanged(),
            "prompts": PromptsListChanged(),
            "resources": ResourcesListChanged(),
        }
        for kind in sorted(kinds):
            await self.bus.publish(events[kind])
        for key, session in list(self._legacy_sessions.items()):
            try:
                for kind in sorted(kinds):
                    await _send_legacy(session, kind)
            except Exception as exc:  # contained: one closed connection must not stop the rest
                log.info("list_changed_not_delivered", error=type(exc).__name__)
                self._legacy_sessions.pop(key, None)
        log.info("list_changed_sent", kinds=sorted(kinds), legacy_clients=len(self._legacy_sessions))

    def _remember(self, session: ServerSession) -> None:
        # NOTE: the SDK has no public "connection closed" hook, so this reads the session's
        # private connection; the SDK version is pinned and a test covers it.
        connection = session._connection
        key = id(connection)
        if key in self._legacy_sessions:
            return
        self._legacy_sessions[key] = session
        connection.exit_stack.callback(self._legacy_sessions.pop, key, None)


async def _send_legacy(session: ServerSession, kind: str) -> None:
    if kind == "tools":
        await session.send_tool_list_changed()
    elif kind == "prompts":
        await session.send_prompt_list_changed()
    else:
        await session.send_resource_list_changed()
