"""The SQLite audit store: durable, hash-chained, and failing closed.

In the audit package only this subpackage imports sqlite3. Every SQLite error is translated in it into
`AuditUnavailable` with a reason that names the file and the kind of failure, never
row contents. Rows are written on one connection in WAL mode, so a committed row
survives any crash of the gateway process (and, with `power_safe`, a power cut).
Reads use a second, read-only connection, which WAL mode lets run beside the writer.

Each connection is a plain `sqlite3` connection, used by one thread at a time under
its own lock. By default records are committed on the event loop itself: in WAL mode
with `synchronous = NORMAL` a commit writes to the page cache and does not wait for the
disk, which takes about a tenth of a millisecond, less than handing it to a thread.
Records written at the same moment share a transaction (`_lead_batch`); a call alone, with
no other call under way, commits without waiting for others to join.
The writes that do wait for the disk, the WAL checkpoints, run in a worker thread
(`_checkpoint`). With `power_safe` every commit waits for an fsync, so records go
through `GroupCommitter`: concurrent calls share a transaction, which runs in a worker
thread.

A store that cannot write when it opens (read-only file, missing directory,
another writer holding the lock) still opens: each write retries and, until one
succeeds, raises `AuditUnavailable`, so the gateway keeps serving and denies calls.
A trail whose newest rows do not match the head file, or the key, raises
`AuditCorrupted` instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import anyio
import anyio.lowlevel
import structlog

from mcp_guard.audit import files, schema
from mcp_guard.audit.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, GroupCommitter
from mcp_guard.audit.chain import ChainLink, ChainVerifier, TailState, VerifyResult, check_tail, row_hash
from mcp_guard.audit.query import CallFilter
from mcp_guard.audit.records import CallIntent, CallOutcome
from mcp_guard.audit.redaction import DEFAULT_REDACTOR, Redactor
from mcp_guard.audit.sqlite import _operations as operations
from mcp_guard.audit.sqlite._operations import translate_errors
from mcp_guard.audit.store import DEFAULT_SEARCH_LIMIT, CallRecord, PruneResult, StoredRow, sequence_error
from mcp_guard.errors import AuditCorrupted, AuditUnavailable

# How long SQLite retries a locked database before the write fails.
DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0
# How long `close` waits for queued records to be written before it abandons them.
CLOSE_TIMEOUT_SECONDS = 10.0
# Maximum wait of a commit on the event loop for a database lock, before the write fails.
LOOP_BUSY_TIMEOUT_SECONDS = 0.2
# Records committed on the event loop between two WAL checkpoints in a worker thread. SQLite's own
# automatic checkpoint (every 1000 pages) would run, and fsync, on the event loop.
CHECKPOINT_EVERY_RECORDS = 500

logger = structlog.get_logger(__name__)
_State = Literal["new", "open", "closing", "closed"]
# A record in a batch, with the future its writer waits on (None for the writer leading it).
_BatchEntry = tuple[CallIntent | CallOutcome, asyncio.Future[Exception | None] | None]


class SqliteAuditStore:
    """An `AuditStore` in a local SQLite file, used as an async context manager.

    Args:
        path: The database file; it and its directory are created when missing.
        key: The HMAC key of the chain (see `files.load_audit_key`).
        head_path: The head file, kept outside the database.
        redactor: Masks secrets before rows are hashed and written.
        read_only: Open for queries and `verify` only (the CLI's mode). Takes no
            writer lock and creates no files.
        busy_timeout_seconds: How long a write waits for a lock held by another connection.
        power_safe: Also survive a power cut: fsync the WAL on every commit and the head file on
            every write. Without it a committed row survives any crash or kill of the gateway
            process, which is what an attacker can cause, at a fraction of the cost per call.
        max_batch: Records per transaction at most.
        max_queue: Records waiting for the writer at most.
    """

    def __init__(
        self,
        path: Path,
        key: bytes,
        head_path: Path,
        redactor: Redactor = DEFAULT_REDACTOR,
        *,
        read_only: bool = False,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
        power_safe: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.path = path
        self.head_path = head_path
        self.read_only = read_only
        self._key = key
        self._redactor = redactor
        # A commit on the event loop blocks it while SQLite waits for a lock, so that wait is
        # kept short. Only a process that ignores the writer lock file (an sqlite3 shell)
        # can hold the database's write lock while this store writes.
        busy_seconds = (
            busy_timeout_seconds if power_safe else min(busy_timeout_seconds, LOOP_BUSY_TIMEOUT_SECONDS)
        )
        self._busy_timeout_ms = int(busy_seconds * 1000)
        self._power_safe = power_safe
        self._state: _State = "new"
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = files.WriterLock(files.lock_path(path))
        self._head = files.HeadWriter(head_path, fsync=power_safe)
        # Each connection is used by one thread at a time: the writer under this lock,
        # the reader under `_read_lock`. A free write lock is taken without a trip through the
        # event loop. `_lead_batch` makes that trip itself when other records may join its batch.
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._read_lock = anyio.Lock()
        # Calls whose intent is committed and whose outcome is not (a hint for batching only).
        self._open_calls = 0
        # Created on entry: its streams must be closed, and only a writer runs it.
        self._committer: GroupCommitter[CallIntent | CallOutcome] | None = None
        self._max_queue = max_queue
        self._writer_done = anyio.Event()
        self._records_since_checkpoint = 0
        self._checkpointing = False
        # The batch a writer waiting for the write lock leads, which later writers join.
        self._batch: list[_BatchEntry] | None = None
        # The newest row as of the last commit, or None when it must be read from the database.
        self._tail: ChainLink | None = None
        self._max_batch = max_batch
        self._head_stale = False

    @classmethod
    def in_state_dir(
        cls,
        state_dir: Path,
        redactor: Redactor = DEFAULT_REDACTOR,
        *,
        key_env_var: str | None = files.DEFAULT_KEY_ENV_VAR,
        read_only: bool = False,
        power_safe: bool = False,
        key_needed: bool = True,
    ) -> SqliteAuditStore:
        """Build a store on the standard files of a state directory, loading or creating the key.

        Args:
            key_needed: False opens a `read_only` store without a key when none is found. It can
                search the trail, and its `verify` raises `AuditUnavailable`.

        Raises:
            ConfigError: The key variable is set but invalid.
            AuditUnavailable: The key file cannot be read or created (or, when
                `read_only`, does not exist).
        """
        paths = files.AuditPaths.in_state_dir(state_dir)
        # A new key beside an existing trail could never verify it: the key that wrote it is missing.
        trail_exists = paths.database.exists() and paths.database.stat().st_size > 0
        try:
            key = files.load_audit_key(paths.key, key_env_var, create=not read_only and not trail_exists)
        except FileNotFoundError:
            variable = f" and ${key_env_var} is not set" if key_env_var else ""
            if read_only and not key_needed:
                return cls(paths.database, b"", paths.head, redactor, read_only=True)
            if read_only or not trail_exists:
                raise AuditUnavailable(f"no audit key at {paths.key}{variable}") from None
            raise AuditUnavailable(
                f"the audit key is missing: no file {paths.key}{variable}, though {paths.database} "
                "contains a trail",
                fix=(
                    f"Give the gateway the key that wrote the trail (${key_env_var or files.DEFAULT_KEY_ENV_VAR}, "
                    f"or the file {paths.key}). To start a new trail instead, move {paths.database.name} "
                    f"and {paths.head.name} out of the state directory."
                ),
            ) from None
        except (OSError, ValueError) as exc:
            verb = "load" if paths.key.exists() else "create"
            raise AuditUnavailable(
                f"cannot {verb} the audit key {paths.key}: {_describe(exc)}",
                fix="Make the state directory writable by this user, or set gateway.state_dir to one that is.",
            ) from None
        return cls(paths.database, key, paths.head, redactor, read_only=read_only, power_safe=power_safe)

    async def __aenter__(self) -> SqliteAuditStore:
        if self._state != "new":
            raise RuntimeError(f"the audit store cannot be opened again: it is {self._state}")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._state = "open"
        if self.read_only or not self._power_safe:
            self._writer_done.set()
        if self.read_only:
            return self
        if self._power_safe:
            self._committer = GroupCommitter(
                self._write_batch, max_batch=self._max_batch, max_queue=self._max_queue
            )
            self._task_group.start_soon(self._run_writer, self._committer)
        try:
            async with self._write_lock:
                await self._open_writer()
        except AuditUnavailable as exc:
            logger.warning("audit_store_unavailable", path=str(self.path), reason=exc.reason)
        except BaseException:
            # close() ends the writer task, so the task group exits at once and
            # the original exception is raised alone rather than inside a group.
            await self.close()
            await self._task_group.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
        # The writer task has ended, so the group exits at once. The body's exception is
        # not passed in, because the group would wrap it in an ExceptionGroup.
        await self._task_group.__aexit__(None, None, None)

    async def record_intent(self, intent: CallIntent) -> None:
        """Store a call's intent (redacted); return once it is committed.

        Raises:
            AuditUnavailable: The row could not be written.
            ValueError: The call id already has an intent.
        """
        await self._write(intent.redacted(self._redactor))

    async def record_outcome(self, outcome: CallOutcome) -> None:
        """Store a call's outcome (redacted); return once it is committed.

        Raises:
            AuditUnavailable: The row could not be written.
            ValueError: The call id has no intent, or already has an outcome.
        """
        await self._write(outcome.redacted(self._redactor))

    async def search(
        self, filters: CallFilter, *, limit: int = DEFAULT_SEARCH_LIMIT, oldest_first: bool = False
    ) -> list[CallRecord]:
        """Return up to `limit` calls that match `filters`: the newest, or with `oldest_first` the oldest."""
        condition, parameters = filters.to_sql()
        order = "ASC" if oldest_first else "DESC"
        query = f"{schema.SELECT_CALLS} WHERE {condition} ORDER BY intent_row_id {order} LIMIT ?"
        rows = await self._fetch(query, [*parameters, limit])
        return [operations.call_record(row) for row in rows]

    async def get_call(self, call_id: str) -> CallRecord | None:
        """Return one call, or None if no intent has that id."""
        rows = await self._fetch(f"{schema.SELECT_CALLS} WHERE call_id = ?", [call_id])
        return operations.call_record(rows[0]) if rows else None

    async def last_row_id(self) -> int:
        """Return the id of the newest row, or 0 if there is none."""
        rows = await self._fetch("SELECT MAX(id) FROM audit_rows", [])
        return int(rows[0][0] or 0)

    async def rows_after(self, row_id: int, *, limit: int = DEFAULT_SEARCH_LIMIT) -> list[StoredRow]:
        """Return up to `limit` rows with an id above `row_id`, oldest first."""
        rows = await self._fetch(f"{schema.SELECT_ROWS} WHERE id > ? ORDER BY id LIMIT ?", [row_id, limit])
        return [operations.stored_row(row) for row in rows]

    async def verify(self) -> VerifyResult:
        """Check every row, the pruning anchor and the head file.

        The head file is read before the rows, so rows committed meanwhile are newer
        than the head and accepted.

        Raises:
            AuditUnavailable: The database cannot be read.
        """
        self._require_open()
        if not self._key:
            raise AuditUnavailable("verifying the trail needs the audit key, and none was found")
        async with self._read_lock:
            return await anyio.to_thread.run_sync(self._verify_blocking)

    def _verify_blocking(self) -> VerifyResult:
        try:
            head = files.read_head(self.head_path)
        except ValueError as exc:
            raise AuditUnavailable(str(exc)) from None
        except OSError as exc:
            raise AuditUnavailable(f"cannot read {self.head_path}: {_describe(exc)}") from None
        reader = self._open_reader()
        with translate_errors(self.path):
            reader.execute("BEGIN")
            try:
                anchor, mac = operations.read_anchor(reader)
                verifier = ChainVerifier(self._key, anchor, mac, head, str(self.head_path))
                for row in reader.execute(f"{schema.SELECT_ROWS} ORDER BY id"):
                    fields, prev_hash, stored_hash = schema.split_row(tuple(row))
                    if not verifier.add(fields["id"], fields, prev_hash, stored_hash):
                        break
            finally:
                reader.execute("ROLLBACK")
        return verifier.finish()

    async def prune(self, older_than: timedelta | None = None, max_rows: int | None = None) -> PruneResult:
        """Delete the oldest rows, keeping the rest verifiable.

        The last deleted row becomes the anchor: its id and hash are stored with a MAC
        in `audit_meta`, so the first remaining row still chains to something the key
        vouches for. Only a prefix of the chain is ever deleted.

        Args:
            older_than: Delete the rows before the first row newer than this age.
            max_rows: Keep at most this many rows.

        Raises:
            ValueError: Neither limit is set, or `max_rows` is negative.
            AuditUnavailable: The database cannot be written.
        """
        if older_than is None and max_rows is None:
            raise ValueError("prune needs older_than, max_rows or both")
        if max_rows is not None and max_rows < 0:
            raise ValueError(f"max_rows must be 0 or more, got {max_rows}")
        self._require_writable()
        async with self._write_lock:
            await self._ensure_writer()
            result = await anyio.to_thread.run_sync(self._prune_blocking, older_than, max_rows)
        logger.info("audit_pruned", rows_deleted=result.rows_deleted, anchor_row_id=result.anchor_row_id)
        return result

    def _prune_blocking(self, older_than: timedelta | None, max_rows: int | None) -> PruneResult:
        db = self._require_writer()
        self._tail = None
        with translate_errors(self.path):
            with operations.transaction(db):
                result = operations.delete_prefix(db, self._key, older_than, max_rows)
            if result.rows_deleted:
                # Deleted pages are zeroed (secure_delete); copying the WAL back and
                # truncating it removes the copies there too.
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return result

    async def close(self) -> None:
        """Write the queued records, then close the connections and release the lock.

        Calling it again does nothing.
        """
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            return
        self._state = "closing"
        with anyio.CancelScope(shield=True):
            if self._committer is not None:
                await self._committer.close()
            with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS) as scope:
                await self._writer_done.wait()
            if scope.cancelled_caught:
                logger.error("audit_close_timed_out", path=str(self.path), seconds=CLOSE_TIMEOUT_SECONDS)
                self._task_group.cancel_scope.cancel()
            async with self._read_lock, self._write_lock:
                await anyio.to_thread.run_sync(self._close_connections)
            self._lock.release()
        self._state = "closed"

    def _close_connections(self) -> None:
        # The writer closes last, so SQLite checkpoints and removes the -wal file.
        for connection in (self._reader, self._writer):
            if connection is not None:
                operations.close_quietly(connection)
        self._writer = self._reader = None
        self._head.close()

    # Writing -----------------------------------------------------------------------

    async def _run_writer(self, committer: GroupCommitter[CallIntent | CallOutcome]) -> None:
        try:
            await committer.run()
        finally:
            self._writer_done.set()

    async def _write(self, record: CallIntent | CallOutcome) -> None:
        """Commit one redacted record, through the group committer in power-safe mode.

        Otherwise the first writer to arrive leads: while it waits for the write lock, the
        records of writers arriving meanwhile join its batch, and it commits them all in one
        transaction. A writer alone pays for no more than its own commit.
        """
        committer = self._require_writable()
        if committer is not None:
            await committer.submit(record)
            return
        if self._batch is not None:
            follower: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
            self._batch.append((record, follower))
            # Shielded, so the caller always learns whether its record was committed.
            with anyio.CancelScope(shield=True):
                error = await follower
        else:
            error = await self._lead_batch(record)
        if error is not None:
            raise error

    async def _lead_batch(self, record: CallIntent | CallOutcome) -> Exception | None:
        """Commit `record` and the records that join it while the write lock is taken."""
        batch: list[_BatchEntry] = [(record, None)]
        self._batch = batch
        results: list[Exception | None] | None = None
        try:
            # Shielded: followers' records depend on this commit, so cancelling it would lose them.
            with anyio.CancelScope(shield=True):
                try:
                    if self._open_calls > (1 if isinstance(record, CallOutcome) else 0):
                        # Other calls are under way: the records they write at this moment join
                        # the batch. A call alone commits at once.
                        await anyio.lowlevel.checkpoint()
                    async with self._write_lock:
                        self._batch = None
                        await self._ensure_checked_writer()
                        results = self._commit_on_loop([item for item, _ in batch])
                    self._count_open_calls(batch, results)
                except AuditUnavailable as exc:
                    # Each caller gets its own exception object, as one raised in many tasks would
                    # collect every task's traceback.
                    results = [AuditUnavailable(exc.reason, fix=exc.fix) for _ in batch]
        finally:
            if self._batch is batch:
                self._batch = None
            if results is None:  # Reached only on an error the block above did not expect.
                results = [AuditUnavailable("the audit store failed during the write") for _ in batch]
            for (_, follower), result in zip(batch[1:], results[1:], strict=True):
                if follower is not None:
                    follower.set_result(result)
        return results[0]

    def _count_open_calls(self, batch: list[_BatchEntry], results: list[Exception | None]) -> None:
        for (record, _), result in zip(batch, results, strict=True):
            if result is None:
                self._open_calls += 1 if isinstance(record, CallIntent) else -1

    def _commit_on_loop(self, records: list[CallIntent | CallOutcome]) -> list[Exception | None]:
        try:
            results = self._append_blocking(records)
        except AuditUnavailable:
            raise
        except Exception:
            logger.exception("audit_write_failed", records=len(records))
            raise AuditUnavailable("an internal error stopped the write; see the gateway log") from None
        self._records_since_checkpoint += len(records)
        if self._records_since_checkpoint >= CHECKPOINT_EVERY_RECORDS and not self._checkpointing:
            self._checkpointing = True
            self._task_group.start_soon(self._checkpoint)
        return results

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database in a worker thread, where its fsyncs cannot stall the loop."""
        try:
            async with self._write_lock:
                if self._writer is not None:
                    await anyio.to_thread.run_sync(self._checkpoint_blocking, self._writer)
        except AuditUnavailable as exc:
            # The WAL keeps growing until a checkpoint succeeds; no record is lost.
            logger.warning("audit_checkpoint_failed", path=str(self.path), reason=exc.reason)
        finally:
            self._records_since_checkpoint = 0
            self._checkpointing = False

    def _checkpoint_blocking(self, db: sqlite3.Connection) -> None:
        with translate_errors(self.path):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _write_batch(self, records: Sequence[CallIntent | CallOutcome]) -> list[Exception | None]:
        async with self._write_lock:
            await self._ensure_checked_writer()
            return await self._append(records)

    async def _ensure_checked_writer(self) -> None:
        try:
            await self._ensure_writer()
        except AuditCorrupted as exc:
            raise AuditUnavailable(
                f"the trail failed its integrity check ({exc.detail}); run `mcp-guard audit verify`"
            ) from None

    async def _append(self, records: Sequence[CallIntent | CallOutcome]) -> list[Exception | None]:
        # anyio waits for the thread even when this task is cancelled, so the transaction
        # commits or rolls back before the writer connection is used again.
        return await anyio.to_thread.run_sync(self._append_blocking, records)

    def _append_blocking(self, records: Sequence[CallIntent | CallOutcome]) -> list[Exception | None]:
        """Write the records in one transaction, then the head file (blocking)."""
        db = self._require_writer()
        # The store is the only writer, so the newest row is its own last commit. After a
        # failure, a prune or a reconnect the row is read from the database again.
        tail = self._tail
        self._tail = None
        with translate_errors(self.path), operations.transaction(db):
            if tail is None:
                tail = operations.read_tail(db)
            stored = operations.stored_kinds(db, {record.call_id for record in records})
            results: list[Exception | None] = []
            rows: list[tuple[Any, ...]] = []
            for record in records:
                error = sequence_error(record, stored)
                results.append(error)
                if error is None:
                    previous = tail
                    fields = schema.hashed_fields(previous.row_id + 1, record)
                    tail = ChainLink(previous.row_id + 1, row_hash(self._key, previous.hash, fields))
                    rows.append(schema.row_values(fields, previous.hash, tail.hash))
            if rows:
                db.executemany(schema.INSERT_ROW, rows)
        self._tail = tail
        if rows:
            logger.debug("audit_batch_committed", rows=len(rows), last_row_id=tail.row_id)
            self._write_head(tail)
        return results

    def _write_head(self, head: ChainLink) -> None:
        try:
            self._head.write(head)
        except OSError as exc:
            # The rows are committed, so callers succeed. Verification accepts rows past
            # a stale head; only deleting them would go unnoticed until the next update.
            if not self._head_stale:
                logger.error("audit_head_write_failed", path=str(self.head_path), error=_describe(exc))
            self._head_stale = True
            return
        self._head_stale = False

    async def _ensure_writer(self) -> None:
        if self._writer is None:
            await self._open_writer()

    async def _open_writer(self) -> None:
        """Take the lock, open and check the database, then close calls a crash left open."""
        try:
            await anyio.to_thread.run_sync(self._prepare_files)
        except OSError as exc:
            raise AuditUnavailable(
                f"cannot create the audit files beside {self.path}: {_describe(exc)}"
            ) from None
        if not self._lock.held:
            holder = self._lock.holder()
            process = "another process" if holder is None else f"another process (PID {holder})"
            raise AuditUnavailable(
                f"{process} is writing {self.path}, lock file {self._lock.path}",
                fix=(
                    "Each gateway that runs at the same time needs its own state directory: set "
                    "$MCP_GUARD_STATE_DIR (or gateway.state_dir) for this one, or stop the other."
                ),
            )
        try:
            await anyio.to_thread.run_sync(self._connect_writer)
            await self._close_unfinished_calls()
        except BaseException:
            await self._drop_writer()
            raise

    def _connect_writer(self) -> None:
        self._tail = None
        with translate_errors(self.path):
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._writer = db
        with translate_errors(self.path):
            operations.configure_writer(db, self._busy_timeout_ms, power_safe=self._power_safe)
            if not self._power_safe:
                db.execute("PRAGMA wal_autocheckpoint = 0")
            db.executescript(schema.SCHEMA)
        files.restrict_to_owner(*operations.database_files(self.path))
        self._check_tail()

    def _prepare_files(self) -> None:
        files.ensure_state_dir(self.path.parent)
        files.create_owner_only(self.path)
        self._lock.acquire()

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(operations.close_quietly, writer)
        self._head.close()
        self._lock.release()

    def _check_tail(self) -> None:
        db = self._require_writer()
        try:
            head = files.read_head(self.head_path)
        except ValueError as exc:
            raise AuditCorrupted(None, str(exc)) from None
        except OSError as exc:
            raise AuditUnavailable(f"cannot read {self.head_path}: {_describe(exc)}") from None
        with translate_errors(self.path):
            tail = operations.read_tail(db)
            anchor, _ = operations.read_anchor(db)
            tail_row = operations.fetch_row(db, tail.row_id)
            head_row = None if head is None else operations.fetch_row(db, head.row_id)
        state = TailState(
            tail=tail,
            tail_row=None if tail_row is None else schema.split_row(tail_row),
            anchor=anchor,
            head=head,
            head_row_hash=None if head_row is None else head_row[-1],
        )
        check_tail(self._key, state, str(self.head_path))
        if head != tail:
            self._write_head(tail)

    async def _close_unfinished_calls(self) -> None:
        db = self._require_writer()
        rows = await anyio.to_thread.run_sync(self._fetch_blocking, db, operations.UNFINISHED_CALLS, ())
        if not rows:
            return
        now = datetime.now(UTC)
        outcomes = [operations.shutdown_outcome(call_id, time, now) for call_id, time in rows]
        for start in range(0, len(outcomes), self._max_batch):
            await self._append(outcomes[start : start + self._max_batch])
        logger.warning("audit_unfinished_calls_closed", calls=len(outcomes), outcome="gateway_shutdown")

    # Reading -----------------------------------------------------------------------

    async def _fetch(self, query: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        self._require_open()
        async with self._read_lock:
            return await anyio.to_thread.run_sync(self._read_blocking, query, parameters)

    def _read_blocking(self, query: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._fetch_blocking(self._open_reader(), query, parameters)

    def _fetch_blocking(
        self, db: sqlite3.Connection, query: str, parameters: Sequence[object]
    ) -> list[tuple[Any, ...]]:
        with translate_errors(self.path):
            return [tuple(row) for row in db.execute(query, parameters)]

    def _open_reader(self) -> sqlite3.Connection:
        """Return the read-only connection, opening it first if needed; call under `_read_lock`."""
        if self._reader is None:
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            with translate_errors(self.path):
                reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                try:
                    reader.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
                    reader.execute("PRAGMA query_only = ON")
                except BaseException:
                    reader.close()
                    raise
            self._reader = reader
        return self._reader

    # State checks ------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"the audit store is {self._state}; use it inside `async with`")

    def _require_writable(self) -> GroupCommitter[CallIntent | CallOutcome] | None:
        """Return the group committer (power-safe mode only), or raise if nothing may be written."""
        if self._state in ("closing", "closed"):
            # Calls still running during shutdown reach this; they are denied, not crashed.
            raise AuditUnavailable(f"the audit store for {self.path} is {self._state}")
        self._require_open()
        if self.read_only:
            raise AuditUnavailable(f"{self.path} was opened read-only")
        return self._committer

    def _require_writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise AuditUnavailable(f"{self.path} is not open for writing")
        return self._writer


def _describe(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
