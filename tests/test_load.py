"""Bounded load on loopback: 64 concurrent streaming clients while /health is polled."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from fakes import GROQ_KEY, FakeTransformers, Scripted

CLIENTS = 64
REQUESTS = 192  # three rounds of 64
TOKEN_DELAY = 0.01
ANSWER = ("<|channel|>analysis<|message|>The user wants a short story about a cat.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>Once upon a time a cat named Miso "
          "found a warm windowsill and decided it was hers forever.<|return|>")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _stream(client: openai.AsyncOpenAI, n: int) -> str:
    model = "gpt-oss-20b" if n % 4 else "llama-3.3-70b-versatile"
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"story {n}"}], stream=True,
        stream_options={"include_usage": True})
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    return text


HEALTH_POLLER = """
import json, sys, time, httpx
url, stop_file = sys.argv[1], sys.argv[2]
latencies = []
with httpx.Client(timeout=10) as client:
    while len(latencies) < 5000:
        started = time.perf_counter()
        assert client.get(url).status_code == 200
        latencies.append(time.perf_counter() - started)
        try:
            open(stop_file).close()
            break
        except FileNotFoundError:
            time.sleep(0.05)
print(json.dumps(latencies))
"""


def start_health_poller(url: str, stop_file: Path) -> subprocess.Popen:
    """Polls /health from its own process, so the load generator's CPU does not skew it."""
    return subprocess.Popen([sys.executable, "-c", HEALTH_POLLER, url, str(stop_file)],
                            stdout=subprocess.PIPE, text=True)


async def _run(base_url: str) -> tuple[list, float]:
    """REQUESTS streams, at most CLIENTS at a time, bounded by a 240 s deadline."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http_client:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0,
                                    http_client=http_client)
        semaphore = asyncio.Semaphore(CLIENTS)

        async def one(n: int) -> str | BaseException:
            async with semaphore:
                try:
                    return await _stream(client, n)
                except Exception as exc:  # counted as a failure below
                    return exc

        started = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(REQUESTS))),
                                         timeout=240)
        elapsed = time.perf_counter() - started
    return results, elapsed


def test_64_concurrent_streams(start_proxy, fake_transformers: FakeTransformers, fake_groq,
                               tmp_path: Path, capsys) -> None:
    fake_transformers.default = Scripted(ANSWER, token_delay=TOKEN_DELAY)
    fake_groq.token_delay = TOKEN_DELAY
    proxy = start_proxy(env={"GROQ_API_KEY": GROQ_KEY})
    idle_rss = rss_kib(proxy.process.pid)
    stop_file = tmp_path / "stop-polling"
    poller = start_health_poller(f"{proxy.root_url}/health", stop_file)
    results, elapsed = asyncio.run(_run(proxy.base_url))
    loaded_rss = rss_kib(proxy.process.pid)
    stop_file.touch()
    latencies = json.loads(poller.communicate(timeout=30)[0])
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    harmony = [r for n, r in enumerate(results) if n % 4]
    assert all(r == "Once upon a time a cat named Miso found a warm windowsill and decided it "
                    "was hers forever." for r in harmony)
    records = proxy.log_records(wait_for=REQUESTS + len(latencies), timeout=20)
    chat = [r for r in records if r.get("route") in ("gpt-oss", "groq")]
    assert len(chat) == REQUESTS, "every flow has its log record"
    assert all(r["status"] == 200 and not r.get("error") for r in chat)
    p50 = statistics.median(latencies)
    worst = max(latencies)
    assert p50 < 0.25 and worst < 2.0, f"/health p50 {p50:.3f} s, max {worst:.3f} s under load"
    assert loaded_rss - idle_rss < 150_000, "memory stays bounded"
    with capsys.disabled():
        print(f"\nload: {REQUESTS} streams, {CLIENTS} concurrent, {elapsed:.1f} s, "
              f"{REQUESTS / elapsed:.1f} streams/s; /health p50 {p50 * 1000:.1f} ms, "
              f"max {worst * 1000:.1f} ms over {len(latencies)} polls; RSS idle "
              f"{idle_rss // 1024} MiB, loaded {loaded_rss // 1024} MiB")
