"""The default limit store: an SQLite file in the state directory.

Counts survive restarts, and gateway processes on one host may share the file:
each call's checks and charges run in one `BEGIN IMMEDIATE` transaction, which
holds SQLite's write lock, so two processes cannot both take the last unit.

The whole transaction runs as one function. While the write lock is free it
runs on the event loop: in WAL mode with `synchronous = NORMAL` a commit writes
to the page cache only, which costs less than handing the transaction to a
thread and back. When another process holds the lock, SQLite reports it at once
and the transaction waits for the lock in a worker thread instead, so the event
loop never waits for another process. The WAL checkpoints, which wait for the
disk (fsync), run in a worker thread too. Calls decided at the same moment
share one transaction (`DecisionBatcher`), each decided in turn. A crash or kill
of the gateway loses nothing. A power cut may lose the last moments of counts.
No sqlite3 exception leaves this module.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import structlog

from mcp_guard.ratelimit.batching import DecisionBatcher
from mcp_guard.ratelimit.store import (
    Charge,
    Grant,
    LeaseCharge,
    LimitStoreUnavailable,
    Rejection,
    WindowCharge,
    fits,
    longest_wait,
    new_lease_id,
    oldest_counted,
    slice_of,
    slice_seconds,
    window_rejection,
)

log = structlog.get_logger(module=__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS window_slice (
    key TEXT NOT NULL,
    slice INTEGER NOT NULL,
    units REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (key, slice)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS window_slice_expires ON window_slice (expires);
CREATE TABLE IF NOT EXISTS lease (
    key TEXT NOT NULL,
    lease TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (key, lease)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clock (id INTEGER PRIMARY KEY CHECK (id = 1), mark REAL NOT NULL);
"""
FILE_NAME = "limits.sqlite3"
# Seconds another process may hold the write lock before a decision fails (and the call is rejected).
BUSY_TIMEOUT_SECONDS = 5.0
# Expired rows are deleted at most this often.
SWEEP_EVERY_SECONDS = 60.0
# Transactions committed between two WAL checkpoints. SQLite's own automatic checkpoint would run,
# and wait for the disk, inside a commit on the event loop.
CHECKPOINT_EVERY_TRANSACTIONS = 200

T = TypeVar("T")


class SqliteLimitStore:
    """Sliding windows and leases in an SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"SQLite file {str(path)!r}"
        self._db: sqlite3.Connection | None = None
        self._worker = anyio.CapacityLimiter(1)
        # Worker thread jobs using or waiting for the connection; the event loop leaves it alone until 0.
        self._worker_jobs = 0
        self._transactions_since_checkpoint = 0
        self._checkpoint: asyncio.Task[None] | None = None
        self._last_sweep = float("-inf")
        # Names this store in its leases: host, process id and a token for this store.
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        _OPEN_OWNERS.add(self._owner)
        self._batcher: DecisionBatcher[_Acquire | _Finish, Grant | Rejection | None] = DecisionBatcher(
            self._decide
        )
        # Calls granted and not yet finished: with none other open, a decision has nothing to wait for.
        self._open_grants = 0

    async def __aenter__(self) -> SqliteLimitStore:
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def acquire(self, charges: Sequence[Charge], now: float) -> Grant | Rejection:
        """Take every charge, or none of them, in one transaction."""
        outcome = await self._batcher.submit(_Acquire(list(charges), now), alone=self._open_grants == 0)
        assert outcome is not None
        if isinstance(outcome, Grant):
            self._open_grants += 1
        return outcome

    async def finish(self, grant: Grant, corrections: Mapping[int, float], now: float) -> None:
        """Settle the call's charges and delete its leases, in the next batch's transaction."""
        try:
            await self._batcher.submit(_Finish(grant, dict(corrections), now), alone=self._open_grants <= 1)
        finally:
            self._open_grants = max(self._open_grants - 1, 0)

    async def usage(self, charges: Sequence[Charge], now: float) -> list[float]:
        """Return the units or slots in use under each charge's key."""
        return await self._run(self._usage, list(charges), now)

    async def time_mark(self) -> float | None:
        """Return the latest time a charge was taken at, from the file."""
        return await self._run(self._time_mark)

    async def aclose(self) -> None:
        """Close the file."""
        _OPEN_OWNERS.discard(self._owner)
        await self._batcher.drain()
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        if self._db is not None:
            db, self._db = self._db, None
            await self._run(db.close, opened=False)

    async def _decide(self, batch: Sequence[_Acquire | _Finish]) -> list[Grant | Rejection | None]:
        results: list[Grant | Rejection | None] | None = None
        if not self._worker_jobs:
            try:
                results = self._run_batch(batch)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise LimitStoreUnavailable(self.description, str(exc)) from None
            except sqlite3.Error as exc:
                raise LimitStoreUnavailable(self.description, str(exc)) from None
            except OSError as exc:
                raise LimitStoreUnavailable(self.description, exc.strerror or str(exc)) from None
        if results is None:
            # Another process holds the write lock: wait for it away from the event loop.
            results = await self._run(self._run_batch_waiting, batch)
        self._transactions_since_checkpoint += 1
        if self._transactions_since_checkpoint >= CHECKPOINT_EVERY_TRANSACTIONS and self._checkpoint is None:
            self._checkpoint = asyncio.create_task(self._checkpoint_soon())
        return results

    async def _checkpoint_soon(self) -> None:
        # On the store's own connection, so that no transaction of this process commits during
        # the checkpoint and the WAL starts over from its beginning after it.
        try:
            await self._run(self._checkpoint_blocking)
        except LimitStoreUnavailable as exc:
            # The WAL keeps growing until a checkpoint succeeds. No count is lost.
            log.warning("limits_checkpoint_failed", path=str(self.path), reason=exc.reason)
        finally:
            self._transactions_since_checkpoint = 0
            self._checkpoint = None

    async def _run(self, function: Callable[..., T], *args: Any, opened: bool = True) -> T:
        # A cancelled caller still waits for the thread to finish, so the count stays true.
        self._worker_jobs += 1
        try:
            return await anyio.to_thread.run_sync(lambda: function(*args), limiter=self._worker)
        except sqlite3.Error as exc:
            raise LimitStoreUnavailable(self.description, str(exc)) from None
        except OSError as exc:
            raise LimitStoreUnavailable(self.description, exc.strerror or str(exc)) from None
        finally:
            self._worker_jobs -= 1

    # Everything below runs on the worker thread, except `_run_batch` while the write lock is free.

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)
        os.chmod(self.path, 0o600)
        # No busy timeout: a transaction on the event loop must fail at once if the lock is taken.
        db = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA wal_autocheckpoint = 0")
            db.executescript(SCHEMA)
            if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(lease)")}:
                db.execute("ALTER TABLE lease ADD COLUMN owner TEXT")
            self._release_dead_owners(db)
        except sqlite3.Error:
            db.close()
            raise
        self._db = db

    def _release_dead_owners(self, db: sqlite3.Connection) -> None:
        """Delete the leases of gateway processes on this host that no longer run.

        A killed gateway cannot delete its own leases, and they would hold their calls' slots
        until they expire.
        """
        dead = [
            owner
            for (owner,) in db.execute("SELECT DISTINCT owner FROM lease WHERE owner IS NOT NULL")
            if _gone(owner)
        ]
        for owner in dead:
            cursor = db.execute("DELETE FROM lease WHERE owner = ?", (owner,))
            log.info("limits_leases_released", owner=owner, leases=cursor.rowcount)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("the store is not open")
        return self._db

    def _checkpoint_blocking(self) -> None:
        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _run_batch_waiting(self, batch: Sequence[_Acquire | _Finish]) -> list[Grant | Rejection | None]:
        """Run `batch` as `_run_batch` does, waiting up to `BUSY_TIMEOUT_SECONDS` for the write lock."""
        db = self._connection()
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        try:
            return self._run_batch(batch)
        finally:
            db.execute("PRAGMA busy_timeout = 0")

    def _run_batch(self, batch: Sequence[_Acquire | _Finish]) -> list[Grant | Rejection | None]:
        """Decide or finish every call of `batch` in order, in one transaction."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            results: list[Grant | Rejection | None] = []
            for item in batch:
                if isinstance(item, _Acquire):
                    results.append(self._acquire(db, item.charges, item.now))
                else:
                    self._finish(db, item)
                    results.append(None)
            latest = max(item.now for item in batch)
            db.execute(_MARK, (latest,))
            if latest - self._last_sweep >= SWEEP_EVERY_SECONDS:
                db.execute("DELETE FROM window_slice WHERE expires <= ?", (latest,))
                db.execute("DELETE FROM lease WHERE expires <= ?", (latest,))
                self._last_sweep = latest
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results

    def _acquire(self, db: sqlite3.Connection, charges: list[Charge], now: float) -> Grant | Rejection:
        rejection = longest_wait(self._check(db, index, charge, now) for index, charge in enumerate(charges))
        if rejection is not None:
            return rejection
        lease = new_lease_id()
        slices: list[int | None] = []
        for charge in charges:
            if isinstance(charge, WindowCharge):
                slice_index = slice_of(now, charge.period)
                expires = (slice_index + 1) * slice_seconds(charge.period) + charge.period
                db.execute(_ADD, (charge.key, slice_index, charge.units, expires))
                slices.append(slice_index)
            else:
                db.execute(
                    "INSERT INTO lease (key, lease, expires, owner) VALUES (?, ?, ?, ?)",
                    (charge.key, lease, now + charge.lease_seconds, self._owner),
                )
                slices.append(None)
        return Grant(charges=tuple(charges), slices=tuple(slices), lease=lease)

    def _finish(self, db: sqlite3.Connection, item: _Finish) -> None:
        grant = item.grant
        for index, delta in item.corrections.items():
            charge, slice_index = grant.charges[index], grant.slices[index]
            if not isinstance(charge, WindowCharge) or slice_index is None or not delta:
                continue
            if delta < 0:
                db.execute(_SETTLE, (delta, charge.key, slice_index))
            else:
                now_slice = slice_of(item.now, charge.period)
                expires = (now_slice + 1) * slice_seconds(charge.period) + charge.period
                db.execute(_ADD, (charge.key, now_slice, delta, expires))
        for charge in grant.charges:
            if isinstance(charge, LeaseCharge):
                db.execute("DELETE FROM lease WHERE key = ? AND lease = ?", (charge.key, grant.lease))

    def _check(self, db: sqlite3.Connection, index: int, charge: Charge, now: float) -> Rejection | None:
        if isinstance(charge, WindowCharge):
            rows = db.execute(
                "SELECT slice, units FROM window_slice WHERE key = ? AND slice >= ?",
                (charge.key, oldest_counted(now, charge.period)),
            ).fetchall()
            return window_rejection(index, charge, rows, now)
        used = self._leases(db, charge.key, now)
        if fits(used, 1, charge.limit):
            return None
        return Rejection(index=index, used=used, retry_after=1.0)

    def _leases(self, db: sqlite3.Connection, key: str, now: float) -> int:
        row = db.execute("SELECT COUNT(*) FROM lease WHERE key = ? AND expires > ?", (key, now)).fetchone()
        return int(row[0])

    def _usage(self, charges: list[Charge], now: float) -> list[float]:
        db = self._connection()
        used: list[float] = []
        for charge in charges:
            if isinstance(charge, WindowCharge):
                row = db.execute(
                    "SELECT COALESCE(SUM(units), 0) FROM window_slice WHERE key = ? AND slice >= ?",
                    (charge.key, oldest_counted(now, charge.period)),
                ).fetchone()
                used.append(float(row[0]))
            else:
                used.append(float(self._leases(db, charge.key, now)))
        return used

    def _time_mark(self) -> float | None:
        row = self._connection().execute("SELECT mark FROM clock WHERE id = 1").fetchone()
        return None if row is None else float(row[0])


@dataclass(frozen=True)
class _Acquire:
    charges: list[Charge]
    now: float


@dataclass(frozen=True)
class _Finish:
    grant: Grant
    corrections: dict[int, float]
    now: float


_ADD = (
    "INSERT INTO window_slice (key, slice, units, expires) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key, slice) DO UPDATE SET units = units + excluded.units, expires = excluded.expires"
)
_SETTLE = "UPDATE window_slice SET units = units + ? WHERE key = ? AND slice = ?"
_MARK = "INSERT INTO clock (id, mark) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET mark = max(mark, excluded.mark)"


# Owners of the stores this process has created. A lease with this process's id and another
# token is from an earlier process that had the same id.
_OPEN_OWNERS: set[str] = set()


def _gone(owner: str) -> bool:
    """Return whether the store that took leases as `owner` ran in a process on this host that has ended."""
    host, _, rest = owner.partition(":")
    pid_text, _, _token = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        return owner not in _OPEN_OWNERS
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process, still running
    return False


def sqlite_store_path(state_dir: str | os.PathLike[str]) -> Path:
    """Return where the SQLite limit store of a state directory lives."""
    return Path(state_dir) / FILE_NAME
