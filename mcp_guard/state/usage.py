"""When each client first used each time-limited rule, and the clock's high-water mark.

A rule such as "write access for 5 minutes after the first call" needs the
time of that first call to survive restarts and reconnects: otherwise a client
could reset its window by reconnecting. The store keeps both facts in an
SQLite file in the state directory and a copy in memory, so the call path
reads without I/O. No aiosqlite or sqlite3 exception leaves this module.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import aiosqlite
import structlog

from mcp_guard.errors import GuardError
from mcp_guard.state.clock import HighWaterClock

log = structlog.get_logger(module=__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_first_use (
    client TEXT NOT NULL,
    rule TEXT NOT NULL,
    first_use TEXT NOT NULL,
    PRIMARY KEY (client, rule)
);
CREATE TABLE IF NOT EXISTS clock (id INTEGER PRIMARY KEY CHECK (id = 1), high_water TEXT NOT NULL);
"""
# The high-water mark is written when it has moved by at least this much, not on every call.
HIGH_WATER_WRITE_SECONDS = 1.0


class StateUnavailable(GuardError):
    """The state file cannot be read or written, so time-limited rules cannot be enforced.

    Attributes:
        path: The state file.
        reason: What went wrong.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"The state file {str(path)!r} cannot be used ({reason}). "
            "Check that the state directory is writable by the gateway's user."
        )


class UsageStore:
    """Persistent rule first-use times and clock high-water mark, read from memory."""

    def __init__(self, path: Path, clock: HighWaterClock) -> None:
        self.path = path
        self.clock = clock
        self._first_use: dict[tuple[str, str], datetime] = {}
        self._saved_high_water = clock.high_water
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> UsageStore:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.touch(mode=0o600, exist_ok=True)
            os.chmod(self.path, 0o600)
            self._db = await aiosqlite.connect(self.path)
            await self._db.executescript(SCHEMA)
            await self._load()
        except (sqlite3.Error, OSError) as exc:
            await self._close()
            raise StateUnavailable(self.path, str(exc)) from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.save_high_water(force=True)
        finally:
            await self._close()

    def first_uses(self, client: str) -> dict[str, datetime]:
        """Return rule name -> first use for `client`."""
        return {rule: at for (owner, rule), at in self._first_use.items() if owner == client}

    async def record_first_use(self, client: str, rule: str, at: datetime) -> datetime:
        """Record the first use of `rule` by `client` unless one exists; return the stored time."""
        key = (client, rule)
        if key in self._first_use:
            return self._first_use[key]
        await self._write(
            "INSERT OR IGNORE INTO rule_first_use (client, rule, first_use) VALUES (?, ?, ?)",
            (client, rule, at.isoformat()),
        )
        self._first_use[key] = at
        return at

    async def save_high_water(self, *, force: bool = False) -> None:
        """Persist the clock's high-water mark if it moved enough since the last write."""
        mark = self.clock.high_water
        if not force and (mark - self._saved_high_water).total_seconds() < HIGH_WATER_WRITE_SECONDS:
            return
        if mark <= self._saved_high_water:
            return
        await self._write(
            "INSERT INTO clock (id, high_water) VALUES (1, ?) "
            "ON CONFLICT(id) DO UPDATE SET high_water = excluded.high_water",
            (mark.isoformat(),),
        )
        self._saved_high_water = mark

    async def _load(self) -> None:
        assert self._db is not None
        async with self._db.execute("SELECT client, rule, first_use FROM rule_first_use") as rows:
            async for client, rule, first_use in rows:
                self._first_use[(client, rule)] = datetime.fromisoformat(first_use)
        async with self._db.execute("SELECT high_water FROM clock WHERE id = 1") as rows:
            row = await rows.fetchone()
        if row is not None:
            stored = datetime.fromisoformat(row[0]).astimezone(UTC)
            self.clock.high_water = max(self.clock.high_water, stored)
            self._saved_high_water = stored

    async def _write(self, sql: str, parameters: tuple[str, ...]) -> None:
        if self._db is None:
            raise StateUnavailable(self.path, "the store is not open")
        try:
            await self._db.execute(sql, parameters)
            await self._db.commit()
        except sqlite3.Error as exc:
            log.error("state_write_failed", path=str(self.path), error=str(exc))
            raise StateUnavailable(self.path, str(exc)) from None

    async def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()
