"""A fair share of a pool's replicas between keys (people, keys/), per proxy.

A pool's capacity is ``SPILLOVER_MAX_INFLIGHT`` requests per replica that is up: the same
line past which spill-over calls a replica full. The pool is full when the requests on its
replicas (``Replica.load``: this proxy's in flight, or the engine's own count of every
client's requests where it reports one) reach that capacity. A key's share is the capacity
divided by the keys active at this proxy (requests in flight or waiting, or one that ended
in the last ``ACTIVE_SECONDS``); a key alone may use everything, beyond the capacity too, as
before keys existed.

When the pool is full, a request of a key that holds its share or more waits here, in a
queue of at most ``FAIR_SHARE_QUEUE`` requests per pool, while a key below its share goes at
once; a freed slot goes to the waiting request whose key holds fewest (then the oldest).
The engine queues nothing from the heavy key beyond the capacity, so a light key's request
starts at once (the engine's own limit, vLLM's ``max_num_seqs``, being above the capacity).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ProxyError
from .pool import ReplicaPool

# How often a waiting request looks at the engines' counts again; a slot this proxy frees
# wakes the queue at once.
RECHECK_SECONDS = 0.5
# A key counts as active this long after its last request ended: a person sending one request
# after another is not absent between them (else the heavy key, "alone" for a moment, would
# fill the engine's queue again each time).
ACTIVE_SECONDS = 5.0


@dataclass
class _Waiter:
    key: str
    seq: int
    admitted: asyncio.Future


@dataclass
class _Share:
    held: Counter[str] = field(default_factory=Counter)
    waiting: list[_Waiter] = field(default_factory=list)
    ended: dict[str, float] = field(default_factory=dict)  # key -> when its last request ended

    def active(self, key: str) -> int:
        """The keys with requests here, waiting, or ended within ``ACTIVE_SECONDS``."""
        since = time.monotonic() - ACTIVE_SECONDS
        for gone in [k for k, at in self.ended.items() if at < since]:
            del self.ended[gone]
        return len(set(self.held) | {w.key for w in self.waiting} | set(self.ended) | {key})


class FairShare:
    """``enter`` before a request takes a replica, ``leave`` when it is over."""

    def __init__(self, slots: Callable[[], int], queue: Callable[[], int]) -> None:
        self.slots = slots  # per replica: SPILLOVER_MAX_INFLIGHT
        self.queue = queue  # FAIR_SHARE_QUEUE; 0: fair share off
        self.shares: dict[int, _Share] = {}
        self.entered: dict[str, tuple[ReplicaPool, str]] = {}
        self._seq = itertools.count()

    def _capacity(self, pool: ReplicaPool) -> int:
        return self.slots() * max(len(pool.up()), 1)

    def _below(self, pool: ReplicaPool, share: _Share, key: str) -> bool:
        active = share.active(key)
        return active >= 2 and share.held[key] < self._capacity(pool) / active

    def _must_wait(self, pool: ReplicaPool, share: _Share, key: str, queued: bool) -> bool:
        if share.active(key) < 2 or self._below(pool, share, key):
            return False  # alone: everything; below its share: goes first
        load = max(sum(r.load for r in pool.up()), sum(share.held.values()))
        return load >= self._capacity(pool) or (not queued and bool(share.waiting))

    def below_share(self, pool: ReplicaPool, key: str) -> bool:
        """Whether ``key`` holds less than its share while other keys are active (spill-over
        keeps such a request local when the pool is full)."""
        return bool(self.queue()) and self._below(pool, self.shares.get(id(pool)) or _Share(),
                                                  key)

    async def enter(self, flow_id: str, pool: ReplicaPool, key: str, timeout: float) -> float:
        """Take a slot of ``pool`` for ``key``'s request (waiting if it must); the seconds
        it waited. Raises a 503 when the queue is full or the wait passes ``timeout``."""
        if not self.queue():
            return 0.0
        share = self.shares.setdefault(id(pool), _Share())
        waited = 0.0
        if self._must_wait(pool, share, key, queued=False):
            if len(share.waiting) >= self.queue():
                raise ProxyError(503, "Every local model server is busy and this key holds "
                                 "more than its share of them; retry shortly.",
                                 code="fair_share_queue_full")
            waited = await self._wait(pool, share, key, timeout)
        else:
            share.held[key] += 1
        self.entered[flow_id] = (pool, key)
        return waited

    async def _wait(self, pool: ReplicaPool, share: _Share, key: str, timeout: float) -> float:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(key, next(self._seq), loop.create_future())
        share.waiting.append(waiter)
        started = loop.time()
        try:
            while not waiter.admitted.done():
                if loop.time() - started > timeout:
                    raise ProxyError(503, f"Waited {timeout:g} s for a fair share of the "
                                     "local model servers; retry shortly.",
                                     code="fair_share_timeout")
                await asyncio.wait([waiter.admitted], timeout=RECHECK_SECONDS)
                self._wake(pool, share)
        except BaseException:
            if waiter in share.waiting:
                share.waiting.remove(waiter)
            elif waiter.admitted.done():  # admitted as it gave up (a client gone): not held
                self._release(pool, share, key)
            raise
        return loop.time() - started

    def _wake(self, pool: ReplicaPool, share: _Share) -> None:
        """Admit waiting requests, the key holding fewest first, while they need not wait."""
        for waiter in sorted(share.waiting, key=lambda w: (share.held[w.key], w.seq)):
            if waiter.admitted.done():
                continue
            if self._must_wait(pool, share, waiter.key, queued=True):
                break
            share.waiting.remove(waiter)
            share.held[waiter.key] += 1
            waiter.admitted.set_result(None)

    def leave(self, flow_id: str) -> None:
        entered = self.entered.pop(flow_id, None)
        if entered is None:
            return
        pool, key = entered
        self._release(pool, self.shares[id(pool)], key)

    def _release(self, pool: ReplicaPool, share: _Share, key: str) -> None:
        share.held[key] -= 1
        if share.held[key] <= 0:
            del share.held[key]
        share.ended[key] = time.monotonic()
        self._wake(pool, share)
