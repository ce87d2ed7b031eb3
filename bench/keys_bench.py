"""The keys part of the benchmark (``./run.sh bench --only keys``): a fair share of a full
pool, and what the key check and the limit counters cost.

Fair share: one replica that runs ``SLOTS`` streams at once and queues the rest in order,
as an engine does at its ``max_num_seqs`` (``SlottedReplica``, one token every ``TOKEN_S``);
the proxy calls it full at ``CAPACITY`` (``SPILLOVER_MAX_INFLIGHT``). A heavy key keeps 32
streams going, a light key sends one at a time; the light key's time to first token (p95)
is measured on an idle pool, then on the full pool with fair share off
(``FAIR_SHARE_QUEUE=0``) and on, in one run.

Cost: the gate's check of one request (key lookup, model, the rpm and tpm counters: one Lua
call to a real redis-server on loopback) and its settlement, timed in process, p50.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests"), str(ROOT / "addons")]

import redis.asyncio as aioredis  # noqa: E402
from fastfake import SSE_HEAD, FakeUpstreams, chunk  # noqa: E402
from mitmproxy.proxy.mode_specs import ProxyMode  # noqa: E402
from mitmproxy.test import tflow  # noqa: E402
from workloads import DATE  # noqa: E402

from harmony_groq.dialects.table import DialectTable  # noqa: E402
from harmony_groq.keys.book import Key, hash_of  # noqa: E402
from harmony_groq.keys.gate import KeyGate  # noqa: E402
from harmony_groq.keys.limits import RedisLimits  # noqa: E402
from harmony_groq.response_store import ResponseStore  # noqa: E402
from harmony_groq.routing import Endpoint  # noqa: E402
from harmony_groq.settings import OPTION_DEFAULTS, build_config  # noqa: E402

from proxy_process import ProxyProcess  # noqa: E402
from redis_server import RedisServer, find_or_install_redis  # noqa: E402

SLOTS, CAPACITY, TOKEN_S, TOKENS = 16, 8, 0.03, 24
HEAVY_STREAMS = 32
GOAL_RATIO, GOAL_MS = 1.5, 0.3


class SlottedReplica(FakeUpstreams):
    """transformers serve's streamed completions, ``SLOTS`` at once, the rest queued."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = asyncio.Semaphore(SLOTS)

    async def complete(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        script = next(iter(self.scripts.values()))
        count, finish = script.cut(body.get("max_tokens"))
        async with self.slots:
            writer.write(SSE_HEAD)
            for n in range(count):
                writer.write(script.events[n])
                await writer.drain()
                await asyncio.sleep(TOKEN_S)
            last = b"data: " + json.dumps(script.final(count, finish, "", "")).encode()
            writer.write(chunk(last + b"\n\n") + b"0\r\n\r\n")


async def serve_replica() -> None:
    replica = SlottedReplica()
    server = await asyncio.start_server(replica.serve, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await server.serve_forever()


def _keys(tmp: Path, *names: str) -> dict[str, str]:
    keys = {}
    for name in names:
        done = subprocess.run([str(ROOT / "run.sh"), "keys", "add", name], cwd=tmp, text=True,
                              capture_output=True, timeout=120, check=True,
                              env={"KEYS_FILE": str(tmp / "keys.json"), "PATH": "/usr/bin:/bin"})
        keys[name] = done.stdout.strip().splitlines()[-1]
    return keys


async def _ttft(client: httpx.AsyncClient, url: str, key: str) -> float:
    """Seconds to the first generated token of one stream."""
    body = {"model": "gpt-oss-20b", "stream": True, "max_tokens": TOKENS,
            "messages": [{"role": "user", "content": "hi"}]}
    start = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body,
                             headers={"authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and (
                    '"content":"' in line.replace(" ", "") or '"reasoning' in line) \
                    and '"content":""' not in line.replace(" ", ""):
                first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start


async def _light(client: httpx.AsyncClient, url: str, key: str, count: int) -> list[float]:
    return [await _ttft(client, url, key) for _ in range(count)]


async def heavy_forever(url: str, key: str) -> None:
    """The heavy key's streams, in a process of their own (so the light key's client is
    not slowed by reading them): until killed."""
    limits = httpx.Limits(max_connections=HEAVY_STREAMS + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:
        async def one() -> None:
            while True:
                await _ttft(client, url, key)
        await asyncio.gather(*(one() for _ in range(HEAVY_STREAMS)))


async def _light_run(url: str, key: str, count: int) -> list[float]:
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        return await _light(client, url, key, count)


def _scenario(url: str, keys: dict[str, str], count: int, loaded: bool) -> list[float]:
    if not loaded:
        return asyncio.run(_light_run(url, keys["light"], count))
    heavy = subprocess.Popen([sys.executable, __file__, "heavy", url, keys["heavy"]])
    try:
        time.sleep(1 + 3 * TOKENS * TOKEN_S)  # the heavy key alone fills the pool first
        return asyncio.run(_light_run(url, keys["light"], count))
    finally:
        heavy.kill()
        heavy.wait(5)


def p95(values: list[float]) -> float:
    return sorted(values)[max(int(len(values) * 0.95) - 1, 0)]


def fair_share(quick: bool) -> dict[str, Any]:
    count = 10 if quick else 30
    replica = subprocess.Popen([sys.executable, __file__, "replica"], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert replica.stdout is not None
        port = json.loads(replica.stdout.readline())["port"]
        upstream = f"http://127.0.0.1:{port}"
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="bench-keys-") as tmp:
            work = Path(tmp)
            keys = _keys(work, "heavy", "light")
            for name, queue in (("off", "0"), ("on", "256")):
                (work / name).mkdir()
                proxy = ProxyProcess(work / name, upstream=upstream, env={
                    "KEYS_FILE": str(work / "keys.json")}, options={
                    "transformers_url": upstream, "harmony_date": DATE, "log_file": "",
                    "spillover_max_inflight": str(CAPACITY), "fair_share_queue": queue,
                    "upstream_timeout": "120"})
                try:
                    url = f"{proxy.base_url}/chat/completions"
                    if name == "off":
                        results["idle"] = _scenario(url, keys, count, False)
                    results[name] = _scenario(url, keys, count, True)
                finally:
                    proxy.stop()
        return results
    finally:
        replica.kill()
        replica.wait(5)


def gate_cost(quick: bool) -> dict[str, float]:
    """p50 of the gate's check and settlement per request, with the counters in Redis."""
    rounds = 300 if quick else 3000
    with tempfile.TemporaryDirectory(prefix="bench-keys-redis-") as tmp:
        server = RedisServer(find_or_install_redis(), Path(tmp))
        try:
            return asyncio.run(_gate_rounds(server.url, rounds))
        finally:
            server.stop()


class _Settings:
    config = build_config(OPTION_DEFAULTS, {})


async def _gate_rounds(url: str, rounds: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    gate = KeyGate(_Settings(), None, DialectTable(ResponseStore(None)))  # type: ignore[arg-type]
    gate.limits = RedisLimits(client)
    secret = "sk-hgg-bench-0123456789abcdefghijklmnopqrstuvwxyz"
    bare = Key("bare", hash_of(secret))
    limited = Key("bench", hash_of(secret), ("gpt-oss*",), rpm=10**9, tpm=10**12)
    body = json.dumps({"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "hi"}]})
    mode = ProxyMode.parse("reverse:http://127.0.0.1:1")
    times: dict[str, list[float]] = {"bare_ms": [], "check_ms": [], "settle_ms": []}
    for n in range(rounds * 2):
        key = bare if n % 2 else limited  # interleaved: the machine's load hits both alike
        gate.keys = {key.hash: key}
        flow = tflow.tflow()
        flow.client_conn.proxy_mode = mode
        flow.request.path, flow.request.method = "/v1/chat/completions", "POST"
        flow.request.headers["authorization"] = f"Bearer {secret}"
        flow.request.content = body.encode()
        start = time.perf_counter()
        await gate._check(flow, Endpoint.CHAT)
        times["bare_ms" if key is bare else "check_ms"].append(time.perf_counter() - start)
        assert flow.response is None, n
        admitted = gate.admitted.pop(flow.id, None)
        if admitted is not None:
            start = time.perf_counter()
            await gate.limits.settle(key, flow.id, admitted.bucket, admitted.estimate, 30, 0)
            times["settle_ms"].append(time.perf_counter() - start)
    await client.aclose()
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def keys_section(quick: bool) -> list[str]:
    """The part's Markdown section."""
    fair = fair_share(quick)
    cost = gate_cost(quick)
    idle = p95(fair["idle"])
    lines = ["## Keys: fair share of a full pool, and the cost of the key check", "",
             f"One replica runs {SLOTS} streams at once (the rest queue in order), the proxy "
             f"calls it full at {CAPACITY}; a heavy key keeps {HEAVY_STREAMS} streams of "
             f"{TOKENS} tokens ({TOKEN_S * 1000:g} ms each) going, a light key sends "
             f"{len(fair['idle'])} streams one after another.", "",
             "| light key's time to first token | p50 ms | p95 ms | p95 / idle |",
             "|---|---:|---:|---:|"]
    for name, label in (("idle", "idle pool (heavy key off)"),
                        ("off", "full pool, fair share off"), ("on", "full pool, fair share on")):
        values = fair[name]
        lines.append(f"| {label} | {statistics.median(values) * 1000:.1f} | "
                     f"{p95(values) * 1000:.1f} | {p95(values) / idle:.2f}× |")
    ratio = p95(fair["on"]) / idle
    lines += ["", f"Goal: with fair share, within {GOAL_RATIO}× of the idle pool: "
              f"{'met' if ratio <= GOAL_RATIO else 'NOT met'} ({ratio:.2f}×).", "",
              "| per request, Redis on loopback | p50 ms |", "|---|---:|",
              f"| key check alone (a key without limits: hash, lookup) | "
              f"{cost['bare_ms']:.3f} |",
              f"| key check + model + rpm/tpm counters (one Lua call), before routing | "
              f"{cost['check_ms']:.3f} |",
              f"| settlement after the reply (one Lua call, off the reply's path) | "
              f"{cost['settle_ms']:.3f} |", "",
              f"Goal: the check under {GOAL_MS} ms p50: "
              f"{'met' if cost['check_ms'] < GOAL_MS else 'NOT met'}.", ""]
    return lines


if __name__ == "__main__":
    if sys.argv[1:] == ["replica"]:
        asyncio.run(serve_replica())
    elif sys.argv[1:2] == ["heavy"]:
        asyncio.run(heavy_forever(sys.argv[2], sys.argv[3]))
    else:
        print("\n".join(keys_section("--quick" in sys.argv)))
