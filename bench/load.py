"""Load loops, each bounded in request count and in time.

Every worker holds one keep-alive connection, sends one unmeasured warm-up request, then
takes requests from a shared budget until it is spent or the deadline passes.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from httpclient import Connection, Response, Target

# The completion's token count in the last event: chat's usage, or Responses'/Anthropic's.
_COMPLETION_TOKENS = re.compile(rb'"(?:completion_tokens|output_tokens)":\s*(\d+)')


class LoadError(RuntimeError):
    """A request through a target failed: the numbers would be meaningless."""


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    tokens: int = 0
    first_delta: list[float] = field(default_factory=list)
    warmups: int = 0
    reopened: int = 0  # requests resent because the server had closed a kept-alive connection

    def __add__(self, other: LoadResult) -> LoadResult:
        return LoadResult(self.latencies + other.latencies, self.elapsed + other.elapsed,
                          self.tokens + other.tokens, self.first_delta + other.first_delta,
                          self.warmups + other.warmups, self.reopened + other.reopened)

    @property
    def sent(self) -> int:
        """Every request made, warm-ups included: what the servers' CPU time was spent on."""
        return len(self.latencies) + self.warmups

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return 1000 * statistics.median(self.latencies)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed


def check(response: Response, target: Target, expect: bytes) -> None:
    if response.status != 200 or expect not in response.body:
        raise LoadError(f"{target.name}: HTTP {response.status}: {response.body[:300]!r}")


async def _drive(connections: list[Connection], worker: Any, result: LoadResult) -> None:
    """Run one worker per connection to the end, close them, record elapsed and reopened."""
    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    result.elapsed = time.perf_counter() - started
    result.reopened = sum(connection.reopened for connection in connections)


async def run_load(target: Target, body: bytes, expect: bytes, *, concurrency: int,
                   count: int, seconds: float) -> LoadResult:
    """Non-streaming requests: latency of each and requests/s over the run."""
    result = LoadResult(warmups=concurrency)
    budget = [count]
    connections = [Connection(target) for _ in range(concurrency)]
    for connection in connections:
        check(await connection.post(body), target, expect)
    deadline = time.perf_counter() + seconds

    async def worker(connection: Connection) -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            response = await connection.post(body)
            check(response, target, expect)
            result.latencies.append(response.seconds)

    await _drive(connections, worker, result)
    return result


_FIRST_DELTA = re.compile(
    rb'"(?:reasoning|reasoning_content)": "|"content": "[^"]'  # chat (its role chunk has "")
    rb'|"type": "response\.(?:reasoning_text|output_text)\.delta"'  # Responses
    rb'|"(?:thinking|text)_delta"')  # Anthropic Messages


def is_first_delta(data: bytes, index: int) -> bool:
    """A proxy chunk that carries generated text (the chunks before it, chat's role chunk,
    Responses' created/item-added events, Anthropic's message_start and block start, have
    none)."""
    return _FIRST_DELTA.search(data) is not None


def nth_chunk(n: int) -> Callable[[bytes, int], bool]:
    """For the bare backend: its ``n``-th event is the token the first delta is made of."""
    return lambda data, index: index == n


async def run_streams(target: Target, body: bytes, *, concurrency: int, count: int,
                      seconds: float,
                      first_delta: Callable[[bytes, int], bool] = is_first_delta
                      ) -> LoadResult:
    """Streams: tokens (from the last event's usage) per second and time to first delta."""
    result = LoadResult()
    budget = [count]
    connections = [Connection(target) for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    async def one(connection: Connection) -> None:
        started = time.perf_counter()
        seen: list[float] = []
        chunks = [0]

        def on_chunk(data: bytes) -> None:
            if not seen and first_delta(data, chunks[0]):
                seen.append(time.perf_counter() - started)
            chunks[0] += 1

        response = await connection.post(body, on_chunk)
        tail = response.body[-2000:]
        tokens = _COMPLETION_TOKENS.findall(tail)
        if response.status != 200 or not tokens or not seen or b'"error": {' in tail:
            raise LoadError(f"{target.name}: HTTP {response.status}: {tail[-300:]!r}")
        result.tokens += int(tokens[-1])
        result.latencies.append(response.seconds)
        result.first_delta.append(seen[0])

    async def worker(connection: Connection) -> None:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            await one(connection)

    await _drive(connections, worker, result)
    return result
