"""The routing replay against real replicas: 4 real ``llama-server``s (tiny gpt-oss model, CPU)
behind the real mitmdump, one proxy per policy, the cached-token ratio taken from the servers'
own ``timings.cache_n`` (the flow log's cached tokens), not from a model of a cache.

Each server: one slot (``-np 1``), ``--swa-full``, one thread, llama.cpp's default host-memory
prompt cache (``--cache-ram``: a slot's prompt is saved when another conversation takes the
slot, and restored for a prompt that continues it). Replies are FINAL_SCRIPT, forced by a
grammar on the servers' command line. Conversations run concurrently, each turn after the
previous reply and a seeded random pause; every loop is bounded (``CONVERSATIONS`` ×
``TURNS`` requests per policy). The oracle sends each conversation through a proxy of its own
replica alone.
"""

from __future__ import annotations

import concurrent.futures
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from llamacpp import harness
from proxy_process import ProxyProcess
from realserver.build_tiny_model import FINAL_SCRIPT

REPLICAS = 4
CONVERSATIONS = 7  # not a multiple of REPLICAS: a round would bring each back to its replica
TURNS = 5
MODEL = "gpt-oss-20b"
NO_GROQ = "http://127.0.0.1:9/openai/v1"
POLICIES = ("oracle", "cache_aware", "least_loaded", "round_robin")
SYSTEM = "You are a careful coding agent. Read the files, then answer briefly. " * 3
ANSWER = "Hello from tiny."


@dataclass(frozen=True)
class RealReplayRow:
    policy: str
    requests: int
    prompt_tokens: int
    cached_tokens: int  # the servers' own timings.cache_n, summed
    latency_p50: float  # seconds per request (wall time, whole reply)
    max_load: float  # busiest replica's requests over the mean

    @property
    def cached_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _messages(conversation: int, turn: int) -> list[dict[str, str]]:
    """A shared system prompt, the conversation's own ~900-token context, ``turn`` exchanges."""
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Project {conversation}: "
                 + f"file{conversation}.py holds function f{conversation}. " * 90}]
    for n in range(turn):
        messages += [{"role": "assistant", "content": ANSWER},
                     {"role": "user", "content": f"Now step {n + 1} of project {conversation}."}]
    return messages


def _proxy(work: Path, name: str, urls: list[str], policy: str) -> ProxyProcess:
    (work / name).mkdir()
    return ProxyProcess(work / name, upstream=urls[0], options={
        "backend": "llamacpp", "transformers_url": ",".join(urls), "routing": policy,
        "groq_base_url": NO_GROQ, "upstream_timeout": "120"})


def _run_policy(binary: Path, model: Path, work: Path, policy: str) -> RealReplayRow:
    """Fresh servers (empty caches) and proxy(ies); every conversation, turn by turn."""
    servers = harness.start_servers(binary, model, work / f"servers-{policy}", REPLICAS,
                                    script=FINAL_SCRIPT, threads=1)
    urls = [s.url for s in servers]
    proxies: list[ProxyProcess] = []
    try:
        if policy == "oracle":
            proxies = [_proxy(work, f"{policy}-{n}", [url], "round_robin")
                       for n, url in enumerate(urls)]
        else:
            proxies = [_proxy(work, policy, urls, policy)]
        latencies: list[float] = []

        def converse(conversation: int) -> None:
            proxy = proxies[conversation % len(proxies)]
            thinking = random.Random(conversation)
            with httpx.Client(timeout=120, trust_env=False) as client:
                for turn in range(TURNS):
                    started = time.perf_counter()
                    reply = client.post(f"{proxy.base_url}/chat/completions", json={
                        "model": MODEL, "messages": _messages(conversation, turn)})
                    reply.raise_for_status()
                    latencies.append(time.perf_counter() - started)
                    time.sleep(thinking.uniform(0, 0.4))  # the agent "thinks"

        with concurrent.futures.ThreadPoolExecutor(REPLICAS) as pool:
            list(pool.map(converse, range(CONVERSATIONS)))
        requests = CONVERSATIONS * TURNS
        records = [r for p in proxies for r in p.log_records(wait_for=requests // len(proxies))
                   if "usage" in r]
        assert len(records) == requests, f"{len(records)} flows logged of {requests}"
        served = {url: 0 for url in urls}
        for record in records:
            served[record["replicas"][-1]["replica"]] += 1
        return RealReplayRow(
            policy, requests, sum(r["usage"]["prompt_tokens"] for r in records),
            sum(r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in records),
            statistics.median(latencies), max(served.values()) / (requests / REPLICAS))
    finally:
        for proxy in proxies:
            proxy.stop()
        harness.stop_servers(servers)


def real_replay() -> list[RealReplayRow]:
    binary, source = harness.llama_server_binary()
    model = harness.tiny_gguf(source)
    with tempfile.TemporaryDirectory(prefix="bench-pool-real-") as tmp:
        return [_run_policy(binary, model, Path(tmp), policy) for policy in POLICIES]


def real_replay_section(rows: list[RealReplayRow], seconds: float) -> list[str]:
    """The report's section (Markdown lines)."""
    by = {row.policy: row for row in rows}
    aware, oracle, robin = by["cache_aware"], by["oracle"], by["round_robin"]
    lines = [f"## Replica pool against {REPLICAS} real llama-servers", "",
             f"{CONVERSATIONS} conversations × {TURNS} turns, concurrently, through mitmdump "
             f"(BACKEND=llamacpp, one proxy per policy; the oracle: each conversation through "
             f"a proxy of its own replica). Cached tokens are the servers' own "
             f"`timings.cache_n` (one slot each, llama.cpp's host-memory prompt cache on); "
             f"fresh servers per policy; {seconds:.0f} s in all (bench/pool_real.py).", "",
             "| policy | requests | prompt tokens | cached (cache_n) | cached-token ratio | "
             "latency p50 s | busiest replica / mean load |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.policy} | {r.requests} | {r.prompt_tokens:,} | {r.cached_tokens:,} | "
              f"{r.cached_ratio:.3f} | {r.latency_p50:.3f} | {r.max_load:.2f} |" for r in rows]
    lines += ["", f"- cache_aware: {aware.cached_ratio / oracle.cached_ratio:.2f}× the oracle's "
              f"cached ratio, {aware.cached_ratio / max(robin.cached_ratio, 1e-9):.2f}× round "
              f"robin's", ""]
    return lines


def pool_llamacpp_section(quick: bool) -> list[str]:
    """The part ``pool-llamacpp`` (the same size with ``--quick``: it is small already)."""
    started = time.monotonic()
    rows = real_replay()
    return real_replay_section(rows, time.monotonic() - started)

