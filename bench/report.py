"""The results as Markdown tables (printed, and written by ``--markdown FILE``), with the goals."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path

from md_table import table, verdict
from phases import GroqRow, Results, StreamRow, StreamSet
from pool_bench import pool_section
from prefix import CARRIED, DROPS, SENDS, PrefixRow
from store import StoreResult

PROXY, FAKE, LOAD = "addon", "fakes", "load generator"  # names of the watched processes


def machine(pinned: bool, litellm_version: str | None) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor() or "unknown CPU")
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    placement = ("proxy under test (addon, bare mitmdump or LiteLLM) pinned to CPU 0; fakes and "
                 "load generator share CPU 1" if pinned else "not pinned (fewer than 2 CPUs)")
    return [
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {cpu}, {os.cpu_count()} CPUs, {mem_kib / 2**20:.0f} GiB RAM, "
        f"Linux {platform.release()}",
        f"- Python {platform.python_version()}, mitmproxy {metadata.version('mitmproxy')}, "
        f"openai-harmony {metadata.version('openai-harmony')}"
        + (f", LiteLLM {litellm_version}" if litellm_version else ", LiteLLM not measured"),
        f"- Placement: {placement}",
        f"- Load average at start: {os.getloadavg()[0]:.2f}; \"CPU % others\" is every other "
        "process on the machine during that measurement (contention: numbers taken while it is "
        "high are not comparable)",
    ]


def _cpu_ratio(row: GroqRow, bare: GroqRow) -> str:
    """The addon's CPU time per request over bare mitmdump's (both pinned to the same core)."""
    def per_request(r: GroqRow) -> float:
        return r.usage.cpu_seconds.get(r.target, 0) / max(r.result.sent, 1)
    base = per_request(bare)
    return f"{per_request(row) / base:.2f}×" if base else "–"


def groq_section(rows: list[GroqRow]) -> list[str]:
    bare = {r.concurrency: r for r in rows if r.target == "bare mitmdump"}
    cells = []
    for r in rows:
        base = bare[r.concurrency].result
        measured = r.target in r.usage.cpu_seconds  # not "direct": no server in between
        cpu_ms = 1000 * r.usage.cpu_seconds.get(r.target, 0) / r.result.sent
        cells.append([r.target, r.concurrency, f"{r.result.p50_ms:.2f}",
                      f"{r.result.percentile_ms(0.99):.2f}", f"{r.result.rate:.0f}",
                      f"{r.result.p50_ms / base.p50_ms:.2f}×", f"{r.result.rate / base.rate:.2f}×",
                      f"{r.usage.cpu_percent(r.target):.0f}" if measured else "–",
                      f"{cpu_ms:.2f}" if measured else "–",
                      f"{r.usage.cpu_percent(FAKE):.0f}", f"{r.usage.cpu_percent(LOAD):.0f}",
                      f"{r.usage.others_percent:.0f}"])
    lines = ["## 1. Groq route, non-streaming small request", ""]
    lines += table(["target", "clients", "p50 ms", "p99 ms", "req/s", "p50 ÷ bare",
                    "req/s ÷ bare", "CPU % target", "target CPU ms/request", "CPU % fakes",
                    "CPU % load",
                    "CPU % others"], cells)
    for concurrency in sorted(bare):
        addon = next(r for r in rows if r.target == "addon" and r.concurrency == concurrency)
        ratio = addon.result.p50_ms / bare[concurrency].result.p50_ms
        line = (f"- {concurrency} client(s): addon p50 = {ratio:.2f}× bare mitmdump "
                f"(goal ≤ 1.2×: {verdict(ratio <= 1.2)}); CPU per request "
                f"{_cpu_ratio(addon, bare[concurrency])} bare's (what contention inflates least)")
        litellm = next((r for r in rows if r.target == "litellm"
                        and r.concurrency == concurrency), None)
        if litellm:
            ahead = (addon.result.p50_ms < litellm.result.p50_ms
                     and addon.result.rate > litellm.result.rate)
            line += (f"; vs LiteLLM p50 {addon.result.p50_ms:.2f} vs {litellm.result.p50_ms:.2f} "
                     f"ms, {addon.result.rate:.0f} vs {litellm.result.rate:.0f} req/s "
                     f"(goal ahead: {verdict(ahead)})")
        lines.append(line)
    return lines + [""]


def oss_section(results: Results) -> list[str]:
    cells = []
    verdicts = []
    for r in results.oss:
        s = r.stages
        added = r.proxy.p50_ms - r.direct.p50_ms
        cpu_ms = 1000 * r.usage.cpu_seconds[PROXY] / r.proxy.sent
        goal = 2.0 if r.workload == "short chat" else 50.0
        cells.append([r.workload, s.prompt_tokens,
                      f"{s.parse:.2f} / {s.render:.2f} / {s.encode:.2f} / {s.translate:.2f}",
                      f"{s.total:.2f}", f"{s.first_total:.2f}", f"{r.proxy.p50_ms:.2f}",
                      f"{r.direct.p50_ms:.2f}",
                      f"{added:.2f}", f"{r.proxy_nolog.p50_ms - r.direct.p50_ms:.2f}",
                      f"{cpu_ms:.2f}", f"{r.usage.peak_rss_mib[PROXY]:.0f}",
                      f"{r.usage.others_percent:.0f}"])
        verdicts.append(
            f"- {r.workload}, goal < {goal:.0f} ms: in-process {s.total:.1f} ms "
            f"{verdict(s.total < goal)}; through the proxy +{added:.1f} ms "
            f"{verdict(added < goal)}, {cpu_ms:.1f} ms of proxy CPU {verdict(cpu_ms < goal)}")
    lines = ["## 2. gpt-oss route, non-streaming: the proxy's own time", ""]
    lines += table(["workload", "prompt tokens",
                    "in-process ms: parse / render / encode / translate", "in-process total",
                    "in-process first run",
                    "via proxy p50 ms", "backend direct p50 ms", "added p50 ms",
                    "added, flow log off", "proxy CPU ms/request", "proxy peak RSS MiB",
                    "CPU % others"], cells)
    return lines + verdicts + [""]


def _stream_rows(rows: list[StreamRow]) -> list[list[object]]:
    cells = []
    for r in rows:
        proxy_cpu = r.proxy_usage.cpu_seconds[PROXY]
        cells.append([r.streams, len(r.proxy.latencies), f"{r.proxy.tokens / r.proxy.elapsed:,.0f}",
                      f"{r.direct.tokens / r.direct.elapsed:,.0f}",
                      f"{r.proxy_usage.cpu_percent(PROXY):.0f}",
                      f"{r.proxy.tokens / proxy_cpu:,.0f}" if proxy_cpu else "–",
                      f"{r.proxy_usage.cpu_percent(FAKE):.0f}",
                      f"{r.proxy_usage.cpu_percent(LOAD):.0f}",
                      f"{r.proxy_usage.others_percent:.0f}",
                      f"{statistics.median(r.proxy.first_delta) * 1000:.1f}",
                      f"{r.proxy_usage.peak_rss_mib[PROXY]:.0f}"])
    return cells


def stream_section(streams: StreamSet) -> list[str]:
    proxy, direct = streams.ttfd
    p50 = [statistics.median(x.first_delta) * 1000 for x in (proxy, direct)]
    p99 = [sorted(x.first_delta)[int(0.99 * (len(x.first_delta) - 1))] * 1000
           for x in (proxy, direct)]
    lines = [f"### {streams.api}", "",
             "Time to first delta, one stream at a time (64-token replies):", ""]
    lines += table(["", "p50 ms", "p99 ms"],
                   [["through the proxy", f"{p50[0]:.2f}", f"{p99[0]:.2f}"],
                    ["backend direct", f"{p50[1]:.2f}", f"{p99[1]:.2f}"],
                    ["added by the proxy", f"{p50[0] - p50[1]:.2f}", f"{p99[0] - p99[1]:.2f}"]])
    lines += ["Aggregate throughput (tokens = backend tokens translated):", ""]
    lines += table(["streams", "completed", "tokens/s via proxy", "tokens/s backend direct",
                    "proxy CPU %", "tokens per proxy CPU-second", "CPU % fakes",
                    "CPU % load", "CPU % others", "first delta p50 ms", "proxy peak RSS MiB"],
                   _stream_rows(streams.rows))
    best = max(r.proxy.tokens / r.proxy.elapsed for r in streams.rows)
    capacity = max(r.proxy.tokens / r.proxy_usage.cpu_seconds[PROXY] for r in streams.rows
                   if r.proxy_usage.cpu_seconds[PROXY])
    lines.append(f"- Goal added time to first delta < 5 ms: {p50[0] - p50[1]:.2f} ms p50 "
                 f"({verdict(p50[0] - p50[1] < 5)})")
    lines.append(f"- Goal ≥ 20,000 tokens/s on one core: best measured {best:,.0f} tokens/s "
                 f"({verdict(best >= 20000)}); per proxy CPU-second {capacity:,.0f} "
                 f"({verdict(capacity >= 20000)})")
    return lines + [""]


def memory_section(results: Results) -> list[str]:
    rows = [[name, f"{mib:.0f}"] for name, mib in results.idle_rss_mib.items()]
    rows += [["addon proxy, peak under 64 streams", f"{r.proxy_usage.peak_rss_mib[PROXY]:.0f}"]
             for r in results.stream_sets[0].rows if r.streams == 64] if results.stream_sets else []
    if results.oss:
        rows.append(["addon proxy, peak during the 100k-token requests",
                     f"{results.oss[-1].usage.peak_rss_mib[PROXY]:.0f}"])
    return ["## 4. Memory (RSS)", "", *table(["process", "MiB"], rows)]


def prefix_section(rows: list[PrefixRow]) -> list[str]:
    by = {r.client: r for r in rows}
    turns = len(rows[0].tokens.lost)
    cells = [[r.client, r.tokens.total, r.tokens.reused, f"{100 * r.tokens.ratio:.1f} %",
              f"{100 * r.chars.ratio:.1f} %", f"{r.tokens.lost_per_turn:.0f} "
              f"({', '.join(map(str, r.tokens.lost))})", f"{100 * r.model_header.ratio:.1f} %",
              f"{r.model_header.lost_per_turn:.0f}"] for r in rows]
    lines = [f"## 5. Prefix reuse over a {turns}-step tool chain", "",
             f"What a prefix cache can reuse of each of turns 2–{turns + 1}'s prompt: its common "
             "prefix with the turn before's prompt + completion (in-process, bench/prefix.py).",
             ""]
    lines += table(["client", "prompt tokens", "reused tokens", "share reused, tokens",
                    "share reused, characters", "lost tokens per turn (each turn)",
                    "share if history kept the model's call header", "lost per turn, then"],
                   cells)
    sends, drops, carried = by[SENDS], by[DROPS], by[CARRIED]
    header = sends.tokens.lost_per_turn - sends.model_header.lost_per_turn
    lines += [
        f"- Carry-over: a client that drops reasoning reuses "
        f"{100 * carried.tokens.ratio:.1f} % ({carried.tokens.lost_per_turn:.0f} tokens lost "
        f"per turn), against {100 * drops.tokens.ratio:.1f} % "
        f"({drops.tokens.lost_per_turn:.0f}) without; "
        + ("exactly as much as a client that sends it back" if carried.tokens == sends.tokens
           else "**not** what a client that sends it back reuses"),
        f"- The call header (history `assistant to=functions.x<|channel|>commentary json`, the "
        f"model `<|channel|>commentary to=functions.x <|constrain|>json`) loses {header:.0f} "
        f"tokens per turn: the header and the arguments after it, "
        f"{100 * (sends.model_header.ratio - sends.tokens.ratio):.1f} points of share", ""]
    return lines


def store_section(store: StoreResult) -> list[str]:
    memory, shared = store.latency["memory"], store.latency["redis"]
    overhead = shared.p50_ms - memory.p50_ms
    rows = [[kind, f"{r.p50_ms:.2f}", f"{r.percentile_ms(0.99):.2f}", len(r.latencies)]
            for kind, r in store.latency.items()]
    chains = [[kind, f"{ok}/{sent} ({100 * ok / sent:.0f} %)"]
              for kind, (ok, sent) in store.chained.items()]
    return ["## 6. Shared state store (STATE_STORE)", "",
            f"A chained Responses request (one read, one write of the store) on a proxy with the "
            f"in-process store and on one with Redis {store.redis_version} on localhost, "
            "request by request in turn, one client, flow log off.", "",
            *table(["store", "p50 ms", "p99 ms", "requests"], rows),
            f"Store overhead: {overhead:.3f} ms between the p50s, {store.paired_ms:.3f} ms the "
            f"median of the back-to-back pairs (goal < 0.5 ms: {verdict(overhead < 0.5)}); "
            f"CPU % others meanwhile: {store.usage.others_percent:.0f}", "",
            "The store's own calls for one chained turn (one read, one write), timed in the "
            f"benchmark process: {store.calls_ms['redis']:.3f} ms with Redis, "
            f"{store.calls_ms['memory']:.3f} ms in memory (p50).", "",
            "Chained turns (each continues the last) sent to two proxies in turn:", "",
            *table(["store", "turns answered"], chains)]


def render(results: Results, machine_lines: list[str], quick: bool) -> str:
    lines = ["# Benchmark results" + (" (--quick: too short to quote)" if quick else ""), ""]
    lines += machine_lines
    loads = [r.result for r in results.groq] + [x for r in results.oss
                                                for x in (r.proxy, r.proxy_nolog, r.direct)]
    loads += [x for s in results.stream_sets for r in s.rows for x in (r.proxy, r.direct)]
    reopened = sum(load.reopened for load in loads)
    if reopened:
        lines.append(f"- {reopened} requests were resent on a new connection after a server "
                     "closed a kept-alive one")
    lines.append("")
    if results.groq:
        lines += groq_section(results.groq)
    if results.oss:
        lines += oss_section(results)
    if results.stream_sets:
        lines += ["## 3. gpt-oss route, streaming", ""]
        for streams in results.stream_sets:
            lines += stream_section(streams)
    lines += memory_section(results)
    lines += prefix_section(results.prefix)
    if results.store is not None:
        lines += store_section(results.store)
    if results.pool is not None:
        lines += pool_section(results.pool)
    return "\n".join(lines)
