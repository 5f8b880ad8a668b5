"""A limit store in the gateway's memory: for tests and for a single process that may forget on restart.

Every operation runs without awaiting, so on one event loop each is atomic.
Keys that nothing has charged for a whole window are dropped as time passes.
For each window length the store keeps its keys in order of their last
charge, so the expired ones are always at the front, and dropping them costs
nothing per surviving key. Memory therefore follows the keys active in the
last window, however many distinct keys there were over time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from mcp_guard.ratelimit.store import (
    Charge,
    Grant,
    LeaseCharge,
    Rejection,
    WindowCharge,
    fits,
    longest_wait,
    new_lease_id,
    oldest_counted,
    slice_of,
    window_rejection,
)


class _Window:
    __slots__ = ("slices", "total")

    def __init__(self) -> None:
        self.slices: deque[list[float]] = deque()  # [slice, units], oldest first
        self.total = 0.0

    def expire(self, oldest: int) -> None:
        while self.slices and self.slices[0][0] < oldest:
            self.total -= self.slices.popleft()[1]

    def add(self, slice_index: int, units: float) -> None:
        if self.slices and self.slices[-1][0] == slice_index:
            self.slices[-1][1] += units
        else:
            self.slices.append([slice_index, units])
        self.total += units


class MemoryLimitStore:
    """Sliding windows and leases in dictionaries."""

    description = "memory"

    def __init__(self) -> None:
        # Window length -> key -> window, in the order of each key's last charge.
        self._windows: dict[float, dict[str, _Window]] = {}
        # Key -> lease id -> expiry.
        self._leases: dict[str, dict[str, float]] = {}
        self._mark: float | None = None

    async def acquire(self, charges: Sequence[Charge], now: float) -> Grant | Rejection:
        """Take every charge, or none of them."""
        return self.acquire_now(charges, now)

    def acquire_now(self, charges: Sequence[Charge], now: float) -> Grant | Rejection:
        """`acquire` without the coroutine, for benchmarks."""
        rejection = longest_wait(self._check(index, charge, now) for index, charge in enumerate(charges))
        if rejection is not None:
            return rejection
        lease = new_lease_id()
        slices: list[int | None] = []
        for charge in charges:
            if isinstance(charge, WindowCharge):
                slice_index = slice_of(now, charge.period)
                windows = self._windows.setdefault(charge.period, {})
                window = windows.pop(charge.key, None) or _Window()
                window.add(slice_index, charge.units)
                windows[charge.key] = window  # moves the key to the back: most recently charged
                slices.append(slice_index)
            else:
                self._leases.setdefault(charge.key, {})[lease] = now + charge.lease_seconds
                slices.append(None)
        self._mark = now if self._mark is None else max(self._mark, now)
        self._sweep(now)
        return Grant(charges=tuple(charges), slices=tuple(slices), lease=lease)

    async def finish(self, grant: Grant, corrections: Mapping[int, float], now: float) -> None:
        """Settle the call's charges and remove its leases."""
        for index, delta in corrections.items():
            self._settle(grant, index, delta, now)
        for charge in grant.charges:
            if isinstance(charge, LeaseCharge):
                leases = self._leases.get(charge.key)
                if leases is not None:
                    leases.pop(grant.lease, None)
                    if not leases:
                        del self._leases[charge.key]

    def _settle(self, grant: Grant, index: int, delta: float, now: float) -> None:
        """Give back unused units from the charge's slice, or add extra ones at `now`."""
        charge = grant.charges[index]
        slice_index = grant.slices[index]
        if not isinstance(charge, WindowCharge) or slice_index is None or not delta:
            return
        windows = self._windows.setdefault(charge.period, {})
        window = windows.get(charge.key)
        if delta > 0:
            window = windows.pop(charge.key, None) or _Window()
            window.expire(oldest_counted(now, charge.period))
            window.add(slice_of(now, charge.period), delta)
            windows[charge.key] = window
            return
        if window is None:
            return
        for entry in window.slices:
            if entry[0] == slice_index:
                entry[1] += delta
                window.total += delta
                return

    async def usage(self, charges: Sequence[Charge], now: float) -> list[float]:
        """Return the units or slots in use under each charge's key."""
        return [self._used(charge, now) for charge in charges]

    async def time_mark(self) -> float | None:
        """Return the latest time a charge was taken at."""
        return self._mark

    async def aclose(self) -> None:
        """Nothing to close."""

    def key_count(self) -> int:
        """Return how many keys the store holds, windows and leases together."""
        return sum(len(windows) for windows in self._windows.values()) + len(self._leases)

    def _check(self, index: int, charge: Charge, now: float) -> Rejection | None:
        if isinstance(charge, WindowCharge):
            window = self._windows.get(charge.period, {}).get(charge.key)
            if window is None:
                return window_rejection(index, charge, (), now)
            window.expire(oldest_counted(now, charge.period))
            if fits(window.total, charge.units, charge.limit):
                return None
            return window_rejection(index, charge, ((int(s), u) for s, u in window.slices), now)
        used = self._used(charge, now)
        if fits(used, 1, charge.limit):
            return None
        return Rejection(index=index, used=used, retry_after=1.0)

    def _used(self, charge: Charge, now: float) -> float:
        if isinstance(charge, WindowCharge):
            window = self._windows.get(charge.period, {}).get(charge.key)
            if window is None:
                return 0.0
            window.expire(oldest_counted(now, charge.period))
            return window.total
        leases = self._leases.get(charge.key, {})
        for lease, expiry in list(leases.items()):
            if expiry <= now:
                del leases[lease]
        return float(len(leases))

    def _sweep(self, now: float) -> None:
        for period, windows in self._windows.items():
            oldest = oldest_counted(now, period)
            while windows:
                key = next(iter(windows))
                window = windows[key]
                if window.slices and window.slices[-1][0] >= oldest:
                    break
                del windows[key]
