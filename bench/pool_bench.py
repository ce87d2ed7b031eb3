"""Part 6 of the benchmark, the replica pool: the routing replay against an oracle, the
router's own cost, and killing one of 4 replicas under 32 streams (``--only pool``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from md_table import table, verdict
from pool_kill import CLIENTS, KillResult, kill_one_of_four
from pool_replay import (
    DECODE_S,
    ENGINE_CACHE_TOKENS,
    PREFILL_TOKENS_PER_S,
    PRIVATE_TOKENS,
    REPLICAS,
    SYSTEM_TOKENS,
    TURN_TOKENS,
    ReplayRow,
    RoutingCost,
    replay_all,
)


@dataclass
class PoolResults:
    replay: list[ReplayRow]
    cost: RoutingCost
    kill: KillResult
    conversations: int
    turns: int


def routing_cost_alone() -> RoutingCost:
    """``routing_cost`` in a process of its own: here, the threads draining the servers'
    output would take the GIL for up to its 5 ms switch interval in the middle of a call."""
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "pool_replay.py")],
                          capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return RoutingCost(**json.loads(done.stdout.strip().splitlines()[-1]))


async def pool_phase(setup, results) -> None:  # noqa: ANN001 - phases.Setup, phases.Results
    quick = setup.budget.seconds < 10
    conversations, turns = 32, 20
    replay = await asyncio.to_thread(replay_all, conversations, turns)
    cost = await asyncio.to_thread(routing_cost_alone)
    kill = await asyncio.to_thread(kill_one_of_four, 5.0 if quick else 10.0)
    results.pool = PoolResults(replay, cost, kill, conversations, turns)


def pool_section(pool: PoolResults) -> list[str]:
    by = {row.policy: row for row in pool.replay}
    lines = ["## 7. Replica pool", "",
             f"### Routing replay: {pool.conversations} agent conversations × {pool.turns} "
             f"turns over {REPLICAS} replicas", "",
             f"Each conversation: a {SYSTEM_TOKENS}-token shared system prompt, "
             f"{PRIVATE_TOKENS} tokens of its own context, {TURN_TOKENS} more per turn; each "
             f"replica's prefix cache holds {ENGINE_CACHE_TOKENS:,} tokens (LRU of 16-token "
             f"blocks); TTFT = uncached tokens at {PREFILL_TOKENS_PER_S:,}/s, slowed by "
             f"the other requests in flight, then {DECODE_S:.0f} s of decoding. Simulated "
             "(bench/pool_replay.py): the same numbers on any machine.", ""]
    lines += table(["policy", "requests", "cached-token ratio", "TTFT p50 s", "TTFT p95 s",
                    "busiest replica / mean load"],
                   [[r.policy, r.requests, f"{r.cached_ratio:.3f}", f"{r.ttft_p50:.3f}",
                     f"{r.ttft_p95:.3f}", f"{r.max_load:.2f}"] for r in pool.replay])
    aware, oracle, robin = by["cache_aware"], by["oracle"], by["round_robin"]
    lines += [
        f"- cache_aware: {aware.cached_ratio / oracle.cached_ratio:.2f}× the oracle's cached "
        f"ratio (goal ≥ 0.9: {verdict(aware.cached_ratio >= 0.9 * oracle.cached_ratio)}), "
        f"{aware.cached_ratio / robin.cached_ratio:.2f}× round robin's (goal ≥ 2: "
        f"{verdict(aware.cached_ratio >= 2 * robin.cached_ratio)}), busiest replica "
        f"{aware.max_load:.2f}× the mean (goal ≤ 1.5: {verdict(aware.max_load <= 1.5)})", ""]
    cost = pool.cost
    total = cost.choose_us_p50 + cost.hash_us_per_1k * cost.prompt_tokens / 1000
    lines += [f"### The router's cost at {cost.replicas} replicas", "",
              f"- choosing (matching the prompt against every replica's estimate, scoring, "
              f"recording): p50 {cost.choose_us_p50:.0f} µs, p99 {cost.choose_us_p99:.0f} µs "
              f"for a {cost.prompt_tokens:,}-token prompt (goal < 200 µs: "
              f"{verdict(cost.choose_us_p50 < 200)})",
              f"- hashing the prompt's blocks: {cost.hash_us_per_1k:.1f} µs per 1,000 tokens; "
              f"both for this prompt: {total:.0f} µs", ""]
    kill = pool.kill
    broken_ok = kill.resumed_identical / kill.broken if kill.broken else 1.0
    last = ("none after" if kill.last_sent_to_dead_s is None
            else f"{kill.last_sent_to_dead_s:.2f} s after")
    back = "never" if kill.back_in_s is None else f"{kill.back_in_s:.2f} s"
    again = "never" if kill.serving_again_s is None else f"{kill.serving_again_s:.2f} s"
    lines += [f"### Killing one of 4 replicas under {CLIENTS} streams", "",
              "Through mitmdump (bench/pool_kill.py): fake vLLM replicas, each stream ~50 "
              "tokens; one replica killed (refused, its streams reset) and healed later, then "
              "each other one killed for a moment in turn.", ""]
    lines += table(["requests", "errors before the first token", "errors after it",
                    "wrong text", "broken streams", "resumed, identical text",
                    "failed over before the first token"],
                   [[kill.requests, kill.errors_before_start, kill.errors_after_start,
                     kill.wrong_text, kill.broken, kill.resumed_identical, kill.failed_over]])
    lines += [
        f"- 0 errors for requests not yet streaming: "
        f"{verdict(kill.errors_before_start == 0)}; broken streams resumed with identical "
        f"text {100 * broken_ok:.1f} % (goal ≥ 99 %: {verdict(broken_ok >= 0.99)})",
        f"- last request sent to the dead replica: {last} the kill (goal within 2 s: "
        f"{verdict(kill.last_sent_to_dead_s is None or kill.last_sent_to_dead_s <= 2)}); "
        f"back in /health {back} after healing, serving again after {again} (goal ≤ 5 s: "
        f"{verdict(kill.back_in_s is not None and kill.back_in_s <= 5)})", ""]
    return lines
