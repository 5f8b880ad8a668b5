"""Deciding concurrent calls together: one store round trip for every decision asked at once.

A store hands each decision to a `DecisionBatcher` and awaits it. Decisions
requested while a batch is in progress wait for the next one, which carries all
of them. The store's `decide` runs a batch as one transaction or pipeline and
returns one result per decision, in order. A single decision therefore pays
one round trip, and fifty concurrent ones pay about two instead of fifty.
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

    async def submit(self, item: Item) -> Result:
        """Queue `item` and return its result once its batch has run."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

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
