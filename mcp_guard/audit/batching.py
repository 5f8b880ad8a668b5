"""Group commit: one writer task turns many concurrent writes into few transactions.

Callers `submit` a record and wait. The writer task takes everything queued (up to
a batch limit), hands it to the store's `write_batch` as one transaction, and then
wakes every caller of that batch with its own result. Fifty callers writing at
once therefore share a handful of commits instead of queueing for fifty. What
a transaction does is left to the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mcp_guard.errors import AuditUnavailable

T = TypeVar("T")
BatchWriter = Callable[[Sequence[T]], Awaitable[Sequence[Exception | None]]]

# Records in one transaction: bounds the time one commit holds the write lock.
DEFAULT_MAX_BATCH = 256
# Records waiting for the writer; further callers wait for a free slot.
DEFAULT_MAX_QUEUE = 4096
# How long a caller waits for a free queue slot before the write fails.
ENQUEUE_TIMEOUT_SECONDS = 5.0
# How long a queued caller waits for its commit. The wait is shielded from
# cancellation, so a caller always learns whether its row was written; this bounds
# that shielded wait if the disk stalls.
COMMIT_WAIT_TIMEOUT_SECONDS = 30.0

logger = structlog.get_logger(__name__)


@dataclass(eq=False)
class _Pending(Generic[T]):
    record: T
    done: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


class GroupCommitter(Generic[T]):
    """Queues records and writes them in batches from one task.

    Args:
        write_batch: Writes a batch in one transaction and returns one result per
            record (None when written, else the error for that record's caller). It
            raises `AuditUnavailable` when the whole batch failed.
        max_batch: Records per transaction at most.
        max_queue: Records waiting at most.
    """

    def __init__(
        self,
        write_batch: BatchWriter[T],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        send, receive = anyio.create_memory_object_stream[_Pending[T]](max_buffer_size=max_queue)
        self._send: MemoryObjectSendStream[_Pending[T]] = send
        self._receive: MemoryObjectReceiveStream[_Pending[T]] = receive

    async def submit(self, record: T) -> None:
        """Queue a record and return once its transaction has committed.

        Raises:
            AuditUnavailable: The queue stayed full, the writer is closed, the commit
                failed, or it did not finish in time.
            Exception: The per-record error `write_batch` returned.
        """
        pending = _Pending(record)
        try:
            await self._enqueue(pending)
        except TimeoutError:
            raise AuditUnavailable(f"the write queue stayed full for {ENQUEUE_TIMEOUT_SECONDS:g} s") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise AuditUnavailable("the audit store is closed") from None

        with anyio.CancelScope(shield=True), anyio.move_on_after(COMMIT_WAIT_TIMEOUT_SECONDS) as scope:
            await pending.done.wait()
        if scope.cancelled_caught:
            # NOTE: the row may still be committed after this error is raised.
            raise AuditUnavailable(f"the commit did not finish within {COMMIT_WAIT_TIMEOUT_SECONDS:g} s")
        if pending.error is not None:
            raise pending.error

    async def _enqueue(self, pending: _Pending[T]) -> None:
        try:
            self._send.send_nowait(pending)
        except anyio.WouldBlock:
            with anyio.fail_after(ENQUEUE_TIMEOUT_SECONDS):
                await self._send.send(pending)

    async def run(self) -> None:
        """Write batches until `close` is called and the queue is empty."""
        try:
            async for first in self._receive:
                batch = [first, *self._take_queued(self._max_batch - 1)]
                await self._commit(batch)
        finally:
            # Reached early only when the writer task is cancelled: fail what is left
            # so no caller waits for a commit that will never come.
            for pending in self._take_queued(None):
                pending.error = AuditUnavailable("the audit store closed before the commit")
                pending.done.set()
            self._receive.close()

    async def close(self) -> None:
        """Stop accepting records; `run` returns once the queued ones are written."""
        await self._send.aclose()

    def _take_queued(self, limit: int | None) -> list[_Pending[T]]:
        queued: list[_Pending[T]] = []
        while limit is None or len(queued) < limit:
            try:
                queued.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        return queued

    async def _commit(self, batch: list[_Pending[T]]) -> None:
        results: Sequence[Exception | None] | None = None
        try:
            results = await self._write_batch([pending.record for pending in batch])
        except AuditUnavailable as exc:
            # Each caller gets its own exception object: one raised in many tasks
            # would collect every task's traceback.
            results = [AuditUnavailable(exc.reason, fix=exc.fix) for _ in batch]
        except Exception:
            logger.exception("audit_batch_failed", records=len(batch))
            results = [
                AuditUnavailable("an internal error stopped the write; see the gateway log") for _ in batch
            ]
        finally:
            if results is None:  # The writer task was cancelled mid-commit.
                results = [AuditUnavailable("the audit store closed before the commit") for _ in batch]
            for pending, result in zip(batch, results, strict=True):
                pending.error = result
                pending.done.set()
