"""The Redis-protocol store (Redis >= 7, Valkey; one server, not a cluster): shared by every
proxy pointed at it, and kept across their restarts.

Entries are ``hgg:v1:<namespace>:<key>`` with a TTL. Each namespace's byte budget is kept by
a Lua script at write time: the entry's size goes into a hash and its write time into a sorted
set, and the oldest written entries go until the namespace fits (the bookkeeping keys have the
TTL of the longest-lived entry, so they go too when a namespace is idle). Entries that expired
on their own are still counted until the budget pushes them out: the count errs on the side of
keeping less.

redis-py's asyncio client: no call blocks the event loop. A read gives up after the hot-path
timeout; a write runs as a background task (at most ``MAX_PENDING_WRITES`` at once) with a
longer one. Until its write is done, an entry is read from the task (``writing``): a client's
next request to this proxy sees what its last reply stored, even while the write is still
connecting; another proxy sees it once the write is on the server, and the reply's end waits
for that (state/writes.py, at most the store's timeout).

A connection error or a timeout rests the store for ``RETRY_SECONDS``: calls in that time fail
at once (counted) instead of each waiting for the timeout; the next call after it tries again,
and a pooled connection the server dropped is reconnected once per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..redact import redact_text
from ..store_url import passwords_of, public_url
from .base import StoreUnavailable
from .codec import decode, encode, entry_key, meta_key
from .metrics import StoreMetrics

logger = logging.getLogger(__name__)
RETRY_SECONDS = 1.0
WRITE_TIMEOUT_SECONDS = 1.0
MAX_PENDING_WRITES = 1024

# KEYS: entry, index (zset id -> write time), sizes (hash id -> bytes), total bytes.
# ARGV: id, value, ttl ms, size, budget, entry key prefix.
PUT_SCRIPT = """
local id, ttl, size, budget = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local old = redis.call('HGET', KEYS[3], id)
if old then redis.call('DECRBY', KEYS[4], old) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000000 + now[2], id)
redis.call('HSET', KEYS[3], id, size)
local total = redis.call('INCRBY', KEYS[4], size)
while total > budget do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then break end
  local victim = oldest[1]
  total = redis.call('DECRBY', KEYS[4], tonumber(redis.call('HGET', KEYS[3], victim) or '0'))
  redis.call('HDEL', KEYS[3], victim)
  redis.call('DEL', ARGV[6] .. victim)
end
for i = 2, 4 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return total
"""
# KEYS as for PUT_SCRIPT; ARGV: id.
DELETE_SCRIPT = """
local existed = redis.call('DEL', KEYS[1])
local size = redis.call('HGET', KEYS[3], ARGV[1])
if size then
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DECRBY', KEYS[4], size)
end
return existed
"""


def _keys(namespace: str, key: str) -> list[str]:
    return [entry_key(namespace, key), meta_key(namespace, "index"),
            meta_key(namespace, "sizes"), meta_key(namespace, "bytes")]


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, budgets: Mapping[str, int], read_timeout: float,
                 metrics: StoreMetrics) -> None:
        self.shown = public_url(url)
        self.passwords = passwords_of(url)
        self.budgets = dict(budgets)
        self.read_timeout = read_timeout
        self.metrics = metrics
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=WRITE_TIMEOUT_SECONDS,
            socket_connect_timeout=WRITE_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_timeout=False)
        self._put = self.client.register_script(PUT_SCRIPT)
        self._delete = self.client.register_script(DELETE_SCRIPT)
        self.pending: set[asyncio.Task] = set()
        self.writing: dict[tuple[str, str], tuple[asyncio.Task, Any]] = {}
        self.resting_until = 0.0
        self.problem: str | None = None  # why the last call failed; None once one answered

    async def _call(self, namespace: str, op: str, call: Callable[[], Awaitable[Any]],
                    timeout: float) -> Any:
        if time.monotonic() < self.resting_until:
            self.metrics.failed(namespace, op, "resting")
            raise StoreUnavailable(self.problem)
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                result = await call()
        except (TimeoutError, RedisTimeoutError):
            self._failed(namespace, op, "timeout", f"no answer within {timeout * 1000:g} ms")
        except (RedisConnectionError, OSError) as exc:
            self._failed(namespace, op, "connection", str(exc))
        except RedisError as exc:  # the server answered with an error: no need to rest
            self._failed(namespace, op, "error", str(exc), rest=False)
        else:
            self.metrics.answered(namespace, op, time.perf_counter() - start)
            if self.problem is not None:
                logger.info("state store %s answers again", self.shown)
                self.problem = None
            return result
        raise StoreUnavailable(self.problem)

    def _failed(self, namespace: str, op: str, reason: str, detail: str,
                rest: bool = True) -> None:
        self.metrics.failed(namespace, op, reason)
        problem = redact_text(f"{reason}: {detail}", self.passwords)
        if self.problem is None:
            logger.warning("state store %s failed (%s); requests go on without it, retried "
                           "every %g s", self.shown, problem, RETRY_SECONDS)
        self.problem = problem
        if rest:
            self.resting_until = time.monotonic() + RETRY_SECONDS

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[Any | None]:
        local = [self.writing.get((namespace, key)) for key in keys]
        names = [entry_key(namespace, key) for key, own in zip(keys, local, strict=True)
                 if own is None]
        found = iter(await self._call(namespace, "get", lambda: self.client.mget(names),
                                      self.read_timeout) if names else ())
        return [own[1] if own is not None else
                (None if (value := next(found)) is None else decode(value)) for own in local]

    def put(self, namespace: str, key: str, value: Any, ttl_seconds: int
            ) -> asyncio.Task | None:
        if not self.budgets[namespace]:
            return None  # a budget of 0 keeps nothing (REASONING_MEMORY_BYTES=0)
        if len(self.pending) >= MAX_PENDING_WRITES:
            self.metrics.failed(namespace, "put", "backlog")
            return None
        try:
            task = asyncio.get_running_loop().create_task(
                self._write(namespace, key, value, ttl_seconds))
        except RuntimeError:  # no event loop: only outside mitmproxy
            self.metrics.failed(namespace, "put", "error")
            return None
        self.pending.add(task)
        self.writing[(namespace, key)] = (task, value)
        task.add_done_callback(lambda done: self._written(done, namespace, key))
        return task

    def _written(self, task: asyncio.Task, namespace: str, key: str) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: say so, go on
            logger.error("state store write failed", exc_info=task.exception())
        if self.writing.get((namespace, key), (None,))[0] is task:
            del self.writing[(namespace, key)]

    async def _write(self, namespace: str, key: str, value: Any, ttl_seconds: int) -> None:
        data, budget = encode(value), self.budgets[namespace]
        if len(data) > budget:
            return  # larger than the namespace's budget: not kept, as in memory
        args = [key, data, ttl_seconds * 1000, len(data), budget, entry_key(namespace, "")]
        with contextlib.suppress(StoreUnavailable):  # counted; lost, as if evicted
            await self._call(namespace, "put", lambda: self._put(_keys(namespace, key), args),
                             WRITE_TIMEOUT_SECONDS)

    async def delete(self, namespace: str, key: str) -> bool:
        own = self.writing.get((namespace, key))
        if own is not None:  # a write landing after the delete would bring the entry back
            await asyncio.wait([own[0]], timeout=WRITE_TIMEOUT_SECONDS)
        existed = await self._call(namespace, "delete",
                                   lambda: self._delete(_keys(namespace, key), [key]),
                                   self.read_timeout)
        return bool(existed)

    def resize(self, budgets: Mapping[str, int]) -> None:
        self.budgets = dict(budgets)

    async def health(self) -> dict[str, Any]:
        with contextlib.suppress(StoreUnavailable):  # the problem is kept for the answer
            await self._call("none", "ping", self.client.ping, self.read_timeout)
        status = "ok" if self.problem is None else "degraded"
        body: dict[str, Any] = {"kind": self.kind, "url": self.shown, "status": status,
                                "shared": True}
        if self.problem is not None:
            body["problem"] = self.problem
        return body

    async def close(self) -> None:
        if self.pending:
            await asyncio.wait(self.pending, timeout=WRITE_TIMEOUT_SECONDS)
        await self.client.aclose()
