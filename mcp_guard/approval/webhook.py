"""Telling someone that a call waits for approval: a JSON POST to a webhook the operator chose.

The webhook's URL often carries its own secret (chat services put a token in
the path), so it comes from an environment variable and never appears in a log
line or an error. The message names the request, the client, the tool and the
rule, and how to decide (the page link and the command). It carries no
arguments, because the person reads them on the page or with `mcp-guard approvals list`.
A webhook that fails or is slow is logged and changes nothing else: the request
still waits for a decision.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx2
import structlog

from mcp_guard.approval.store import ApprovalRequest

log = structlog.get_logger(module=__name__)

# A webhook has this long to accept a message.
WEBHOOK_TIMEOUT_SECONDS = 5.0


def webhook_message(request: ApprovalRequest, link: str | None, command: str) -> dict[str, Any]:
    """Return the JSON body that announces a new approval request."""
    binding = request.binding
    expires = datetime.fromtimestamp(request.expires, UTC).isoformat()
    return {
        "event": "approval_requested",
        "request": request.id,
        "client": binding.client,
        "server": binding.server,
        "tool": binding.tool,
        "rule": binding.rule,
        "expires": expires,
        "link": link,
        "command": f"{command} approve {request.id}",
        "text": (
            f"mcp-guard: client {binding.client} asks to run {binding.exported} under rule {binding.rule!r}. "
            f"Decide with `{command} approve {request.id}` or `deny`"
            + (f", or on {link}" if link else "")
            + "."
        ),
    }


async def post_webhook(url: str, message: dict[str, Any]) -> None:
    """Send `message` to the webhook; log, without the URL, when it fails."""
    try:
        async with httpx2.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) as http:
            response = await http.post(url, json=message)
        if response.status_code >= 300:
            log.warning("approval_webhook_rejected", request=message["request"], status=response.status_code)
            return
    except Exception as exc:  # contained: a failing webhook must never stop the gateway
        log.warning("approval_webhook_failed", request=message["request"], error=type(exc).__name__)
        return
    log.info("approval_webhook_sent", request=message["request"])
