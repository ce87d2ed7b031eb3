"""Routing replay: multi-turn agent conversations over 4 simulated replicas, in process.

Every conversation has its own context (a shared system prompt, then private files, then a
tool-call exchange appended per turn); it sends a turn, waits for the reply, thinks, sends the
next. Each request is routed by the pool's real code (``ReplicaPool.choose``: cache_aware,
least_loaded, round_robin) or by the oracle (each conversation always on its own replica), and
served by a simulated engine: an exact LRU of 16-token blocks per replica (what vLLM's prefix
cache keeps), a prefill model (uncached prompt tokens at ``PREFILL_TOKENS_PER_S``, slowed by
the other requests in flight on that replica) and a fixed decode time. Counts and simulated
seconds, not wall time: the same on any machine. Also the pool's own cost per request at 8
replicas, in wall time.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import json
import random
import statistics
import time
from dataclasses import dataclass

from harmony_groq.pool.pool import ReplicaPool
from harmony_groq.pool.prefix import BLOCK_TOKENS, block_hashes
from harmony_groq.replica_spec import ModelServers

from fakes_replicas import BlockCache

REPLICAS = 4
SYSTEM_TOKENS = 1_200
PRIVATE_TOKENS = 6_000
TURN_TOKENS = 600
ENGINE_CACHE_TOKENS = 160_000  # per replica: the conversations' fair share fits, all do not
PREFILL_TOKENS_PER_S = 20_000
CONTENTION = 0.15  # each other request in flight slows a prefill by this much
DECODE_S = 4.0
POLICIES = ("oracle", "cache_aware", "least_loaded", "round_robin")


@dataclass(frozen=True)
class ReplayRow:
    policy: str
    requests: int
    cached_ratio: float
    ttft_p50: float
    ttft_p95: float
    max_load: float  # busiest replica's requests over the mean


@dataclass(frozen=True)
class RoutingCost:
    replicas: int
    prompt_tokens: int
    choose_us_p50: float
    choose_us_p99: float
    hash_us_per_1k: float


class Engine(BlockCache):
    """A replica: its prefix cache, and the requests it has in flight."""

    def __init__(self) -> None:
        super().__init__(ENGINE_CACHE_TOKENS // BLOCK_TOKENS)
        self.in_flight = 0


def _ids(rng: random.Random, count: int) -> list[int]:
    return [rng.randrange(200_000) for _ in range(count)]


def replay(policy: str, conversations: int, turns: int, seed: int = 7) -> ReplayRow:
    rng = random.Random(seed)
    system = _ids(rng, SYSTEM_TOKENS)
    prompts = [system + _ids(rng, PRIVATE_TOKENS) for _ in range(conversations)]
    urls = tuple(f"http://replica-{i}" for i in range(REPLICAS))
    pool = ReplicaPool(ModelServers(None, "vllm", urls), policy if policy != "oracle"
                       else "round_robin")
    engines = [Engine() for _ in urls]
    events: list[tuple[float, int, int, int]] = []  # time, seq, conversation, replica or -1
    for c in range(conversations):
        heapq.heappush(events, (c * 0.2, len(events), c, -1))
    turn_of = [0] * conversations
    served = [0] * REPLICAS
    prompt_total = cached_total = 0
    ttfts: list[float] = []
    seq = len(events)
    while events:
        now, _, c, done_on = heapq.heappop(events)
        if done_on >= 0:  # a reply finished: the replica is free of it, the agent thinks
            engines[done_on].in_flight -= 1
            pool.replicas[done_on].in_flight -= 1
            turn_of[c] += 1
            if turn_of[c] < turns:
                prompts[c] += _ids(rng, TURN_TOKENS)
                heapq.heappush(events, (now + rng.uniform(0.5, 2.0), seq, c, -1))
                seq += 1
            continue
        prompt = prompts[c]
        hashes = block_hashes(prompt)
        if policy == "oracle":
            index = c % REPLICAS
        else:
            choice = pool.choose(hashes, len(prompt))
            assert choice is not None
            index = choice.replica.position
        engine = engines[index]
        cached = engine.serve(hashes)
        ttft = (len(prompt) - cached) / PREFILL_TOKENS_PER_S * (1 + CONTENTION * engine.in_flight)
        engine.in_flight += 1
        pool.replicas[index].in_flight += 1
        served[index] += 1
        prompt_total += len(prompt)
        cached_total += cached
        ttfts.append(ttft)
        heapq.heappush(events, (now + ttft + DECODE_S, seq, c, index))
        seq += 1
    ttfts.sort()
    mean = sum(served) / REPLICAS
    return ReplayRow(policy, len(ttfts), cached_total / prompt_total,
                     statistics.median(ttfts), ttfts[int(0.95 * (len(ttfts) - 1))],
                     max(served) / mean)


def routing_cost(replicas: int = 8, prompt_tokens: int = 20_000, calls: int = 2_000,
                 seed: int = 3) -> RoutingCost:
    """Wall time of ``ReplicaPool.choose`` (match against every replica's estimate, score,
    update the chosen one's) with warm indexes, and of hashing a prompt's blocks."""
    rng = random.Random(seed)
    urls = tuple(f"http://replica-{i}" for i in range(replicas))
    pool = ReplicaPool(ModelServers(None, "vllm", urls), "cache_aware")
    prompts = [_ids(rng, prompt_tokens) for _ in range(32)]
    hashed = [block_hashes(p) for p in prompts]
    for hashes in hashed:  # warm every replica's estimate with the conversations
        pool.choose(hashes, prompt_tokens)
    gc.collect()
    gc.freeze()  # the benchmark's own prompts are not the router's to traverse in a collection
    timings = []
    for n in range(calls):
        hashes = hashed[n % len(hashed)]
        started = time.perf_counter()
        pool.choose(hashes, prompt_tokens)
        timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    for prompt in prompts:
        block_hashes(prompt)
    hash_seconds = (time.perf_counter() - started) / len(prompts)
    gc.unfreeze()
    timings.sort()
    return RoutingCost(replicas, prompt_tokens, timings[len(timings) // 2] * 1e6,
                       timings[int(0.99 * (len(timings) - 1))] * 1e6,
                       hash_seconds * 1e6 / (prompt_tokens / 1000))


def replay_all(conversations: int, turns: int) -> list[ReplayRow]:
    return [replay(policy, conversations, turns) for policy in POLICIES]


if __name__ == "__main__":  # the router's cost, in a process of its own (pool_bench.py)
    print(json.dumps(dataclasses.asdict(routing_cost())))
