"""MCP part (``--only mcp``): what the proxy's MCP layer adds to a call on a warm session.

The suite's MCP server (tests/mcp_servers.py, the ``mcp`` SDK's MCPServer over streamable
HTTP) on 127.0.0.1 answers ``add``. Three ways to call it, call by call, each way first in
turn (so a busy machine slows all alike): a bare JSON-RPC ``tools/call`` POST on a kept-alive
connection (the server's own time plus HTTP: the floor), the SDK's ``Client.call_tool`` on an
open session, and the proxy's ``McpSessions.call`` (session lookup by URL and headers, the
session's task, the timeout, the result turned into bounded text). Reported: p50/p99 of each,
and each p50 minus the floor's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from harmony_groq.tools.mcp.client import McpLimits, McpServer, McpSessions

from mcp_servers import McpProcess

ARGUMENTS = {"a": 2, "b": 40}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(url: str, calls: int) -> dict[str, list[float]]:
    sessions = McpSessions(McpLimits(timeout=10))
    server = McpServer("bench", url)
    http = httpx2.AsyncClient()
    raw = httpx2.AsyncClient(headers={"accept": "application/json, text/event-stream",
                                      "content-type": "application/json"})
    times: dict[str, list[float]] = {"bare JSON-RPC POST": [], "SDK call_tool": [],
                                     "proxy McpSessions.call": []}
    async with http, raw, Client(streamable_http_client(url, http_client=http),
                                 cache=None) as client:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                "params": {"name": "add", "arguments": ARGUMENTS}}
        options: dict[str, Any] = {}
        client.session._stamp(body, options)  # noqa: SLF001 - the SDK's own request stamp
        headers = options.get("headers", {})

        async def bare() -> None:
            reply = await raw.post(url, json=body, headers=headers)
            assert reply.status_code == 200 and '"42"' in reply.text, reply.text

        async def sdk() -> None:
            assert (await client.call_tool("add", ARGUMENTS)).structured_content

        async def proxy() -> None:
            assert (await sessions.call(server, "add", ARGUMENTS)).text == "42"

        ways: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("bare JSON-RPC POST", bare), ("SDK call_tool", sdk),
            ("proxy McpSessions.call", proxy)]
        for _, call in ways:  # warm: sessions open, connections kept alive
            for _ in range(5):
                await call()
        for n in range(calls):
            for name, call in ways[n % 3:] + ways[:n % 3]:  # each way first in turn
                started = time.perf_counter()
                await call()
                times[name].append((time.perf_counter() - started) * 1000)
    await sessions.aclose()
    return times


def mcp_section(quick: bool) -> list[str]:
    """The report's MCP section (Markdown lines)."""
    calls = 30 if quick else 400
    server = McpProcess.fixture("http")
    try:
        times = asyncio.run(_measure(server.url, calls))
    finally:
        server.close()
    floor = statistics.median(times["bare JSON-RPC POST"])
    lines = ["## MCP calls on a warm session", "",
             f"{calls} calls of `add` on the suite's MCPServer (streamable HTTP, 127.0.0.1), "
             "the three ways in turn.", "",
             "| way | p50 ms | p99 ms | p50 over the bare POST, ms |", "| --- | --- | --- | --- |"]
    for name, values in times.items():
        p50 = statistics.median(values)
        lines.append(f"| {name} | {p50:.2f} | {_percentile(values, 0.99):.2f} | "
                     f"{p50 - floor:+.2f} |")
    return [*lines, ""]
