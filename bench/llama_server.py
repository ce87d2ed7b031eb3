"""The llama.cpp backend against a real ``llama-server`` (tiny gpt-oss model, CPU): the time the
proxy adds to a request, streaming tokens/s through the proxy and direct, and the strict-tool
and json_schema validity rates over many seeds, constrained and not.

The server is built and the model converted by tests/llamacpp/harness.py (cached). Replies are
scripted by a grammar on the server's command line (greedy), so proxy and direct generate the
same tokens; "direct" posts the exact body the proxy sent (read from its flow log). Every loop is
a fixed number of sequential requests.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llamacpp import harness
from proxy_process import ProxyProcess
from realserver.build_tiny_model import FINAL_SCRIPT

MODEL = "gpt-oss-20b"
FREE_TOKENS = 400
NO_GROQ = "http://127.0.0.1:9/openai/v1"
LONG_SCRIPT = ("<|channel|>analysis<|message|>" + "step " * 400 + "<|end|><|start|>assistant"
               "<|channel|>final<|message|>done<|return|>")
SCHEMA = {"type": "object",
          "properties": {"city": {"type": "string", "maxLength": 12},
                         "days": {"type": "integer"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
          "required": ["city", "unit"], "additionalProperties": False}


@dataclass
class Budget:
    requests: int  # sequential requests per latency measurement
    streams: int  # streams per throughput measurement
    seeds: int  # seeds per validity rate


FULL, QUICK = Budget(40, 8, 50), Budget(5, 1, 4)


def _p50_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def _timed(client: httpx.Client, targets: list[tuple[str, dict[str, Any]]],
           count: int) -> list[list[float]]:
    """Seconds per request for each ``(url, body)``, taken in turn (drift hits all alike)."""
    samples: list[list[float]] = [[] for _ in targets]
    for _ in range(count):
        for n, (url, body) in enumerate(targets):
            start = time.perf_counter()
            client.post(url, json=body).raise_for_status()
            samples[n].append(time.perf_counter() - start)
    return samples


def _stream_rates(client: httpx.Client, targets: list[tuple[str, dict[str, Any]]], count: int,
                  tokens: int) -> list[float]:
    """Generated tokens per second for each ``(url, body)`` over ``count`` streams each,
    request to last byte, taken in turn (drift hits all alike)."""
    elapsed = [0.0] * len(targets)
    for _ in range(count):
        for n, (url, body) in enumerate(targets):
            start = time.perf_counter()
            # llama-server closes the connection after a stream: never reuse it.
            with client.stream("POST", url, json=body,
                               headers={"connection": "close"}) as reply:
                reply.raise_for_status()
                for _chunk in reply.iter_bytes():
                    pass
            elapsed[n] += time.perf_counter() - start
    return [tokens * count / seconds for seconds in elapsed]


def _forwarded(client: httpx.Client, proxy: ProxyProcess, body: dict[str, Any]
               ) -> dict[str, Any]:
    """Send ``body`` through the proxy; the flow record of what it sent to llama-server."""
    before = len(proxy.log_records())
    client.post(f"{proxy.base_url}/chat/completions", json=body).raise_for_status()
    records = proxy.log_records(wait_for=before + 1)[before:]
    return next(r for r in records if "upstream_request" in r and "usage" in r)


def _valid(arguments: str) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(arguments), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _validity(client: httpx.Client, proxy: ProxyProcess, strict: bool, seeds: int) -> float:
    tool = {"type": "function", "function": {"name": "forecast", "parameters": SCHEMA,
                                             "strict": strict}}
    ok = 0
    for seed in range(seeds):
        reply = client.post(f"{proxy.base_url}/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "Forecast?"}],
            "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "forecast"}},
            "seed": seed, "temperature": 1.0, "max_tokens": 200}).json()
        calls = reply["choices"][0]["message"].get("tool_calls") or []
        ok += bool(calls) and _valid(calls[0]["function"]["arguments"])
    return ok / seeds


def llamacpp_section(quick: bool) -> list[str]:
    """The report's llama.cpp section (Markdown lines)."""
    budget = QUICK if quick else FULL
    binary, source = harness.llama_server_binary()
    model = harness.tiny_gguf(source)
    with tempfile.TemporaryDirectory(prefix="bench-llama-") as tmp:
        work = Path(tmp)
        # One generation thread, so that on a 2-core machine the proxy has a core of its own
        # and what is measured is the proxy, not the two competing for a core.
        one_thread = ["-t", "1"]
        servers = {"short": harness.LlamaServer(binary, model, work, script=FINAL_SCRIPT,
                                                extra_args=one_thread),
                   "long": harness.LlamaServer(binary, model, work, script=LONG_SCRIPT,
                                               extra_args=one_thread),
                   "random": harness.LlamaServer(binary, model, work, extra_args=one_thread)}
        proxies: dict[str, ProxyProcess] = {}
        try:
            for name, server in servers.items():
                server.wait_healthy()
                (work / name).mkdir()
                proxies[name] = ProxyProcess(work / name, upstream=server.url, options={
                    "backend": "llamacpp", "transformers_url": server.url,
                    "groq_base_url": NO_GROQ, "upstream_timeout": "120"})
            return _measure(servers, proxies, budget)
        finally:
            for proxy in proxies.values():
                proxy.stop()
            harness.stop_servers(servers.values())


def _measure(servers: dict[str, harness.LlamaServer], proxies: dict[str, ProxyProcess],
             budget: Budget) -> list[str]:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}]}
    with httpx.Client(timeout=120, trust_env=False) as client:
        proxied_url = f"{proxies['short'].base_url}/chat/completions"
        # A first request warms the server's prompt cache and shows the body to send direct.
        direct_body = _forwarded(client, proxies["short"], chat)["upstream_request"]["body"]
        direct_url = f"{servers['short'].url}/completion"
        proxied, direct = _timed(client, [(proxied_url, chat), (direct_url, direct_body)],
                                 budget.requests)
        rates = {}
        for name, body in (("long", chat), ("random", {**chat, "temperature": 0,
                                                        "max_tokens": FREE_TOKENS})):
            url = f"{proxies[name].base_url}/chat/completions"
            record = _forwarded(client, proxies[name], body)
            tokens = record["usage"]["completion_tokens"]
            direct_stream = {**record["upstream_request"]["body"], "stream": True}
            proxied_rate, direct_rate = _stream_rates(
                client, [(url, {**body, "stream": True}),
                         (f"{servers[name].url}/completion", direct_stream)],
                budget.streams, tokens)
            rates[name] = (tokens, proxied_rate, direct_rate)
        strict = _validity(client, proxies["random"], True, budget.seeds)
        free = _validity(client, proxies["random"], False, budget.seeds)
    return [
        "## llama.cpp backend (real llama-server, tiny gpt-oss model, CPU)", "",
        "| measurement | through the proxy | llama-server direct | added / ratio |",
        "| --- | --- | --- | --- |",
        f"| short chat, p50 of {budget.requests} sequential requests | "
        f"{_p50_ms(proxied):.1f} ms | {_p50_ms(direct):.1f} ms | "
        f"+{_p50_ms(proxied) - _p50_ms(direct):.1f} ms |",
        *(f"| stream of {tokens} tokens ({what}), {budget.streams} streams | "
          f"{proxied_rate:.0f} tok/s | {direct_rate:.0f} tok/s | "
          f"{proxied_rate / direct_rate:.2f}× |"
          for what, (tokens, proxied_rate, direct_rate) in (
              ("scripted harmony, grammar-forced", rates["long"]),
              ("random model, greedy, no grammar", rates["random"]))),
        "",
        f"Forced call to a tool with a bounded schema, random model, temperature 1, "
        f"{budget.seeds} seeds: arguments that parse and validate **{strict:.0%}** with "
        f"`strict: true` (grammar), **{free:.0%}** without.", "",
    ]
