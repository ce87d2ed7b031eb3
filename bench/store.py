"""Issue 20's measurements: what the shared state store (Redis on localhost) costs a request,
and whether chained Responses turns survive a round-robin split over two proxies.

Four proxies with the flow log off, two on the in-process store and two sharing one
``redis-server`` (started here, no persistence). *Overhead*: the same chained Responses request
(``previous_response_id``: one read of the stored response, one write of the new one) sent to
a memory proxy and a Redis proxy in turn, request by request (so a busy machine slows both
alike), one client each; the difference of the p50s is what the store adds. *Chains*: turns
that each continue the previous one, sent to the two proxies of a kind in turn: with memory
every turn's parent is on the other proxy.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpclient import Connection, Target
from load import LoadResult, check
from procs import Usage

from harmony_groq.state.memory import MemoryStore
from harmony_groq.state.metrics import StoreMetrics
from harmony_groq.state.redis_store import RedisStore

from redis_server import RedisServer

KINDS = ("memory", "redis")
BUDGETS = {"resp": 64 << 20, "reason": 16 << 20, "spill": 4 << 20}


@dataclass
class StoreSetup:
    redis: RedisServer
    targets: dict[str, list[Target]] = field(default_factory=dict)  # kind → proxies A and B


@dataclass
class StoreResult:
    latency: dict[str, LoadResult]  # kind → the chained request's latencies
    chained: dict[str, tuple[int, int]]  # kind → (turns answered 200, turns sent)
    redis_version: str
    usage: Usage  # while the latencies were measured: how busy the rest of the machine was
    calls_ms: dict[str, float]  # kind → p50 of one read + one write, timed in-process

    @property
    def paired_ms(self) -> float:
        """The median over the rounds of (Redis − memory): each pair ran back to back, so
        contention that comes and goes cancels out."""
        pairs = zip(self.latency["redis"].latencies, self.latency["memory"].latencies,
                    strict=True)
        return 1000 * statistics.median(redis - memory for redis, memory in pairs)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def turn_body(previous: str | None, n: int) -> bytes:
    body: dict = {"model": "gpt-oss-20b", "input": f"Turn {n}: what is 2+2?"}
    if previous is not None:
        body["previous_response_id"] = previous
    return json.dumps(body).encode()


async def _turn(connection: Connection, previous: str | None, n: int) -> str | None:
    """One turn; the new response's id, or ``None`` when it was refused."""
    response = await connection.post(turn_body(previous, n))
    if response.status != 200:
        return None
    return json.loads(response.body)["id"]


async def chained_turns(targets: list[Target], turns: int) -> tuple[int, int]:
    """``turns`` turns, each continuing the last one answered, on the targets in turn."""
    connections = [Connection(target) for target in targets]
    for connection in connections:
        await connection.open()
    try:
        previous = await _turn(connections[0], None, 0)
        ok = 0
        for n in range(1, turns + 1):
            answered = await _turn(connections[n % len(connections)], previous, n)
            if answered is not None:
                ok, previous = ok + 1, answered
        return ok, turns
    finally:
        for connection in connections:
            connection.close()


async def store_calls_ms(url: str, stored: dict[str, Any], count: int) -> dict[str, float]:
    """p50 of what a chained turn asks of the store, one read and one write (awaited here,
    a background task in the proxy), timed in this process: the store's own cost, without the
    scheduling of three processes that the through-the-proxy numbers include."""
    stores = {"memory": MemoryStore(BUDGETS),
              "redis": RedisStore(url, BUDGETS, 1.0, StoreMetrics())}
    out = {}
    for kind, store in stores.items():
        store.put("resp", "parent", stored, 3600)
        await asyncio.gather(*getattr(store, "pending", ()))
        timings = []
        for n in range(count):
            started = time.perf_counter()
            (parent,) = await store.get_many("resp", ["parent"])
            store.put("resp", f"child-{n}", parent, 3600)
            await asyncio.gather(*getattr(store, "pending", ()))
            timings.append(time.perf_counter() - started)
        out[kind] = 1000 * statistics.median(timings)
        await store.close()
    return out


async def stored_response(target: Target) -> dict[str, Any]:
    """What the proxy stored for the chained request's parent, as ``GET`` returns it, with
    the history of the same length (the value a chained turn reads)."""
    connection = Connection(target)
    await connection.open()
    try:
        parent = await _turn(connection, None, 0)
        assert parent is not None
    finally:
        connection.close()
    async with httpx.AsyncClient(trust_env=False) as client:
        response = (await client.get(f"http://127.0.0.1:{target.port}/v1/responses/{parent}",
                                     timeout=10)).json()
    return {"response": response, "history": [{"role": "user", "content": "Turn 0: what is "
                                                                          "2+2?"},
                                              *response["output"]]}


async def interleaved(targets: list[Target], count: int, seconds: float
                      ) -> list[LoadResult]:
    """The chained request on each target in turn (the order alternating), ``count`` times or
    for ``seconds``, whichever ends first; after one unmeasured warm-up each."""
    connections = [Connection(target) for target in targets]
    results = [LoadResult() for _ in targets]
    try:
        bodies = []
        for connection in connections:
            await connection.open()
            parent = await _turn(connection, None, 0)
            if parent is None:
                raise RuntimeError(f"{connection.target.name} refused the first turn")
            bodies.append(turn_body(parent, 1))
        for connection, body, result in zip(connections, bodies, results, strict=True):
            check(await connection.post(body), connection.target, b"2 + 2 = 4.")
            result.warmups += 1
        started = time.perf_counter()
        for n in range(count):
            if time.perf_counter() - started > seconds:
                break
            order = range(len(targets)) if n % 2 else range(len(targets) - 1, -1, -1)
            for i in order:
                response = await connections[i].post(bodies[i])
                check(response, connections[i].target, b"2 + 2 = 4.")
                results[i].latencies.append(response.seconds)
        for result in results:
            result.elapsed = time.perf_counter() - started
        return results
    finally:
        for connection in connections:
            connection.close()
