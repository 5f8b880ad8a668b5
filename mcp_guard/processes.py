"""Helpers for child processes started with `anyio.open_process`."""

from __future__ import annotations

from typing import Any

# The policy files of the gateways that started this process, one inside the other. A gateway
# passes it to its stdio servers, so one that would start itself again can refuse (`cli.py`).
POLICY_CHAIN_VARIABLE = "MCP_GUARD_POLICY_CHAIN"


def close_transport(process: Any) -> None:
    """Close the asyncio transport of a process that has ended, and with it the process's pipes.

    A grandchild that still has a pipe open keeps the transport open after the process dies,
    until garbage collection closes it with a ResourceWarning.
    NOTE: the transport is not public in anyio or asyncio, hence the attribute walk; on another
    event loop this does nothing.
    """
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        close()
