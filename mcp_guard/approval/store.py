"""Approval requests and grants in an SQLite file of the state directory.

A request is created when a call needs a person's approval. It waits
(`pending`) until someone approves or denies it, or until it expires. An
approved request is a grant: it binds the client, the server and tool, the
digest of the canonical arguments, the pinned definition's digest and the
policy's digest, and it is valid until `expires`. A grant of scope `once` is
used by exactly one call: taking it is one conditional UPDATE, so two
concurrent calls cannot both take it, also across processes. Grants of scope
`minutes` (the same call again within N minutes) and `session` (the tool, with
any arguments, for the rest of one session) count their uses.

A question asked through a 2026-07-28 input-required result is recorded by
the nonce of its sealed request state. Marking it answered is one conditional
UPDATE as well, so the gateway acts on at most one answer to each question.

Only this module imports aiosqlite. Its errors become `ApprovalStoreError`.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiosqlite
import anyio

from mcp_guard.errors import GuardError

DATABASE_NAME = "approvals.sqlite3"
BUSY_TIMEOUT_MS = 5000
ID_BYTES = 12

Status = Literal["pending", "approved", "denied", "expired", "used"]
Scope = Literal["once", "minutes", "session"]
Channel = Literal["form", "mrtr", "command line", "page", "retry"]
"""The channel a decision came through: `form` within the call, `mrtr` in the retry of a
2026-07-28 input-required result, and the others out of band."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS approval (
    id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    session TEXT,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    exported TEXT NOT NULL,
    rule TEXT NOT NULL,
    arguments_digest TEXT NOT NULL,
    definition_digest TEXT NOT NULL,
    policy_digest TEXT NOT NULL,
    arguments_display TEXT NOT NULL,
    status TEXT NOT NULL,
    scope TEXT,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    decided REAL,
    decided_by TEXT,
    channel TEXT,
    uses INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS approval_lookup ON approval (client, server, tool, status);
CREATE TABLE IF NOT EXISTS approval_question (
    nonce TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    exported TEXT NOT NULL,
    arguments_digest TEXT NOT NULL,
    expires REAL NOT NULL,
    answered REAL
);
CREATE INDEX IF NOT EXISTS approval_question_client ON approval_question (client, answered, expires);
"""
_COLUMNS = (
    "id, client, session, server, tool, exported, rule, arguments_digest, definition_digest, policy_digest, "
    "arguments_display, status, scope, created, expires, decided, decided_by, channel, uses"
)


def new_request_id() -> str:
    """Return a fresh, unguessable request id: hexadecimal, so it never starts with `-` on a command line."""
    return secrets.token_hex(ID_BYTES)


class ApprovalStoreError(GuardError):
    """The approval file cannot be used, so no call that needs approval can run."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"The approval file {str(path)!r} cannot be used ({reason}). "
            "Check that the state directory is writable by the gateway's user."
        )


class NotPending(GuardError):
    """An approval request that is no longer waiting for a decision was approved or denied."""

    def __init__(self, request_id: str, status: str | None) -> None:
        self.request_id = request_id
        self.status = status
        self.status_text = "does not exist" if status is None else f"is {status}, not pending"
        super().__init__(self.message("mcp-guard approvals list"))

    def message(self, list_command: str) -> str:
        """Return the error message, naming `list_command` as the command that lists waiting requests."""
        return f"Approval request {self.request_id!r} {self.status_text}; list the waiting ones with `{list_command}`."


@dataclass(frozen=True)
class CallBinding:
    """The parts of a call a grant binds: who, which tool and definition, which arguments, which policy."""

    client: str
    session: str | None
    server: str
    tool: str
    exported: str
    rule: str
    arguments_digest: str
    definition_digest: str
    policy_digest: str


@dataclass(frozen=True)
class ApprovalRequest:
    """One request for approval, from creation to its last use."""

    id: str
    binding: CallBinding
    arguments_display: str
    status: Status
    scope: Scope | None
    created: float
    expires: float
    decided: float | None
    decided_by: str | None
    channel: str | None
    uses: int


class ApprovalStore:
    """Approval requests and grants in one SQLite file; an async context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> ApprovalStore:
        """Build a store on the standard file of a state directory."""
        return cls(state_dir / DATABASE_NAME)

    async def __aenter__(self) -> ApprovalStore:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.touch(mode=0o600, exist_ok=True)
            os.chmod(self.path, 0o600)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            # FULL: a grant that was recorded as used survives a power cut, so it cannot be used twice.
            await self._db.execute("PRAGMA synchronous = FULL")
            await self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            await self.aclose()
            raise ApprovalStoreError(self.path, str(exc)) from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the file."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def open_request(
        self, binding: CallBinding, display: str, *, now: float, wait_seconds: float, max_pending: int
    ) -> tuple[ApprovalRequest, bool] | int:
        """Return the pending request for exactly this call, creating it if none waits, and whether it is new.

        The same call from another session (a client that restarted its gateway) joins the waiting request.

        A new request is created only while the client has fewer than `max_pending` waiting;
        otherwise the number waiting is returned.
        """
        async with self._transaction() as db:
            await self._expire(db, now)
            rows = await db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM approval WHERE status = 'pending' AND client = ? AND server = ? "
                "AND tool = ? AND arguments_digest = ? AND definition_digest = ? AND policy_digest = ?",
                (
                    binding.client,
                    binding.server,
                    binding.tool,
                    binding.arguments_digest,
                    binding.definition_digest,
                    binding.policy_digest,
                ),
            )
            if rows:
                return _request(next(iter(rows))), False
            counted = await db.execute_fetchall(
                "SELECT COUNT(*) FROM approval WHERE client = ? AND status = 'pending'", (binding.client,)
            )
            waiting = int(next(iter(counted))[0])
            if waiting >= max_pending:
                return waiting
            request = ApprovalRequest(
                id=new_request_id(),
                binding=binding,
                arguments_display=display,
                status="pending",
                scope=None,
                created=now,
                expires=now + wait_seconds,
                decided=None,
                decided_by=None,
                channel=None,
                uses=0,
            )
            await db.execute(
                f"INSERT INTO approval ({_COLUMNS}) VALUES ({', '.join('?' * 19)})", _row(request)
            )
            return request, True

    async def decide(
        self,
        request_id: str,
        *,
        approve: bool,
        scope: Scope,
        valid_seconds: float,
        by: str,
        channel: Channel,
        now: float,
    ) -> ApprovalRequest:
        """Approve or deny a pending request.

        Raises:
            NotPending: The request does not exist, or is no longer pending.
        """
        async with self._transaction() as db:
            await self._expire(db, now)
            status = "approved" if approve else "denied"
            cursor = await db.execute(
                "UPDATE approval SET status = ?, scope = ?, expires = ?, decided = ?, decided_by = ?, channel = ? "
                "WHERE id = ? AND status = 'pending'",
                (status, scope, now + valid_seconds, now, by, channel, request_id),
            )
            found = await self._get(db, request_id)
            if cursor.rowcount != 1 or found is None:
                raise NotPending(request_id, None if found is None else found.status)
            return found

    async def record_decision(
        self,
        binding: CallBinding,
        display: str,
        *,
        approve: bool,
        scope: Scope,
        valid_seconds: float,
        by: str,
        channel: Channel,
        now: float,
    ) -> ApprovalRequest:
        """Record a decision made within the call (form elicitation); an approval is used by that call at once."""
        # An approval made within the call is used by that call at once; a wider grant stays usable.
        status: Status = "denied"
        if approve:
            status = "used" if scope == "once" else "approved"
        request = ApprovalRequest(
            id=new_request_id(),
            binding=binding,
            arguments_display=display,
            status=status,
            scope=scope,
            created=now,
            expires=now + valid_seconds,
            decided=now,
            decided_by=by,
            channel=channel,
            uses=1 if approve else 0,
        )
        async with self._transaction() as db:
            await db.execute(
                f"INSERT INTO approval ({_COLUMNS}) VALUES ({', '.join('?' * 19)})", _row(request)
            )
        return request

    async def take_grant(self, binding: CallBinding, now: float) -> ApprovalRequest | None:
        """Use a grant that covers this call, if one exists: a `once` grant is used up, others count a use."""
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM approval WHERE status = 'approved' AND client = ? AND server = ? "
                "AND tool = ? AND rule = ? AND definition_digest = ? AND policy_digest = ? AND expires > ? "
                "AND ((scope IN ('once', 'minutes') AND arguments_digest = ?) OR (scope = 'session' AND session IS ?)) "
                "ORDER BY created",
                (
                    binding.client,
                    binding.server,
                    binding.tool,
                    binding.rule,
                    binding.definition_digest,
                    binding.policy_digest,
                    now,
                    binding.arguments_digest,
                    binding.session,
                ),
            )
            for row in rows:
                grant = _request(row)
                if grant.scope == "session" and binding.session is None:
                    continue
                new_status = "used" if grant.scope == "once" else "approved"
                cursor = await db.execute(
                    "UPDATE approval SET status = ?, uses = uses + 1 WHERE id = ? AND status = 'approved'",
                    (new_status, grant.id),
                )
                if cursor.rowcount == 1:
                    return grant
            return None

    async def open_question(
        self, binding: CallBinding, nonce: str, *, now: float, expires: float, max_pending: int
    ) -> int | None:
        """Record a question asked through an input-required result, unless the client has too many waiting.

        Waiting are the client's pending requests and its unanswered, unexpired questions. Returns
        None once the question is recorded, or the number waiting if it reached `max_pending`.
        """
        async with self._transaction() as db:
            await self._expire(db, now)
            # An expired question's state is rejected before its row is read, so the row can go.
            await db.execute("DELETE FROM approval_question WHERE expires <= ?", (now,))
            counted = await db.execute_fetchall(
                "SELECT (SELECT COUNT(*) FROM approval WHERE client = ? AND status = 'pending') + "
                "(SELECT COUNT(*) FROM approval_question WHERE client = ? AND answered IS NULL)",
                (binding.client, binding.client),
            )
            waiting = int(next(iter(counted))[0])
            if waiting >= max_pending:
                return waiting
            await db.execute(
                "INSERT INTO approval_question (nonce, client, exported, arguments_digest, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (nonce, binding.client, binding.exported, binding.arguments_digest, expires),
            )
            return None

    async def answer_question(self, nonce: str, binding: CallBinding, now: float) -> bool:
        """Mark a recorded question answered, and return whether this call marked it.

        It returns False if the question is unknown, expired, already answered or recorded for
        another call, so only the first of several concurrent or repeated answers gets True.
        """
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE approval_question SET answered = ? WHERE nonce = ? AND answered IS NULL "
                "AND expires > ? AND client = ? AND exported = ? AND arguments_digest = ?",
                (now, nonce, now, binding.client, binding.exported, binding.arguments_digest),
            )
            return cursor.rowcount == 1

    async def withdraw_question(self, nonce: str) -> None:
        """Delete a question that was just recorded but may not be asked (its client is over a limit)."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM approval_question WHERE nonce = ? AND answered IS NULL", (nonce,))

    async def withdraw(self, request_id: str) -> None:
        """Delete a request that was just opened but may not be asked (its client is over a limit)."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM approval WHERE id = ? AND status = 'pending'", (request_id,))

    async def pending_count(self, client: str, now: float) -> int:
        """Return how many requests of `client` wait for a decision."""
        async with self._transaction() as db:
            await self._expire(db, now)
            rows = await db.execute_fetchall(
                "SELECT COUNT(*) FROM approval WHERE client = ? AND status = 'pending'", (client,)
            )
        return int(next(iter(rows))[0])

    async def denial_of(self, binding: CallBinding, since: float) -> ApprovalRequest | None:
        """Return the latest out-of-band denial of exactly this call made at `since` or later, if any."""
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM approval WHERE status = 'denied' AND channel IN ('command line', 'page') "
                "AND client = ? AND server = ? AND tool = ? AND arguments_digest = ? AND definition_digest = ? "
                "AND policy_digest = ? AND decided >= ? ORDER BY decided DESC LIMIT 1",
                (
                    binding.client,
                    binding.server,
                    binding.tool,
                    binding.arguments_digest,
                    binding.definition_digest,
                    binding.policy_digest,
                    since,
                ),
            )
        found = list(rows)
        return _request(found[0]) if found else None

    async def recent_decisions(self, client: str, count: int) -> list[tuple[str, float]]:
        """Return the status and time of the client's last `count` decisions, newest first."""
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                "SELECT status, decided FROM approval WHERE client = ? AND decided IS NOT NULL "
                "ORDER BY decided DESC LIMIT ?",
                (client, count),
            )
        return [(str(status), float(decided)) for status, decided in rows]

    async def get(self, request_id: str, now: float) -> ApprovalRequest | None:
        """Return one request by id."""
        async with self._transaction() as db:
            await self._expire(db, now)
            return await self._get(db, request_id)

    async def listing(self, now: float, statuses: Sequence[Status] = ("pending",)) -> list[ApprovalRequest]:
        """Return the requests in `statuses`, oldest first."""
        async with self._transaction() as db:
            await self._expire(db, now)
            marks = ", ".join("?" * len(statuses))
            rows = await db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM approval WHERE status IN ({marks}) ORDER BY created", tuple(statuses)
            )
        return [_request(row) for row in rows]

    async def _get(self, db: aiosqlite.Connection, request_id: str) -> ApprovalRequest | None:
        rows = list(await db.execute_fetchall(f"SELECT {_COLUMNS} FROM approval WHERE id = ?", (request_id,)))
        return _request(rows[0]) if rows else None

    async def _expire(self, db: aiosqlite.Connection, now: float) -> None:
        await db.execute(
            "UPDATE approval SET status = 'expired' WHERE status IN ('pending', 'approved') AND expires <= ?",
            (now,),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """Holds the store's lock and one `BEGIN IMMEDIATE` transaction; translates SQLite errors."""

    def __init__(self, store: ApprovalStore) -> None:
        self._store = store

    async def __aenter__(self) -> aiosqlite.Connection:
        await self._store._lock.acquire()
        db = self._store._db
        if db is None:
            self._store._lock.release()
            raise ApprovalStoreError(self._store.path, "the store is not open")
        try:
            await db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._store._lock.release()
            raise ApprovalStoreError(self._store.path, str(exc)) from None
        return db

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        db = self._store._db
        try:
            if db is not None:
                with anyio.CancelScope(shield=True):
                    await db.execute("COMMIT" if exc is None else "ROLLBACK")
        except sqlite3.Error as error:
            raise ApprovalStoreError(self._store.path, str(error)) from None
        finally:
            self._store._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise ApprovalStoreError(self._store.path, str(exc)) from None


def _row(request: ApprovalRequest) -> tuple[Any, ...]:
    binding = request.binding
    return (
        request.id,
        binding.client,
        binding.session,
        binding.server,
        binding.tool,
        binding.exported,
        binding.rule,
        binding.arguments_digest,
        binding.definition_digest,
        binding.policy_digest,
        request.arguments_display,
        request.status,
        request.scope,
        request.created,
        request.expires,
        request.decided,
        request.decided_by,
        request.channel,
        request.uses,
    )


def _request(row: Any) -> ApprovalRequest:
    (
        request_id,
        client,
        session,
        server,
        tool,
        exported,
        rule,
        arguments_digest,
        definition_digest,
        policy_digest,
        display,
        status,
        scope,
        created,
        expires,
        decided,
        decided_by,
        channel,
        uses,
    ) = row
    binding = CallBinding(
        client, session, server, tool, exported, rule, arguments_digest, definition_digest, policy_digest
    )
    return ApprovalRequest(
        request_id, binding, display, status, scope, created, expires, decided, decided_by, channel, uses
    )
