"""Calls that arrive once the gateway has begun to stop are rejected and recorded, never run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_guard.audit import CallFilter, SqliteAuditStore
from mcp_guard.config.loading import load_config
from mcp_guard.downstream.catalog import LEGACY_ERA, ExportedTool
from mcp_guard.gateway.pipeline import ToolCall, ToolResult
from mcp_guard.gateway.server import Guards, assemble_call_pipeline

pytestmark = pytest.mark.anyio

ECHO = ExportedTool(
    server="alpha",
    name="echo",
    exported="alpha__echo",
    definition={"name": "alpha__echo", "inputSchema": {"type": "object"}},
    eras=frozenset({LEGACY_ERA}),
)


async def test_call_during_stop_not_run(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    config = load_config(policy)
    forwarded: list[ToolCall] = []
    stopping: list[str] = []

    async def forward(call: ToolCall) -> ToolResult:
        forwarded.append(call)
        return {"content": [{"type": "text", "text": "ran"}]}

    async with SqliteAuditStore.in_state_dir(tmp_path / "state") as store:
        pipeline = assemble_call_pipeline(
            forward, Guards(audit=store), config, stop_reason=lambda: stopping[0] if stopping else None
        )
        before = await pipeline(echo_call())
        stopping.append("SIGTERM")
        during = await pipeline(echo_call())
        calls = await store.search(CallFilter(), oldest_first=True)

    assert before == {"content": [{"type": "text", "text": "ran"}]}
    assert len(forwarded) == 1
    assert during["isError"] is True
    assert during["content"][0]["text"] == (
        "mcp-guard is stopping, so this call was not run. Retry once the gateway is back."
    )
    assert [call.outcome.outcome for call in calls if call.outcome] == ["succeeded", "gateway_shutdown"]
    assert calls[1].outcome is not None
    assert calls[1].outcome.detail == "the gateway was stopping (SIGTERM), so the call did not run"


def echo_call() -> ToolCall:
    return ToolCall(
        client="default", session="s", protocol_version="2025-11-25", tool=ECHO, arguments={"text": "hi"}
    )
