"""The gateway's wall clock, which never runs backwards.

Time-limited rules and grants compare against wall-clock time, and a clock
stepped backwards (by an operator, NTP or an attacker with the host's clock)
must not revive an expired grant. `HighWaterClock` returns the latest time it
has ever returned, and its mark is persisted by the usage store, so a restart
does not reset it either.
"""

from __future__ import annotations

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
