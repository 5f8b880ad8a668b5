"""A limit store in Redis, for several gateway replicas that share their limits.

Each call's checks and charges run in one Lua script, which Redis runs
atomically, so replicas cannot both take the last unit. A window is a hash of
slice -> units and a concurrency limit a sorted set of lease ids scored by
their expiry; every key expires on its own once its window has passed, so
Redis holds only the keys active in the last window.

Calls decided at the same moment are sent together in one pipeline, one
script run each, so a busy gateway pays one round trip for many decisions.
A lost connection fails the decisions in flight with `LimitStoreUnavailable`;
the next decision connects again. No redis exception leaves this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from mcp_guard.ratelimit.batching import DecisionBatcher
from mcp_guard.ratelimit.store import (
    SLICES,
    Charge,
    Grant,
    LeaseCharge,
    LimitStoreUnavailable,
    Rejection,
    WindowCharge,
    new_lease_id,
    oldest_counted,
    slice_of,
    slice_seconds,
)

# Seconds to wait for Redis before a decision fails (and, by default, the call is rejected).
SOCKET_TIMEOUT_SECONDS = 1.0

# How long the time mark outlives the last charge. It is longer than any window.
CLOCK_KEY_TTL_MS = 40 * 86_400 * 1000

# KEYS: the clock key, then one key per charge.
# ARGV: now, lease id, slices per window, then four values per charge (kind "w" for a window or "l"
# for a lease, limit, period or lease seconds, units), and last the clock key's TTL.
# Returns {1, slice, slice, ...} (slice -1 for a lease) or {0, index, used, retry_after} for the
# charge that does not fit with the longest wait.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local lease = ARGV[2]
local slices = tonumber(ARGV[3])
local count = #KEYS - 1
local rejected = nil
local function reject(index, used, retry)
  if rejected == nil or retry > rejected[4] then
    rejected = {0, index, used, retry}
  end
end
local function fits(used, units, limit)
  return used + units <= limit * (1 + 1e-9) + 1e-9
end
for i = 1, count do
  local key = KEYS[i + 1]
  local base = 3 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local span = tonumber(ARGV[base + 3])
  local units = tonumber(ARGV[base + 4])
  if kind == 'w' then
    local width = span / slices
    local oldest = math.floor((now - span) / width)
    local fields = redis.call('HGETALL', key)
    local used = 0
    local live = {}
    for j = 1, #fields, 2 do
      local slice = tonumber(fields[j])
      local value = tonumber(fields[j + 1])
      if slice < oldest then
        redis.call('HDEL', key, fields[j])
      else
        used = used + value
        live[#live + 1] = {slice, value}
      end
    end
    if not fits(used, units, limit) then
      table.sort(live, function(a, b) return a[1] < b[1] end)
      local remaining = used
      local retry = span
      for _, entry in ipairs(live) do
        remaining = remaining - entry[2]
        if fits(remaining, units, limit) then
          retry = (entry[1] + 1) * width + span - now
          break
        end
      end
      reject(i - 1, used, retry)
    end
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
    local used = redis.call('ZCARD', key)
    if not fits(used, 1, limit) then
      reject(i - 1, used, 1)
    end
  end
end
if rejected ~= nil then
  return {0, rejected[2], tostring(rejected[3]), tostring(rejected[4])}
end
local taken = {1}
for i = 1, count do
  local key = KEYS[i + 1]
  local base = 3 + (i - 1) * 4
  local span = tonumber(ARGV[base + 3])
  if ARGV[base + 1] == 'w' then
    local width = span / slices
    local slice = string.format('%d', math.floor(now / width))
    redis.call('HINCRBYFLOAT', key, slice, ARGV[base + 4])
    redis.call('PEXPIRE', key, string.format('%d', math.ceil((span + width) * 1000) + 1000))
    taken[#taken + 1] = slice
  else
    redis.call('ZADD', key, string.format('%.6f', now + span), lease)
    -- The set lives as long as its longest lease, so a short call never cuts a long call's slot.
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local keep = math.max(tonumber(last[2]) - now, span)
    redis.call('PEXPIRE', key, string.format('%d', math.ceil(keep * 1000) + 1000))
    taken[#taken + 1] = -1
  end
end
local mark = tonumber(redis.call('GET', KEYS[1]) or '0')
if now > mark then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4 + count * 4])
end
return taken
"""

# Settles a finished call. KEYS: one key per step. ARGV: the lease id, then five values per step.
# A lease step is "r" and four unused values, which removes the lease from its lease set. A window
# step is "s", the slice the charge went into, the units to add, the current slice and the
# window's lifetime in ms. Units given back leave their own slice, if the window still has it, and
# extra units go into the current slice.
_FINISH = """
local lease = ARGV[1]
for i = 1, #KEYS do
  local key = KEYS[i]
  local base = 1 + (i - 1) * 5
  if ARGV[base + 1] == 'r' then
    redis.call('ZREM', key, lease)
  else
    local delta = tonumber(ARGV[base + 3])
    if delta < 0 then
      if redis.call('HEXISTS', key, ARGV[base + 2]) == 1 then
        redis.call('HINCRBYFLOAT', key, ARGV[base + 2], ARGV[base + 3])
      end
    else
      redis.call('HINCRBYFLOAT', key, ARGV[base + 4], ARGV[base + 3])
      redis.call('PEXPIRE', key, ARGV[base + 5])
    end
  end
end
return 0
"""

# Sums the slices of KEYS[1] from ARGV[1] on.
_WINDOW_USAGE = """
local fields = redis.call('HGETALL', KEYS[1])
local used = 0
for j = 1, #fields, 2 do
  if tonumber(fields[j]) >= tonumber(ARGV[1]) then
    used = used + tonumber(fields[j + 1])
  end
end
return tostring(used)
"""


class RedisLimitStore:
    """Sliding windows and leases in Redis, shared by every gateway that uses the same key prefix."""

    def __init__(self, url: str, *, key_prefix: str, password: str | None = None) -> None:
        self.description = f"Redis at {url}"
        self._prefix = key_prefix
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            # One retry on a fresh connection covers a pooled connection that Redis closed while idle.
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self._acquire_script = self._client.register_script(_ACQUIRE)
        self._finish_script = self._client.register_script(_FINISH)
        self._usage_script = self._client.register_script(_WINDOW_USAGE)
        self._batcher: DecisionBatcher[tuple[Any, list[str], list[str]], Any] = DecisionBatcher(
            self._send_batch
        )

    async def acquire(self, charges: Sequence[Charge], now: float) -> Grant | Rejection:
        """Take every charge, or none of them, in one script run."""
        lease = new_lease_id()
        keys = [self._key("clock")] + [self._key(charge.key) for charge in charges]
        args: list[str] = [repr(float(now)), lease, str(SLICES)]
        for charge in charges:
            if isinstance(charge, WindowCharge):
                args += [
                    "w",
                    repr(float(charge.limit)),
                    repr(float(charge.period)),
                    repr(float(charge.units)),
                ]
            else:
                args += ["l", str(charge.limit), repr(float(charge.lease_seconds)), "1"]
        args.append(str(CLOCK_KEY_TTL_MS))
        reply = await self._batcher.submit((self._acquire_script, keys, args))
        if int(reply[0]) == 0:
            return Rejection(index=int(reply[1]), used=float(reply[2]), retry_after=max(float(reply[3]), 0.0))
        slices = tuple(None if int(value) < 0 else int(value) for value in reply[1:])
        return Grant(charges=tuple(charges), slices=slices, lease=lease)

    async def finish(self, grant: Grant, corrections: Mapping[int, float], now: float) -> None:
        """Settle the call's charges and remove its leases, in one script run."""
        keys: list[str] = []
        args: list[str] = [grant.lease]
        for index, delta in corrections.items():
            charge, slice_index = grant.charges[index], grant.slices[index]
            if not isinstance(charge, WindowCharge) or slice_index is None or not delta:
                continue
            keep_ms = math.ceil((charge.period + slice_seconds(charge.period)) * 1000) + 1000
            keys.append(self._key(charge.key))
            args += [
                "s",
                str(slice_index),
                repr(float(delta)),
                str(slice_of(now, charge.period)),
                str(keep_ms),
            ]
        for charge in grant.charges:
            if isinstance(charge, LeaseCharge):
                keys.append(self._key(charge.key))
                args += ["r", "", "", "", ""]
        if keys:
            await self._batcher.submit((self._finish_script, keys, args))

    async def usage(self, charges: Sequence[Charge], now: float) -> list[float]:
        """Return the units or slots in use under each charge's key."""
        used: list[float] = []
        try:
            for charge in charges:
                key = self._key(charge.key)
                if isinstance(charge, WindowCharge):
                    oldest = oldest_counted(now, charge.period)
                    used.append(float(await self._usage_script(keys=[key], args=[str(oldest)])))
                else:
                    used.append(float(await self._client.zcount(key, f"({now!r}", "+inf")))
        except RedisError as exc:
            raise LimitStoreUnavailable(self.description, _reason(exc)) from None
        return used

    async def time_mark(self) -> float | None:
        """Return the latest time any replica took a charge at."""
        try:
            value = await self._client.get(self._key("clock"))
        except RedisError as exc:
            raise LimitStoreUnavailable(self.description, _reason(exc)) from None
        return None if value is None else float(value)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._batcher.drain()
        await self._client.aclose()

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    async def _send_batch(self, batch: Sequence[tuple[Any, list[str], list[str]]]) -> list[Any]:
        """Run one script per decision or finished call, all in one pipeline."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for script, keys, args in batch:
                    await script(keys=keys, args=args, client=pipe)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            raise LimitStoreUnavailable(self.description, _reason(exc)) from None
        return [
            LimitStoreUnavailable(self.description, _reason(reply)) if isinstance(reply, Exception) else reply
            for reply in replies
        ]


def _reason(exc: Exception) -> str:
    """Describe a Redis error in one short line; the URL never contains a password, so neither does this."""
    text = str(exc).splitlines()[0].rstrip(". ") if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
