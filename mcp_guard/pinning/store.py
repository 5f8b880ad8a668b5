"""The SQLite pin store: approved and pending tool definitions that survive restarts.

Only this module imports aiosqlite. Every SQLite error is translated here into
`PinStoreError`, which names the file, the kind of failure and the fix. One
`PinStore` holds one connection, and an anyio lock serialises every statement
on it, so tasks of one process never interleave inside a transaction. Other
processes (the gateway and `mcp-guard pins` at the same time) share the file
through WAL mode and a busy timeout. Whether a tool is approved is read from
the database on each `status` call, so an approval made by the command line
counts at once. `data_version` changes when another process commits, so a
long-running process can poll it to learn when to re-list.
The tables are described in `schema.py`, the trust-on-first-use rule in
`records.py`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiosqlite
import anyio
import structlog

from mcp_guard.pinning import schema
from mcp_guard.pinning.errors import PinNotPending, PinStoreError
from mcp_guard.pinning.records import PinRecord, PinReport, PinStatus, PlannedPin, plan_listing

DATABASE_NAME = "pins.sqlite3"
OWNER_ONLY = 0o600
STATE_DIR_MODE = 0o700
# How long a statement waits for a lock held by another process (the gateway or the CLI).
DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0

logger = structlog.get_logger(__name__)
_State = Literal["new", "open", "closed"]
_ONE_PIN = "WHERE server = ? AND tool = ?"


class PinStore:
    """Pinned tool definitions in a local SQLite file, used as an async context manager.

    Args:
        path: The database file. It is created with mode 0600 when missing, and its
            folder with mode 0700. Opening removes group and other access from an existing file.
        busy_timeout_seconds: How long a statement waits for another process's lock.
    """

    def __init__(self, path: Path, *, busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self._busy_timeout_ms = int(busy_timeout_seconds * 1000)
        self._state: _State = "new"
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> PinStore:
        """Build a store on the standard file of a state directory."""
        return cls(state_dir / DATABASE_NAME)

    async def __aenter__(self) -> PinStore:
        if self._state != "new":
            raise RuntimeError(f"the pin store cannot be opened again: it is {self._state}")
        self._state = "open"
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection. Calling it again does nothing."""
        self._state = "closed"
        if self._db is None:
            return
        db, self._db = self._db, None
        with anyio.CancelScope(shield=True), self._translate():
            await db.close()

    async def observe(
        self,
        server: str,
        tools: Sequence[Mapping[str, Any]],
        *,
        allow_new_tools: bool = False,
        hold_flagged: bool = False,
    ) -> PinReport:
        """Compare a server's tool listing with its pins and record what is new or changed.

        On a server's first listing every tool is approved (trust on first use).
        Later, a tool the server adds is held for review unless `allow_new_tools`,
        and a tool whose definition differs from its approved one is held as
        pending until an operator approves it. Pins of tools missing from the
        listing are kept, so a tool that comes back unchanged is approved again.

        Args:
            server: The server id from the policy file.
            tools: Tool definitions as the server sent them: names and descriptions
                not yet cleaned or renamed.
            allow_new_tools: Approve tools the server adds later without review.
            hold_flagged: Hold a definition with injection findings for review even
                where it would be approved automatically (first use or `allow_new_tools`).

        Raises:
            PinStoreError: The database cannot be read or written.
        """
        listing = _by_name(server, tools)
        now = schema.utc_now()
        async with self._transaction() as db:
            cursor = await db.execute(schema.INSERT_SERVER, (server, now))
            first_sight = cursor.rowcount == 1
            records = {record.tool: record for record in await _fetch(db, "WHERE server = ?", (server,))}
            plans = plan_listing(
                listing,
                records,
                first_sight=first_sight,
                allow_new_tools=allow_new_tools,
                hold_flagged=hold_flagged,
            )
            for plan in plans:
                await _write_plan(db, server, plan, now)
        for plan in plans:
            _log_plan(server, plan)
        _log_recorded(server, plans)
        return PinReport.from_plans(server, first_sight, plans)

    async def status(self, server: str, tool: str, digest: str) -> PinStatus:
        """Return whether the definition with hash `digest` is the approved one of the tool.

        A tool that was never observed is "new": observe a listing before checking its tools.

        Raises:
            PinStoreError: The database cannot be read.
        """
        key = (server, schema.storable_name(tool))
        async with self._read() as db, db.execute(schema.SELECT_APPROVED_HASH, key) as cursor:
            row = await cursor.fetchone()
        if row is None or row[0] is None:
            return "new"
        return "approved" if row[0] == digest else "changed"

    async def get(self, server: str, tool: str) -> PinRecord | None:
        """Return the pin of one tool, or None if the tool was never observed."""
        async with self._read() as db:
            records = await _fetch(db, _ONE_PIN, (server, schema.storable_name(tool)))
        return records[0] if records else None

    async def pins(self, server: str | None = None) -> list[PinRecord]:
        """Return every pin, or those of one server, ordered by server and tool."""
        async with self._read() as db:
            if server is None:
                return await _fetch(db, "ORDER BY server, tool", ())
            return await _fetch(db, "WHERE server = ? ORDER BY tool", (server,))

    async def pending(self, server: str | None = None) -> list[PinRecord]:
        """Return the pins with a definition waiting for review (rejected ones left out)."""
        return [record for record in await self.pins(server) if record.state in ("changed", "new")]

    async def approve(
        self, server: str, tool: str, by: str, *, expected_hash: str | None = None
    ) -> PinRecord:
        """Make the pending definition of a tool its approved one.

        A rejected pending definition can be approved too, when an operator changes their mind.

        Args:
            server: The server id.
            tool: The tool's name on its server.
            by: Who approves, for the record (an operator name).
            expected_hash: The pending hash that was reviewed. When given, a pending
                definition that changed since then is not approved.

        Raises:
            PinNotPending: Nothing is pending, or the pending hash is not `expected_hash`.
            PinStoreError: The database cannot be written.
        """
        async with self._transaction() as db:
            record = await _require_pending(db, server, tool, expected_hash)
            await db.execute(schema.APPROVE_PENDING, (schema.utc_now(), by, server, record.tool))
            approved = (await _fetch(db, _ONE_PIN, (server, record.tool)))[0]
        logger.info("pin_approved", server=server, tool=tool, hash=approved.approved_hash, approved_by=by)
        return approved

    async def reject(self, server: str, tool: str) -> PinRecord:
        """Reject the pending definition of a tool, keeping the approved one.

        The rejected definition stays stored and marked, so the server offering it again
        raises no new review. The tool stays withheld while the server offers it. A
        different definition is pending again, and `approve` still accepts the rejected one.

        Raises:
            PinNotPending: Nothing is pending for the tool.
            PinStoreError: The database cannot be written.
        """
        async with self._transaction() as db:
            record = await _require_pending(db, server, tool, None)
            await db.execute(schema.REJECT_PENDING, (schema.utc_now(), server, record.tool))
            rejected = (await _fetch(db, _ONE_PIN, (server, record.tool)))[0]
        logger.info("pin_rejected", server=server, tool=tool, hash=rejected.pending_hash)
        return rejected

    async def data_version(self) -> int:
        """Return SQLite's data version, which changes whenever another connection commits.

        A gateway can poll it cheaply to learn that `mcp-guard pins approve` ran, and re-list.
        """
        async with self._read() as db, db.execute("PRAGMA data_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    # Connection -------------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            await anyio.to_thread.run_sync(_prepare_file, self.path)
        except OSError as exc:
            raise PinStoreError(
                self.path,
                f"the file cannot be created or limited to its owner ({exc.strerror or exc})",
                "Check that the state directory and the file belong to this user and are writable.",
            ) from exc
        with anyio.CancelScope(shield=True), self._translate():
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed approval or first-use pin survives a power cut.
            await self._db.execute("PRAGMA synchronous = FULL")
            await self._migrate(self._db)

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row is not None else 0
        if version > schema.SCHEMA_VERSION:
            raise PinStoreError(
                self.path,
                f"it was written by a newer mcp-guard (schema {version}; "
                f"this one reads schema {schema.SCHEMA_VERSION})",
                "Upgrade mcp-guard.",
            )
        if version == schema.SCHEMA_VERSION:
            return  # An up-to-date file needs no schema write.
        await db.executescript(schema.SCHEMA)
        await db.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        db = self._require_open()
        async with self._lock:
            with self._translate():
                yield db

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        db = self._require_open()
        async with self._lock:
            # Shielded: a cancelled caller must not leave the shared connection inside a
            # transaction. The busy timeout bounds the wait for another process's lock.
            with anyio.CancelScope(shield=True), self._translate():
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except aiosqlite.Error as exc:
            name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
            problem, fix = schema.describe_sqlite_error(name)
            raise PinStoreError(self.path, problem, fix) from exc

    def _require_open(self) -> aiosqlite.Connection:
        if self._state != "open" or self._db is None:
            raise RuntimeError(f"the pin store is {self._state}; use it inside `async with`")
        return self._db


def _prepare_file(path: Path) -> None:
    """Create the folder (0700) and the database file (0600), so no other user can ever open it."""
    path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    # Read-only, so an existing file that cannot be written still opens here, and SQLite
    # then reports it as read-only, a clearer error than "permission denied".
    descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, OWNER_ONLY)
    try:
        # Group and other bits of an older file are removed; the owner's bits are kept. SQLite
        # gives its -wal and -shm files the mode of the database file.
        mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
        if mode & ~OWNER_ONLY:
            os.fchmod(descriptor, mode & OWNER_ONLY)
    finally:
        os.close(descriptor)


def _by_name(server: str, tools: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    listing: dict[str, Mapping[str, Any]] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            continue
        if schema.storable_name(name) != name:
            # Such a tool cannot be pinned, so it is never approved: `status` returns "new".
            logger.warning("pin_tool_name_invalid", server=server, tool=schema.storable_name(name))
            continue
        if name in listing:
            logger.warning("pin_tool_listed_twice", server=server, tool=name)
        # The last definition wins, as in the catalogue.
        listing[name] = tool
    return listing


async def _write_plan(db: aiosqlite.Connection, server: str, plan: PlannedPin, now: str) -> None:
    action = plan.change.action
    if action == "drop_pending":
        await db.execute(schema.DROP_PENDING, (server, plan.name))
    elif action == "approve":
        definition = schema.dump_definition(plan.tool)
        parameters = (server, plan.name, now, plan.digest, definition, now, plan.change.approved_by)
        await db.execute(schema.UPSERT_APPROVED, parameters)
    elif action == "hold":
        definition = schema.dump_definition(plan.tool)
        await db.execute(schema.UPSERT_PENDING, (server, plan.name, now, plan.digest, definition, now))


def _log_plan(server: str, plan: PlannedPin) -> None:
    action, fields = plan.change.action, {"server": server, "tool": plan.name, "hash": plan.digest}
    if action == "approve":
        # One line per server at info level (`_log_recorded`): a first start records every tool.
        logger.debug("pin_recorded", **fields, approved_by=plan.change.approved_by)
    elif action == "hold":
        approved_hash = None if plan.previous is None else plan.previous.approved_hash
        logger.warning(
            "pin_held_for_review", **fields, status=plan.change.status, approved_hash=approved_hash
        )
    elif action == "drop_pending":
        logger.info("pin_change_reverted", **fields)
    # Findings are logged when a definition is first recorded, not on every re-listing.
    if plan.findings and action in ("approve", "hold"):
        logger.warning("tool_description_flagged", **fields, findings=list(plan.findings))


def _log_recorded(server: str, plans: Sequence[PlannedPin]) -> None:
    """Log the definitions recorded as approved without review, one line per way they were approved."""
    recorded: dict[str | None, list[str]] = {}
    for plan in plans:
        if plan.change.action == "approve":
            recorded.setdefault(plan.change.approved_by, []).append(plan.name)
    for approved_by, tools in recorded.items():
        logger.info(
            "pins_recorded", server=server, tools=len(tools), approved_by=approved_by, names=tools[:50]
        )


async def _require_pending(
    db: aiosqlite.Connection, server: str, tool: str, expected_hash: str | None
) -> PinRecord:
    records = await _fetch(db, _ONE_PIN, (server, schema.storable_name(tool)))
    pending = records[0].pending_hash if records else None
    if pending is None or (expected_hash is not None and pending != expected_hash):
        raise PinNotPending(server, tool, expected_hash, pending)
    return records[0]


async def _fetch(db: aiosqlite.Connection, where: str, parameters: Sequence[Any]) -> list[PinRecord]:
    async with db.execute(f"{schema.SELECT_PINS} {where}", parameters) as cursor:
        rows = await cursor.fetchall()
    return [schema.record_from_row(tuple(row)) for row in rows]
