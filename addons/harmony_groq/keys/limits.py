"""Each key's counters: requests per minute, tokens per minute, requests in flight and Groq
tokens per UTC day, checked and taken in one step when a request comes in and settled to the
real usage when its reply is over.

Windows: requests in a sliding 60 s log (exactly ``rpm`` in any 60 s); tokens in one-second
buckets over the last 60 s, the request's estimate taken at admission and corrected to what
the reply used (``settle``); in-flight requests as leases that the proxy holding them
renews (a proxy that dies mid-request frees its leases within ``LEASE_SECONDS``); Groq tokens
per UTC day, counted from the replies.

``MemoryLimits`` counts for one proxy; ``RedisLimits`` counts for every proxy sharing the
store, each admission and each settlement one Lua script (atomic, on Redis's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from .book import Key

WINDOW = 60.0
DAY = 86400
LEASE_SECONDS = 60  # an in-flight lease not renewed for this long (its proxy died) ends
RENEW_SECONDS = 20


@dataclass(frozen=True)
class Verdict:
    """Admitted (``refused`` None) or why not; what the rate-limit headers say."""

    refused: str | None = None  # "requests" | "tokens" | "inflight" | "groq"
    retry_after: float = 0.0
    requests_left: int = -1  # -1: no such limit
    tokens_left: int = -1
    requests_reset: float = 0.0  # seconds until a request more fits
    tokens_reset: float = 0.0
    bucket: int = 0  # the second the token estimate was taken in


class Limits(Protocol):
    async def admit(self, key: Key, flow_id: str, estimate: int, to_groq: bool) -> Verdict: ...

    async def settle(self, key: Key, flow_id: str, bucket: int, estimate: int, tokens: int,
                     groq_tokens: int) -> None: ...


def _day_left(now: float) -> float:
    return DAY - now % DAY


@dataclass
class _Counters:
    requests: deque[float] = field(default_factory=deque)
    tokens: dict[int, int] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    groq: dict[int, int] = field(default_factory=dict)  # UTC day -> tokens


class MemoryLimits:
    """The counters in this process (``KEYS_FILE``: one proxy)."""

    def __init__(self) -> None:
        self.counters: dict[str, _Counters] = {}

    async def admit(self, key: Key, flow_id: str, estimate: int, to_groq: bool) -> Verdict:
        now = time.time()
        c = self.counters.setdefault(key.hash, _Counters())
        if key.max_inflight and len(c.in_flight) >= key.max_inflight:
            return Verdict("inflight", 1.0)
        if key.groq_tokens_per_day and to_groq and (
                c.groq.get(int(now // DAY), 0) >= key.groq_tokens_per_day):
            return Verdict("groq", _day_left(now))
        while c.requests and c.requests[0] <= now - WINDOW:
            c.requests.popleft()
        second = int(now)
        for old in [s for s in c.tokens if s <= now - WINDOW]:
            del c.tokens[old]
        used = sum(c.tokens.values())
        requests_reset = c.requests[0] + WINDOW - now if c.requests else 0.0
        tokens_reset = min(c.tokens) + WINDOW - now if c.tokens else 0.0
        if key.rpm and len(c.requests) >= key.rpm:
            return Verdict("requests", requests_reset, 0, _left(key.tpm, used),
                           requests_reset, tokens_reset)
        if key.tpm and used and used + estimate > key.tpm:
            return Verdict("tokens", tokens_reset, _left(key.rpm, len(c.requests)),
                           _left(key.tpm, used), requests_reset, tokens_reset)
        if key.rpm:
            c.requests.append(now)
        if key.tpm:
            c.tokens[second] = c.tokens.get(second, 0) + estimate
        if key.max_inflight:
            c.in_flight.add(flow_id)
        return Verdict(None, 0.0, _left(key.rpm, len(c.requests)),
                       _left(key.tpm, used + estimate), requests_reset, tokens_reset, second)

    async def settle(self, key: Key, flow_id: str, bucket: int, estimate: int, tokens: int,
                     groq_tokens: int) -> None:
        c = self.counters.setdefault(key.hash, _Counters())
        if key.tpm and bucket in c.tokens:
            c.tokens[bucket] += tokens - estimate
        c.in_flight.discard(flow_id)
        if groq_tokens:
            day = int(time.time() // DAY)
            c.groq[day] = c.groq.get(day, 0) + groq_tokens
            for old in [d for d in c.groq if d < day]:
                del c.groq[old]


def _left(limit: int, used: int) -> int:
    return max(limit - used, 0) if limit else -1


# KEYS: requests (zset), tokens (hash second -> tokens), in flight (zset), Groq tokens today.
# ARGV: flow id, rpm, tpm, max in flight, estimate, lease ms, Groq limit (0: not checked).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local second = tonumber(t[1])
local rpm, tpm, maxin = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local estimate, lease, groq = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if maxin > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxin then return {'inflight', 1000, -1, -1, 0, 0, 0} end
end
if groq > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= groq then
  return {'groq', 86400000 - now % 86400000, -1, -1, 0, 0, 0}
end
local requests, rreset = 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  requests = redis.call('ZCARD', KEYS[1])
  if requests > 0 then
    rreset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + 60000 - now
  end
end
local used, treset = 0, 0
if tpm > 0 then
  local buckets, oldest = redis.call('HGETALL', KEYS[2]), nil
  for i = 1, #buckets, 2 do
    local s = tonumber(buckets[i])
    if s <= second - 60 then
      redis.call('HDEL', KEYS[2], buckets[i])
    else
      used = used + tonumber(buckets[i + 1])
      if oldest == nil or s < oldest then oldest = s end
    end
  end
  if oldest then treset = (oldest + 60) * 1000 - now end
end
local function left(limit, n) if limit > 0 then return math.max(limit - n, 0) end return -1 end
if rpm > 0 and requests >= rpm then
  return {'requests', rreset, 0, left(tpm, used), rreset, treset, 0}
end
if tpm > 0 and used > 0 and used + estimate > tpm then
  return {'tokens', treset, left(rpm, requests), left(tpm, used), rreset, treset, 0}
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 61000)
  requests = requests + 1
end
if tpm > 0 then
  redis.call('HINCRBY', KEYS[2], second, estimate)
  redis.call('PEXPIRE', KEYS[2], 61000)
  used = used + estimate
end
if maxin > 0 then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], lease)
end
return {'ok', 0, left(rpm, requests), left(tpm, used), rreset, treset, second}
"""
# KEYS as for ADMIT; ARGV: flow id, bucket, correction (tokens - estimate), Groq tokens.
SETTLE = """
local t = redis.call('TIME')
local day = math.floor(tonumber(t[1]) / 86400)
if tonumber(ARGV[3]) ~= 0 and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], ARGV[3])
end
redis.call('ZREM', KEYS[3], ARGV[1])
if tonumber(ARGV[4]) > 0 then
  local total = KEYS[4] .. ':' .. day
  redis.call('INCRBY', total, ARGV[4])
  redis.call('EXPIRE', total, 172800)
end
return 1
"""
# KEYS: in flight (zset); ARGV: lease ms, then the flow ids this proxy holds.
RENEW = """
local t = redis.call('TIME')
local lease = tonumber(ARGV[1])
local untl = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', untl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""


def _redis_keys(key: Key, day: int | None = None) -> list[str]:
    base = f"hgg:v1:limit:{key.hash}"
    groq = f"{base}:groq"
    return [f"{base}:rpm", f"{base}:tpm", f"{base}:inflight",
            groq if day is None else f"{groq}:{day}"]


class RedisLimits:
    """The counters in the state store's Redis, shared by every proxy using it. A store that
    cannot answer admits the request (the limits are not worth an outage) and says so."""

    def __init__(self, client) -> None:  # noqa: ANN001 - redis.asyncio.Redis
        self.client = client
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._renew = client.register_script(RENEW)
        self.leases: dict[str, Key] = {}  # flow id -> its key, for the in-flight limit
        self._renewer: asyncio.Task | None = None

    async def admit(self, key: Key, flow_id: str, estimate: int, to_groq: bool) -> Verdict:
        groq = key.groq_tokens_per_day if to_groq else 0
        # The day's Groq counter is named by Redis's clock inside SETTLE; this proxy's clock
        # names it here (the same UTC day but within clock skew of midnight).
        result = await self._admit(
            _redis_keys(key, int(time.time() // DAY)),
            [flow_id, key.rpm, key.tpm, key.max_inflight, estimate, LEASE_SECONDS * 1000, groq])
        refused = result[0].decode() if isinstance(result[0], bytes) else result[0]
        if refused == "ok" and key.max_inflight:
            self.leases[flow_id] = key
            if self._renewer is None or self._renewer.done():
                self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())
        ms = [int(n) for n in result[1:]]
        return Verdict(None if refused == "ok" else refused, ms[0] / 1000, ms[1], ms[2],
                       ms[3] / 1000, ms[4] / 1000, ms[5])

    async def settle(self, key: Key, flow_id: str, bucket: int, estimate: int, tokens: int,
                     groq_tokens: int) -> None:
        self.leases.pop(flow_id, None)
        await self._settle(_redis_keys(key), [flow_id, bucket, tokens - estimate, groq_tokens])

    async def _renew_leases(self) -> None:
        """Every ``RENEW_SECONDS``, this proxy's leases on in-flight slots are extended."""
        while self.leases:
            await asyncio.sleep(RENEW_SECONDS)
            by_key: dict[str, tuple[Key, list[str]]] = {}
            for flow_id, key in list(self.leases.items()):
                by_key.setdefault(key.hash, (key, []))[1].append(flow_id)
            for key, flows in by_key.values():
                with contextlib.suppress(Exception):  # the next round tries again
                    await self._renew([_redis_keys(key)[2]], [LEASE_SECONDS * 1000, *flows])

    def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()


def retry_seconds(verdict: Verdict) -> int:
    return max(1, math.ceil(verdict.retry_after))
