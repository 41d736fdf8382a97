"""The shared budget's state in Redis: one hash, and the one Lua script that reads and writes it.

This module decides nothing on its own account: the AIMD policy's constants come from
:mod:`ailab_async._aimd` and reach the script as arguments. The script applies them
atomically, on Redis's own clock (so the processes' clocks never have to agree); where its
policy still differs from the local one is listed in ``_aimd``'s docstring.
:class:`SharedBudget` is the script's Python face: one call per operation, nothing else
(the limiter that sleeps, batches successes and falls back is in ``_limiter.py``).
"""

from __future__ import annotations

from typing import Any

import attrs
import redis.asyncio as aioredis

from ..._aimd import (
    DECREASE_FACTOR,
    EVIDENCE_WINDOW,
    MIN_RATE,
    MIN_RECOVERY_PER_S,
    SHARED_RECOVERY_FRACTION,
    SHARED_UNKNOWN_DECREASE,
    capped_retry_after,
)

__all__ = ["Decision", "SharedBudget"]

# One script for every operation, so the state is only ever touched atomically, on Redis's
# clock. KEYS[1] is the budget's hash. ARGV: op, now ('' = Redis TIME; tests pass a value),
# ceiling, successes to add, sent_at, retry_after, then the policy (from _aimd): min_rate,
# decrease_factor, recovery_fraction, min_recovery_per_s, evidence_window,
# unknown_decrease; last ttl_seconds.
# Hash fields: next (next free send slot), floor / decreased_at / recovery (the rate right
# after the last decrease, when, and its linear recovery per second), ok_sec / ok_cur /
# ok_prev (successes in the current and the previous whole evidence window of Redis time;
# ok_sec numbers the window, named from when the window was always one second).
# Returns strings (Lua numbers would be truncated to integers): {wait, send_at, rate, now,
# decreased}.
_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local ceiling = tonumber(ARGV[3])
local successes = tonumber(ARGV[4])
local sent_at = tonumber(ARGV[5])
local retry_after = tonumber(ARGV[6])
local min_rate = tonumber(ARGV[7])
local decrease_factor = tonumber(ARGV[8])
local recovery_fraction = tonumber(ARGV[9])
local min_recovery = tonumber(ARGV[10])
local window = tonumber(ARGV[11])
local unknown_decrease = tonumber(ARGV[12])
local ttl = tonumber(ARGV[13])

local function num(v) if v then return tonumber(v) end return nil end
local s = redis.call('HMGET', key, 'next', 'floor', 'decreased_at', 'recovery',
                     'ok_sec', 'ok_cur', 'ok_prev')
local next_at = num(s[1]) or now
local floor = num(s[2])
local decreased_at = num(s[3])
local recovery = num(s[4]) or 0
local ok_sec = num(s[5])
local ok_cur = num(s[6]) or 0
local ok_prev = num(s[7]) or 0

local function rate_at(t)
  if not floor or not decreased_at then return ceiling end
  return math.min(ceiling, floor + recovery * math.max(0, t - decreased_at))
end

-- Roll the success counters to the current window, then add the new successes.
local sec = math.floor(now / window)
if not ok_sec then
  ok_sec, ok_cur, ok_prev = sec, 0, 0
elseif sec == ok_sec + 1 then
  ok_sec, ok_prev, ok_cur = sec, ok_cur, 0
elseif sec > ok_sec + 1 then
  ok_sec, ok_prev, ok_cur = sec, 0, 0
end
ok_cur = ok_cur + successes

local wait, send_at, decreased = 0, now, 0
if op == 'acquire' then
  local rate = rate_at(now)
  send_at = math.max(now, next_at)
  wait = send_at - now
  next_at = send_at + 1 / rate
elseif op == 'limited' then
  if retry_after > 0 then next_at = math.max(next_at, now + retry_after) end
  -- A request sent before the last decrease belongs to the congestion event already handled.
  if not (decreased_at and sent_at < decreased_at) then
    -- Successes per second over the last window: all of this window's, and the part of the
    -- previous window's that still lies within one window of now.
    local succeeding = (ok_prev * (1 - (now / window - sec)) + ok_cur) / window
    local current = rate_at(now)
    local new_rate
    if succeeding > 0 then
      new_rate = math.min(decrease_factor * succeeding, decrease_factor * current)
    else
      new_rate = current * unknown_decrease
    end
    new_rate = math.max(min_rate, new_rate)
    floor, decreased_at = new_rate, now
    recovery = math.max(min_recovery, recovery_fraction * new_rate)
    next_at = math.max(next_at, now + 1 / new_rate)
    decreased = 1
  end
end

if op ~= 'peek' then
  local function f(x) return string.format('%.17g', x) end
  local fields = {'next', f(next_at), 'recovery', f(recovery),
                  'ok_sec', f(ok_sec), 'ok_cur', f(ok_cur), 'ok_prev', f(ok_prev)}
  if floor then
    table.insert(fields, 'floor'); table.insert(fields, f(floor))
    table.insert(fields, 'decreased_at'); table.insert(fields, f(decreased_at))
  end
  redis.call('HSET', key, unpack(fields))
  -- Abandoned budgets vanish; a budget paused by a long Retry-After outlives the pause.
  local ttl_ms = math.ceil((math.max(0, next_at - now) + ttl) * 1000)
  redis.call('PEXPIRE', key, ttl_ms)
end
local function g(x) return string.format('%.17g', x) end
return {g(wait), g(send_at), g(rate_at(now)), g(now), tostring(decreased)}
"""


@attrs.frozen
class Decision:
    """What the shared budget answered: how long to wait for the slot, and the state."""

    #: Seconds to wait before sending (``acquire``; 0 otherwise).
    wait: float
    #: The reserved send time, on Redis's clock (``acquire``; ``now`` otherwise).
    send_at: float
    #: The shared rate now, in requests per second.
    rate: float
    #: Redis's clock when the script ran, in seconds since the epoch.
    now: float
    #: Whether a ``429`` report lowered the shared rate (``limited`` only).
    decreased: bool = False


def _parse(reply: Any) -> Decision:
    wait, send_at, rate, now, decreased = (_text(item) for item in reply)
    return Decision(float(wait), float(send_at), float(rate), float(now), decreased == "1")


def _text(item: Any) -> str:
    return item.decode() if isinstance(item, bytes) else str(item)


class SharedBudget:
    """The shared state's operations: one atomic script call each, nothing else.

    ``now`` overrides Redis's clock (tests of the script's decisions); leave it ``None``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        *,
        ceiling: float,
        min_rate: float = MIN_RATE,
        backoff_factor: float = DECREASE_FACTOR,
        recovery_fraction: float = SHARED_RECOVERY_FRACTION,
        min_recovery_per_s: float = MIN_RECOVERY_PER_S,
        ttl: float = 300.0,
    ) -> None:
        self.key = key
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._ceiling = ceiling
        # The policy, in the script's ARGV order after op .. retry_after.
        self._policy = [
            repr(min_rate),
            repr(backoff_factor),
            repr(recovery_fraction),
            repr(min_recovery_per_s),
            repr(EVIDENCE_WINDOW),
            repr(SHARED_UNKNOWN_DECREASE),
        ]
        self._ttl = ttl

    async def _run(
        self,
        op: str,
        *,
        successes: int = 0,
        sent_at: float = 0.0,
        retry_after: float | None = None,
        now: float | None = None,
    ) -> Decision:
        args = [
            op,
            "" if now is None else repr(now),
            repr(self._ceiling),
            str(successes),
            repr(sent_at),
            # Capped here too: SharedBudget may be driven directly, and the pause is shared.
            repr(capped_retry_after(retry_after) or 0.0),
            *self._policy,
            repr(self._ttl),
        ]
        reply = await self._script(keys=[self.key], args=args, client=self._client)
        return _parse(reply)

    async def reserve(self, *, successes: int = 0, now: float | None = None) -> Decision:
        """Claim the next shared send slot (adding ``successes`` first)."""
        return await self._run("acquire", successes=successes, now=now)

    async def add_successes(self, successes: int, *, now: float | None = None) -> Decision:
        """Count ``successes`` towards the account's succeeding rate."""
        return await self._run("success", successes=successes, now=now)

    async def rate_limited(
        self,
        sent_at: float,
        retry_after: float | None = None,
        *,
        successes: int = 0,
        now: float | None = None,
    ) -> Decision:
        """Report a ``429`` for a request sent at ``sent_at`` (Redis time)."""
        return await self._run(
            "limited", successes=successes, sent_at=sent_at, retry_after=retry_after, now=now
        )

    async def peek(self, *, now: float | None = None) -> Decision:
        """The shared rate now, changing nothing (also the reconnection probe)."""
        return await self._run("peek", now=now)
