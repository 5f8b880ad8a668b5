"""The SQLite audit store; no sqlite3 or aiosqlite exception leaves this package."""

from __future__ import annotations

from mcp_guard.audit.sqlite.store import DEFAULT_BUSY_TIMEOUT_SECONDS, SqliteAuditStore

__all__ = ["DEFAULT_BUSY_TIMEOUT_SECONDS", "SqliteAuditStore"]
