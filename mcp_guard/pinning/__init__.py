"""Pinned tool definitions (trust on first use): the SQLite store and the `mcp-guard pins` commands."""

from mcp_guard.pinning.errors import PinError, PinNotPending, PinStoreError
from mcp_guard.pinning.records import PinRecord, PinReport, PinState, PinStatus
from mcp_guard.pinning.store import PinStore

__all__ = [
    "PinError",
    "PinNotPending",
    "PinRecord",
    "PinReport",
    "PinState",
    "PinStatus",
    "PinStore",
    "PinStoreError",
]
