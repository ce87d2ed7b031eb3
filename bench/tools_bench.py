"""The server tools' own costs (tools/), in-process: the proxy's time per browser step without
the search engine and the fetch (both answered at once here), and HTML to text for a 1 MB page.

A step is what the loop does between a generation that stopped on ``browser.search`` and the
next one: decode the call, make the step's record, run the browser (search results → page →
display bounded in tokens), render the tool's harmony message, build the next prompt of a
~100k-token conversation, write the step's items (Responses events), and cite the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from typing import Any

import httpx
from workloads import DATE, coding_conversation_body

from harmony_groq.chat_request import parse_chat_request
from harmony_groq.dialects.responses_reply import ResponsesReply
from harmony_groq.encoding import harmony_encoding
from harmony_groq.parse import ContentDelta, HarmonyDecoder
from harmony_groq.render import render_prompt
from harmony_groq.toolloop.session import CitationFilter, ToolSession
from harmony_groq.tools.browser.browser import Browser, browser_spec
from harmony_groq.tools.browser.page import html_to_page
from harmony_groq.tools.browser.search import SearchResult
from harmony_groq.tools.options import ToolConfig
from harmony_groq.tools.registry import ToolContext

STEP_GOAL_MS, HTML_GOAL_MS = 5.0, 50.0
CALL = ('<|channel|>analysis<|message|>I should search.<|end|><|start|>assistant'
        '<|channel|>analysis to=browser.search code<|message|>{"query": "harmony format"}')
ANSWER = "gpt-oss uses harmony 【0†L2-L3】 and its browser 【0†L5】."


class InstantSearch:
    """A search engine that answers at once (the engine's time is not the proxy's)."""

    name = "instant"

    async def search(self, query: str, count: int) -> list[SearchResult]:
        return [SearchResult(f"https://example{n}.com/page", f"Result {n} for {query}",
                             "A snippet of about twenty words describing the page " * 2)
                for n in range(count)]


def one_megabyte_page() -> str:
    row = ('<div class="row"><h3>Heading {n}</h3><p>Some <b>bold</b> text and '
           '<a href="/link/{n}?a=1&amp;b=2">a link {n}</a> in a paragraph of a page.</p>'
           '<script>var x{n} = "{n}";</script><ul><li>item</li><li>other</li></ul></div>\n')
    rows, size = [], 0
    while size < 1_000_000:
        rows.append(row.format(n=len(rows)))
        size += len(rows[-1])
    return "<html><head><title>Big</title><style>p{}</style></head><body>" + "".join(
        rows) + "</body></html>"


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _elapsed(started: tuple[float, float]) -> tuple[float, float]:
    """Wall and CPU milliseconds since ``started``: on a busy machine the wall time counts
    the waits for a core; the CPU time is what a quiet machine's wall time would be."""
    wall, cpu = _clocks()
    return (wall - started[0]) * 1000, (cpu - started[1]) * 1000


def html_ms(rounds: int) -> tuple[float, float, int]:
    html = one_megabyte_page()
    times = []
    for _ in range(rounds):
        started = _clocks()
        html_to_page(html, "https://example.com/big")
        times.append(_elapsed(started))
    return (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times),
            len(html.encode()))


async def step_ms(rounds: int) -> tuple[float, float, int]:
    body: dict[str, Any] = coding_conversation_body()
    request = parse_chat_request(body)
    request = dataclasses.replace(request, server_tools=(browser_spec(),))
    prompt = render_prompt(request, DATE, text_transport=False)
    encoding = harmony_encoding()
    call_ids = encoding.encode(CALL, allowed_special="all")
    config = ToolConfig({"browser_view_tokens": 1024, "browser_results": 10,
                         "fetch_timeout": 15})
    times = []
    async with httpx.AsyncClient() as client:
        for _ in range(rounds):
            decoder = HarmonyDecoder(encoding, server_tools=frozenset({"browser"}))
            session = ToolSession({"browser": Browser(InstantSearch(), ToolContext(config,
                                                                                   client))}, 8)
            reply = ResponsesReply({"model": "gpt-oss-20b"}, "gpt-oss-20b", {})
            reply.start()
            cites = CitationFilter(session.cite)
            for token in call_ids:
                decoder.feed(token)
            started = _clocks()
            decoder.end_server_call(False)
            call = decoder.take_server_call()
            assert call is not None
            output = await session.step(call, reply.events)
            session.next_prompt(prompt, call_ids, "", call, output.text, False)
            reply.events(cites([ContentDelta(ANSWER)]) + cites.flush())
            times.append(_elapsed(started))
    return (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times),
            len(prompt.token_ids))


def tools_section(quick: bool) -> list[str]:
    """The report's server-tools section (Markdown lines)."""
    rounds = 5 if quick else 30
    step, step_cpu, prompt_tokens = asyncio.run(step_ms(rounds))
    html, html_cpu, size = html_ms(3 if quick else 15)
    return [
        "## Server tools (in-process)", "",
        "| measure | median wall | median CPU | goal | verdict (CPU) |",
        "| --- | --- | --- | --- | --- |",
        f"| proxy time per browser step (search answered at once; next prompt of "
        f"{prompt_tokens} tokens) | {step:.2f} ms | {step_cpu:.2f} ms | < {STEP_GOAL_MS:g} ms | "
        f"{'**met**' if step_cpu < STEP_GOAL_MS else '**not met**'} |",
        f"| HTML to text, {size / 1e6:.2f} MB page | {html:.1f} ms | {html_cpu:.1f} ms | "
        f"< {HTML_GOAL_MS:g} ms | {'**met**' if html_cpu < HTML_GOAL_MS else '**not met**'} |",
        "", f"Medians of {rounds} steps and of the HTML conversions, in the benchmark process "
        "(CPU: its own CPU time, what a quiet machine's wall time would be).", ""]
