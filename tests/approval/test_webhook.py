"""The approval webhook: a failing webhook is logged, without its URL, and never stops the gateway."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from mcp_guard.approval.webhook import post_webhook

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/refused-token", "http://127.0.0.1:9/x-token\r\n", "not a url"]
)
async def test_failing_webhook_is_logged_not_raised(url: str) -> None:
    with capture_logs() as logs:
        await post_webhook(url, {"request": "r1", "text": "a call waits"})

    assert [entry["event"] for entry in logs] == ["approval_webhook_failed"]
    assert logs[0]["request"] == "r1"
    assert "token" not in repr(logs)
