"""Deciding concurrent calls together: one store round trip for every decision asked at once.

A store hands each decision to a `DecisionBatcher` and awaits it. Decisions
requested while a batch is in progress wait for the next one, which carries all
of them. The store's `decide` runs a batch as one transaction or pipeline and
returns one result per decision, in order. A single decision therefore pays
one round trip, and fifty concurrent ones pay about two instead of fifty. A
decision the store expects no other to join (`alone`) is made at once in its
caller's task, when no batch is in progress: queueing would cost it two trips
through the event loop and a task, for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
# Decisions in one batch at most: bounds how long one transaction holds the store's lock.
MAX_BATCH = 256


class DecisionBatcher(Generic[Item, Result]):
    """Runs queued items through `decide` in batches, from one task at a time.

    `decide` returns one result (or exception, raised to that item's caller) per
    item; if it raises, every caller of the batch gets that exception.
    """

    def __init__(self, decide: Callable[[Sequence[Item]], Awaitable[Sequence[Result | Exception]]]) -> None:
        self._decide = decide
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._runner: asyncio.Task[None] | None = None
        # A decision made in its caller's task is under way; queued ones wait for it to end.
        self._deciding_inline = False

    async def submit(self, item: Item, *, alone: bool = False) -> Result:
        """Return the result of `item` once it is decided.

        Args:
            item: The decision to make.
            alone: No other decision is expected to join it. It is then decided at once in
                this task unless a batch is in progress, and otherwise queued.
        """
        if alone and not self._busy():
            return await self._decide_inline(item)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._busy():
            self._runner = asyncio.create_task(self._run())
        return await future

    def _busy(self) -> bool:
        return self._deciding_inline or (self._runner is not None and not self._runner.done())

    async def _decide_inline(self, item: Item) -> Result:
        self._deciding_inline = True
        try:
            results = await self._decide([item])
        finally:
            self._deciding_inline = False
            if self._queue:
                self._runner = asyncio.create_task(self._run())
        result = results[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def drain(self) -> None:
        """Wait until every queued item has been decided."""
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the other decisions of this turn of the event loop join
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                results: Sequence[Result | Exception] = await self._decide([item for item, _ in batch])
            except Exception as exc:  # contained: handed to every caller of the batch
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
