"""The gateway's wall clock, which never runs backwards.

Time-limited rules and grants compare against wall-clock time, and a clock
stepped backwards (by an operator, NTP or an attacker with the host's clock)
must not revive an expired grant. `HighWaterClock` returns the latest time it
has ever returned, and its mark is persisted by the usage store, so a restart
does not reset it either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """A source of the current UTC time."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware in UTC."""
        ...


def system_time() -> datetime:
    """Return the system's wall-clock time in UTC."""
    return datetime.now(UTC)


class HighWaterClock:
    """A clock that returns the later of its source's time and the latest time it returned before."""

    def __init__(
        self, source: Callable[[], datetime] = system_time, high_water: datetime | None = None
    ) -> None:
        self._source = source
        self.high_water = high_water or datetime.min.replace(tzinfo=UTC)

    def now(self) -> datetime:
        """Return the current time, never earlier than any time returned before."""
        current = self._source()
        if current > self.high_water:
            self.high_water = current
        return self.high_water


class ManualClock:
    """A clock that tests set by hand."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def now(self) -> datetime:
        """Return the time last set."""
        return self.current


class SteadyClock:
    """Seconds since the epoch, advancing with the monotonic clock, for rate limits.

    It reads the wall clock once, at start, and then adds the monotonic clock's
    progress, so stepping the system clock (by an operator, NTP or an
    attacker) neither resets a window nor locks a client out. `start_at_least`
    moves it forward to a time the store has already seen, so a restart after
    the wall clock went back does not reopen windows either.
    """

    def __init__(
        self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._monotonic = monotonic
        self._base = wall()
        self._started = monotonic()

    def __call__(self) -> float:
        return self._base + (self._monotonic() - self._started)

    def start_at_least(self, mark: float) -> None:
        """Move the clock forward so it reads at least `mark` now; never move it back."""
        lag = mark - self()
        if lag > 0:
            self._base += lag
