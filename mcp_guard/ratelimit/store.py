"""The contents of a limit store, and the sliding-window arithmetic every store shares.

A rate limit is a sliding window: at most `limit` units in any span of
`period` seconds. Each window is cut into `SLICES` slices of `period / SLICES`
seconds, and a store keeps one running sum per slice. A check at time `t` adds
up every slice that overlaps `(t - period, t]`. Counting the oldest slice whole
errs on the side of rejecting, so a span of `period` seconds never contains
more than `limit` units, however calls fall around a boundary. The price is that
units leave the window up to one slice (a second, for a minute window) later
than they strictly could.

A concurrency limit counts leases: one per call in flight, removed when the
call ends and expiring on their own after a while, so that a crashed gateway
does not hold its slots for ever.

A store takes all the charges of one call or none of them, atomically, also
when several gateway processes share it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from mcp_guard.errors import GuardError

SLICES = 60
"""Slices per window: the finer, the closer a rejection follows the exact window, the more state per key."""

TOLERANCE = 1e-9
"""Relative slack in comparisons, so that three calls costing 0.1 fit a limit of 0.3 despite float rounding."""


def fits(used: float, units: float, limit: float) -> bool:
    """Return whether `units` more fit under `limit` when `used` are taken."""
    return used + units <= limit * (1 + TOLERANCE) + TOLERANCE


@dataclass(frozen=True, slots=True)
class WindowCharge:
    """A request for `units` of the sliding window `key`, which allows `limit` units per `period` seconds."""

    key: str
    limit: float
    period: float
    units: float


@dataclass(frozen=True, slots=True)
class LeaseCharge:
    """A request for one of the `limit` concurrent slots of `key`, for at most `lease_seconds`."""

    key: str
    limit: int
    lease_seconds: float


Charge = WindowCharge | LeaseCharge


@dataclass(frozen=True, slots=True)
class Grant:
    """All the charges of one call were taken.

    Attributes:
        charges: The charges, in the order asked.
        slices: For each charge, the slice its units went into, or None for a lease.
        lease: The id of the leases taken.
    """

    charges: tuple[Charge, ...]
    slices: tuple[int | None, ...]
    lease: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A charge did not fit, so none was taken.

    Attributes:
        index: Position of the charge that did not fit.
        used: Units (or slots) in use under that charge's key.
        retry_after: Seconds until the charge would fit, if nothing else is taken meanwhile.
    """

    index: int
    used: float
    retry_after: float


class LimitStoreUnavailable(GuardError):
    """The limit store cannot be reached or used, so limits cannot be checked.

    Attributes:
        store: What the store is ("Redis at 127.0.0.1:6379", "SQLite file /x/limits.sqlite3").
        reason: What went wrong.
    """

    def __init__(self, store: str, reason: str) -> None:
        self.store = store
        self.reason = reason
        super().__init__(f"The rate-limit store ({store}) cannot be used: {reason}.")


class LimitStore(Protocol):
    """Counts behind the limiter. Every method may raise `LimitStoreUnavailable`."""

    description: str
    """A description of the store for messages, without secrets."""

    async def acquire(self, charges: Sequence[Charge], now: float) -> Grant | Rejection:
        """Take every charge, or none of them, atomically."""
        ...

    async def finish(self, grant: Grant, corrections: Mapping[int, float], now: float) -> None:
        """Settle a finished call's charges and give back its concurrent slots, in one step.

        `corrections` maps a charge's position to the units to add once the call's real cost
        is known. Units given back (a negative correction) leave the slice the charge went
        into. Units used beyond the reservation are added at `now`, so they count for a whole
        window from the moment they were used, however long the call took.
        """
        ...

    async def usage(self, charges: Sequence[Charge], now: float) -> list[float]:
        """Return the units (or slots) in use under each charge's key, taking nothing."""
        ...

    async def time_mark(self) -> float | None:
        """Return the latest time any charge was taken at, so a restarted clock can start there."""
        ...

    async def aclose(self) -> None:
        """Close connections and files."""
        ...


def slice_seconds(period: float) -> float:
    """Return the length of one slice of a window of `period` seconds."""
    return period / SLICES


def slice_of(now: float, period: float) -> int:
    """Return the slice that time `now` falls in, for a window of `period` seconds."""
    return math.floor(now / slice_seconds(period))


def oldest_counted(now: float, period: float) -> int:
    """Return the oldest slice a check at `now` still counts: the one holding `now - period`."""
    return math.floor((now - period) / slice_seconds(period))


def window_rejection(
    index: int, charge: WindowCharge, live: Iterable[tuple[int, float]], now: float
) -> Rejection | None:
    """Return why `charge` does not fit a window whose counted slices are `live`, or None if it fits.

    `live` contains (slice, units) pairs, each slice at least `oldest_counted(now, period)`.
    """
    slices = sorted(live)
    used = sum(units for _, units in slices)
    if fits(used, charge.units, charge.limit):
        return None
    width = slice_seconds(charge.period)
    remaining = used
    retry = charge.period
    for slice_index, units in slices:
        remaining -= units
        if fits(remaining, charge.units, charge.limit):
            # The slice stops being counted once `now - period` has moved past its end.
            retry = (slice_index + 1) * width + charge.period - now
            break
    return Rejection(index=index, used=used, retry_after=max(retry, 0.0))


def longest_wait(rejections: Iterable[Rejection | None]) -> Rejection | None:
    """Return the rejection that waits longest, or None if every charge fits.

    A caller that retries after the shortest wait would be rejected again by another full limit.
    """
    return max(
        (item for item in rejections if item is not None), key=lambda item: item.retry_after, default=None
    )


def new_lease_id() -> str:
    """Return a fresh, unguessable lease id."""
    return uuid.uuid4().hex
