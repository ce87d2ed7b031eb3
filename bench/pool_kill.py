"""Killing one of 4 replicas under 32 concurrent streams, through the real mitmdump.

Four fake vLLM replicas (``tests/fakes_replicas.py``) stream the same ~50-token reply at
``TOKEN_DELAY`` a token; 32 clients stream chat completions back to back. One replica is killed
(connections refused, its streams reset) and healed later; then each other replica is killed
for a moment in turn, for more broken streams to count. Counted from the clients and the flow
log: errors of requests that had not started streaming, broken streams completed by resume with
the text of an unbroken run, the last request sent to the first dead replica after its kill,
and how soon after healing it is back (``/health``) and serving again.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fakes_replicas import FakeReplica
from proxy_process import ProxyProcess

REPLY = ("<|channel|>analysis<|message|>The user asks for a status line; one sentence is "
         "enough.<|end|><|start|>assistant<|channel|>final<|message|>All four replicas are "
         "serving, and a broken stream continues on another one without a seam.<|return|>")
ANSWER = ("All four replicas are serving, and a broken stream continues on another one "
          "without a seam.")
TOKEN_DELAY = 0.02
CLIENTS = 32


@dataclass
class KillResult:
    requests: int = 0
    errors_before_start: int = 0
    errors_after_start: int = 0
    wrong_text: int = 0
    broken: int = 0  # streams whose replica failed after tokens went out
    resumed_identical: int = 0
    failed_over: int = 0  # failed before their first token, served by another replica
    last_sent_to_dead_s: float | None = None  # after the kill
    back_in_s: float | None = None  # /health up again, after healing
    serving_again_s: float | None = None  # first request on it, after healing
    notes: list[str] = field(default_factory=list)


async def _client(client: httpx.AsyncClient, n: int, until: float, result: KillResult) -> None:
    turn = 0
    while time.monotonic() < until:
        turn += 1
        body = {"model": "gpt-oss-120b", "stream": True,
                "messages": [{"role": "user", "content": f"status {n}-{turn}"}]}
        started, text, failed = False, [], False
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    failed = True
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            failed = True
                            break
                        for choice in event.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                started = True
                                text.append(piece)
        except httpx.HTTPError as exc:
            failed = True
            result.notes.append(f"status {n}-{turn}: {type(exc).__name__}: {exc}")
        result.requests += 1
        if failed:
            if started:
                result.errors_after_start += 1
            else:
                result.errors_before_start += 1
        elif "".join(text) != ANSWER:
            result.wrong_text += 1


async def _watch(proxy: ProxyProcess, url: str, healed: asyncio.Event, result: KillResult
                 ) -> None:
    await healed.wait()
    started = time.monotonic()
    async with httpx.AsyncClient(trust_env=False) as client:
        while time.monotonic() - started < 10:
            body = (await client.get(f"{proxy.root_url}/health")).json()
            if any(r["url"] == url and r["up"] for p in body["replicas"]
                   for r in p["replicas"]):
                result.back_in_s = time.monotonic() - started
                return
            await asyncio.sleep(0.05)


async def _scenario(proxy: ProxyProcess, replicas: list[FakeReplica], seconds: float,
                    result: KillResult) -> tuple[float, float]:
    kill_at, heal_at = seconds * 0.2, seconds * 0.45
    healed = asyncio.Event()
    until = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=proxy.root_url, trust_env=False, timeout=30,
                                 limits=httpx.Limits(max_connections=CLIENTS)) as client:
        clients = [asyncio.create_task(_client(client, n, until, result))
                   for n in range(CLIENTS)]
        watch = asyncio.create_task(_watch(proxy, replicas[0].url, healed, result))
        await asyncio.sleep(kill_at)
        killed = time.time()
        replicas[0].kill()
        await asyncio.sleep(heal_at - kill_at)
        healed_wall = time.time()
        replicas[0].heal()
        healed.set()
        for replica in replicas[1:]:  # more broken streams to count: each other one in turn
            await asyncio.sleep(seconds * 0.1)
            replica.kill()
            await asyncio.sleep(seconds * 0.05)
            replica.heal()
        await asyncio.gather(*clients, watch)
    return killed, healed_wall


def _from_log(proxy: ProxyProcess, dead: str, killed: float, healed: float,
              result: KillResult) -> None:
    for record in proxy.log_records(wait_for=result.requests, timeout=10):
        if record.get("route") != "gpt-oss":
            continue
        attempts = record.get("replicas") or []
        started = record["started"]
        if record.get("resumed"):
            result.broken += 1
            message = (record.get("client_response") or {}).get("message") or {}
            if message.get("content") == ANSWER and not record.get("error"):
                result.resumed_identical += 1
        elif record.get("failed_over") or len(attempts) > 1:
            result.failed_over += 1
        on_dead = [a for a in attempts if a["replica"] == dead]
        if on_dead and killed <= started < healed:
            after = started - killed
            if result.last_sent_to_dead_s is None or after > result.last_sent_to_dead_s:
                result.last_sent_to_dead_s = after
        if on_dead and started >= healed and (result.serving_again_s is None
                                              or started - healed < result.serving_again_s):
            result.serving_again_s = started - healed


def kill_one_of_four(seconds: float) -> KillResult:
    replicas = [FakeReplica(reply_for=lambda prompt: REPLY) for _ in range(4)]
    for replica in replicas:
        replica.token_delay = TOKEN_DELAY
    result = KillResult()
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        proxy = ProxyProcess(Path(tmp), upstream=replicas[0].url, options={
            "transformers_url": ",".join(r.url for r in replicas), "backend": "vllm",
            "harmony_date": "2026-01-15", "log_file": str(Path(tmp) / "flows.log")})
        try:
            killed, healed = asyncio.run(_scenario(proxy, replicas, seconds, result))
            _from_log(proxy, replicas[0].url, killed, healed, result)
        finally:
            proxy.stop()
            for replica in replicas:
                replica.close()
    return result
