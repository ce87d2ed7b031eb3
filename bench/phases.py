"""The measurements: issue 8's four through the proxy, and prefix reuse in-process (prefix.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workloads
from fastfake import Script
from httpclient import Target
from inprocess import StageTimes, time_stages
from load import LoadResult, nth_chunk, run_load, run_streams
from prefix import PrefixRow
from procs import Monitor, Usage
from spy import profiled
from store import (
    KINDS,
    StoreResult,
    StoreSetup,
    chained_turns,
    interleaved,
    store_calls_ms,
    stored_response,
)

from harmony_groq.backends import TransformersBackend
from harmony_groq.chat_request import parse_chat_request
from harmony_groq.render import render_prompt

from fakes import GROQ_KEY, token_pieces


@dataclass(frozen=True)
class Budget:
    """How much each loop may do: every loop stops at its count or its time, whichever first."""

    seconds: float
    rounds: int  # targets take turns this many times, so contention hits them alike
    groq_sequential: int
    groq_concurrent: int
    short_repeat: int
    long_repeat: int
    ttfd_streams: int
    stream_tokens: int
    streams_per_client: int
    chain_turns: int  # chained Responses turns over two proxies, per kind of store


QUICK = Budget(seconds=4, rounds=1, groq_sequential=30, groq_concurrent=160, short_repeat=10,
               long_repeat=2, ttfd_streams=10, stream_tokens=100, streams_per_client=1,
               chain_turns=20)
FULL = Budget(seconds=30, rounds=5, groq_sequential=1000, groq_concurrent=4000, short_repeat=300,
              long_repeat=15, ttfd_streams=200, stream_tokens=1000, streams_per_client=3,
              chain_turns=200)


@dataclass
class Setup:
    """The running processes: targets to send to and pids to watch."""

    budget: Budget
    groq_targets: list[Target]
    proxy: Target
    messages_proxy: Target  # the same proxy, Anthropic's Messages endpoint
    responses_proxy: Target  # the same proxy, OpenAI's Responses endpoint
    proxy_nolog: Target
    backend: Target
    pids: dict[str, int]
    proxy_pid: int
    profile_dir: Path | None
    store: StoreSetup | None = None  # redis-server and four proxies, for the store part


@dataclass
class GroqRow:
    target: str
    concurrency: int
    result: LoadResult
    usage: Usage


@dataclass
class OssRow:
    workload: str
    stages: StageTimes
    proxy: LoadResult
    proxy_nolog: LoadResult
    direct: LoadResult
    usage: Usage


@dataclass
class StreamRow:
    streams: int
    proxy: LoadResult
    proxy_usage: Usage
    direct: LoadResult


@dataclass
class StreamSet:
    """One client API's streams through the proxy, against the same backend streams."""

    api: str
    ttfd: tuple[LoadResult, LoadResult]  # through the proxy, backend direct
    rows: list[StreamRow]


@dataclass
class Results:
    groq: list[GroqRow] = field(default_factory=list)
    oss: list[OssRow] = field(default_factory=list)
    stream_sets: list[StreamSet] = field(default_factory=list)  # Chat Completions first
    idle_rss_mib: dict[str, float] = field(default_factory=dict)
    prefix: list[PrefixRow] = field(default_factory=list)
    store: StoreResult | None = None
    pool: Any = None  # pool_bench.PoolResults, when the pool part ran


def encode(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def upstream_body(body: dict) -> bytes:
    """The body the proxy sends the model server for ``body``: the direct baseline's request."""
    backend = TransformersBackend()
    request = parse_chat_request(body)
    prompt = render_prompt(request, workloads.DATE, backend.text_transport)
    return encode(backend.request_body(prompt, request, request.stream, ""))


async def _measured(setup: Setup, target: Target, body: bytes, expect: bytes, *,
                    concurrency: int, count: int, profile: str | None = None
                    ) -> tuple[LoadResult, Usage]:
    """One bounded load run with the processes' CPU and RSS watched (and profiled if named)."""
    with profiled(setup.profile_dir if profile else None, profile or "", setup.proxy_pid), \
            Monitor(setup.pids) as usage:
        result = await run_load(target, body, expect, concurrency=concurrency, count=count,
                                seconds=setup.budget.seconds / setup.budget.rounds)
    return result, usage


async def _rounds(setup: Setup, runs: list[tuple[Target, bytes, bytes]], *, concurrency: int,
                  count: int, profile: str | None = None) -> list[tuple[LoadResult, Usage]]:
    """Each run (target, body, expected) in turn, ``rounds`` times; totals per run.

    Only the third run (the addon, by the order the callers use) is profiled, in round one."""
    totals: list[tuple[LoadResult, Usage]] = [(LoadResult(), Usage()) for _ in runs]
    for round_ in range(setup.budget.rounds):
        for n, (target, body, expect) in enumerate(runs):
            result, usage = await _measured(
                setup, target, body, expect, concurrency=concurrency,
                count=max(1, count // setup.budget.rounds),
                profile=profile if n == 2 and round_ == 0 else None)
            totals[n] = (totals[n][0] + result, totals[n][1] + usage)
    return totals


async def groq_phase(setup: Setup, results: Results) -> None:
    body = encode(workloads.groq_small_body())
    runs = [(target, body, b'"chat.completion"') for target in setup.groq_targets]
    for concurrency, count in ((1, setup.budget.groq_sequential),
                               (32, setup.budget.groq_concurrent)):
        totals = await _rounds(setup, runs, concurrency=concurrency, count=count,
                               profile=f"groq-{concurrency}")
        for target, (result, usage) in zip(setup.groq_targets, totals, strict=True):
            results.groq.append(GroqRow(target.name, concurrency, result, usage))


async def oss_phase(setup: Setup, results: Results) -> None:
    budget = setup.budget
    cases = (("short chat", workloads.short_chat_body(), workloads.SHORT_SEED,
              b'"2 + 2 = 4."', budget.short_repeat),
             ("100k-token coding", workloads.coding_conversation_body(), workloads.CODING_SEED,
              b'"run_tests"', budget.long_repeat))
    for name, body, seed, expect, repeat in cases:
        script = Script(workloads.REPLIES[seed])
        text = "".join(script.pieces)
        answer = encode(script.final(len(script.pieces), "stop", "", text))
        stages, completion = time_stages(encode(body), answer, repeat)
        if expect not in encode(completion):
            raise RuntimeError(f"in-process {name}: unexpected reply {completion}")
        raw = encode(body)
        (direct, _), (nolog, _), (proxy, usage) = await _rounds(
            setup, [(setup.backend, upstream_body(body), b'"text_completion"'),
                    (setup.proxy_nolog, raw, expect), (setup.proxy, raw, expect)],
            concurrency=1, count=repeat, profile=f"gpt-oss-{seed}")
        results.oss.append(OssRow(name, stages, proxy, nolog, direct, usage))


async def stream_phase(setup: Setup, results: Results) -> None:
    """Chat Completions, Responses and Anthropic Messages streams of the same harmony prompt,
    each against the backend streaming it directly."""
    budget = setup.budget
    first_text = nth_chunk(len(token_pieces("<|channel|>analysis<|message|>")))
    counts = {streams: max(streams * budget.streams_per_client, 2) for streams in (1, 16, 64)}

    async def direct(max_tokens: int, streams: int, count: int) -> LoadResult:
        return await run_streams(setup.backend, upstream_body(workloads.stream_body(max_tokens)),
                                 concurrency=streams, count=count, seconds=budget.seconds,
                                 first_delta=first_text)

    ttfd_direct = await direct(64, 1, budget.ttfd_streams)
    directs = {streams: await direct(budget.stream_tokens, streams, count)
               for streams, count in counts.items()}
    apis = (("Chat Completions", setup.proxy, workloads.stream_body, "stream"),
            ("Responses", setup.responses_proxy, workloads.responses_stream_body,
             "responses-stream"),
            ("Anthropic Messages", setup.messages_proxy, workloads.messages_stream_body,
             "messages-stream"))
    for api, target, body_of, profile in apis:
        ttfd = await run_streams(target, encode(body_of(64)), concurrency=1,
                                 count=budget.ttfd_streams, seconds=budget.seconds)
        rows = []
        for streams, count in counts.items():
            with profiled(setup.profile_dir if streams == 64 else None,
                          f"{profile}-{streams}", setup.proxy_pid), \
                    Monitor(setup.pids) as usage:
                proxy = await run_streams(target, encode(body_of(budget.stream_tokens)),
                                          concurrency=streams, count=count,
                                          seconds=budget.seconds)
            rows.append(StreamRow(streams, proxy, usage, directs[streams]))
        results.stream_sets.append(StreamSet(api, (ttfd, ttfd_direct), rows))


async def store_phase(setup: Setup, results: Results) -> None:
    """The chained request on the memory and the Redis store in turn; chains over two proxies."""
    store = setup.store
    if store is None:
        return
    budget = setup.budget
    with Monitor(setup.pids) as usage:
        latency = await interleaved([store.targets[kind][0] for kind in KINDS],
                                    budget.short_repeat * budget.rounds, budget.seconds)
    chained = {kind: await chained_turns(store.targets[kind], budget.chain_turns)
               for kind in KINDS}
    calls = await store_calls_ms(store.redis.url, await stored_response(store.targets["redis"][0]),
                                 budget.short_repeat * budget.rounds)
    results.store = StoreResult(dict(zip(KINDS, latency, strict=True)), chained,
                                store.redis.version(), usage, calls)


def groq_targets(direct_port: int, bare_port: int, proxy_port: int,
                 litellm: Target | None) -> list[Target]:
    """Direct, bare mitmdump, the addon (index 2, profiled), then LiteLLM if measured."""
    auth = (("authorization", f"Bearer {GROQ_KEY}"),)
    path = "/openai/v1/chat/completions"
    targets = [Target("direct", direct_port, path, auth),
               Target("bare mitmdump", bare_port, path, auth),
               Target("addon", proxy_port, "/v1/chat/completions")]
    return targets + ([litellm] if litellm else [])
