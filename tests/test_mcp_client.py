"""The MCP client against real MCP servers on loopback: this suite's MCPServer (streamable
HTTP and SSE) and npm's server-everything."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from harmony_groq.tools.mcp.client import McpError, McpLimits, McpServer, McpSessions

from mcp_servers import McpProcess


@pytest.fixture(scope="module")
def http_server(mcp_server: McpProcess) -> McpProcess:
    return mcp_server


@pytest.fixture(scope="module")
def sse_server() -> Iterator[McpProcess]:
    server = McpProcess.fixture("sse")
    yield server
    server.close()


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


async def _with_sessions(work, limits: McpLimits | None = None):  # noqa: ANN001, ANN202
    sessions = McpSessions(limits or McpLimits(timeout=10))
    try:
        return await work(sessions)
    finally:
        await sessions.aclose()


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_lists_and_calls(transport: str, http_server: McpProcess, sse_server: McpProcess
                         ) -> None:
    server = McpServer("calc", (http_server if transport == "http" else sse_server).url)

    async def work(sessions: McpSessions):  # noqa: ANN202
        tools = await sessions.list_tools(server)
        result = await sessions.call(server, "add", {"a": 2, "b": 40})
        failed = await sessions.call(server, "fail", {"message": "no luck"})
        return tools, result, failed

    tools, result, failed = run(_with_sessions(work))
    by_name = {tool.name: tool for tool in tools}
    assert {"add", "seen_headers", "slow", "big", "fail", "die"} <= set(by_name)
    assert by_name["add"].description == "Add two integers."
    assert by_name["add"].input_schema["required"] == ["a", "b"]
    assert result.text == "42" and not result.is_error
    assert failed.is_error and "no luck" in failed.text


def test_headers_reach_the_server_and_key_the_session(http_server: McpProcess) -> None:
    alice = McpServer("calc", http_server.url, (("Authorization", "Bearer alice-token"),
                                                ("X-Tenant", "a")))
    bob = McpServer("calc", http_server.url, (("Authorization", "Bearer bob-token"),))
    assert "alice-token" not in repr(alice)
    assert alice.key != bob.key

    async def work(sessions: McpSessions):  # noqa: ANN202
        seen_a = json.loads((await sessions.call(alice, "seen_headers", {})).text)
        seen_b = json.loads((await sessions.call(bob, "seen_headers", {})).text)
        again = json.loads((await sessions.call(alice, "seen_headers", {})).text)
        return seen_a, seen_b, again, len(sessions.open)

    seen_a, seen_b, again, sessions_open = run(_with_sessions(work))
    assert seen_a["authorization"] == "Bearer alice-token" and seen_a["x-tenant"] == "a"
    assert seen_b["authorization"] == "Bearer bob-token" and "x-tenant" not in seen_b
    # The same session (its kept-alive connection) serves alice's second call.
    assert again["_peer"] == seen_a["_peer"] != seen_b["_peer"]
    assert sessions_open == 2


def test_a_warm_session_is_reused_and_an_idle_one_closed(http_server: McpProcess) -> None:
    server = McpServer("calc", http_server.url)

    async def work(sessions: McpSessions):  # noqa: ANN202
        first = json.loads((await sessions.call(server, "seen_headers", {})).text)
        second = json.loads((await sessions.call(server, "seen_headers", {})).text)
        await asyncio.sleep(1.6)  # past the TTL: the sweeper closes it
        swept = not sessions.open
        third = json.loads((await sessions.call(server, "seen_headers", {})).text)
        return first, second, swept, third

    first, second, swept, third = run(_with_sessions(work, McpLimits(timeout=10,
                                                                      session_ttl=0.5)))
    assert first["_peer"] == second["_peer"]
    assert swept
    assert third["_peer"] != first["_peer"]


def test_a_hanging_call_times_out_and_the_next_call_works(http_server: McpProcess) -> None:
    server = McpServer("calc", http_server.url)

    async def work(sessions: McpSessions):  # noqa: ANN202
        started = time.monotonic()
        with pytest.raises(McpError, match="timed out after 1 s"):
            await sessions.call(server, "slow", {"seconds": 30})
        took = time.monotonic() - started
        return took, await sessions.call(server, "add", {"a": 1, "b": 1})

    took, after = run(_with_sessions(work, McpLimits(timeout=1)))
    assert took < 5
    assert after.text == "2"


def test_a_server_dying_mid_call_is_an_error_not_a_hang() -> None:
    server_process = McpProcess.fixture("http")
    server = McpServer("calc", server_process.url)
    try:
        async def work(sessions: McpSessions):  # noqa: ANN202
            await sessions.list_tools(server)
            started = time.monotonic()
            with pytest.raises(McpError) as failure:
                await sessions.call(server, "die", {})
            return failure.value, time.monotonic() - started

        error, took = run(_with_sessions(work, McpLimits(timeout=5)))
        # It died in the call (the client may see the connection close a moment before the
        # process is reaped).
        assert server_process.process is not None
        assert server_process.process.wait(timeout=5) == 3
        assert "calc" in str(error)
        assert took < 6
    finally:
        server_process.close()


def test_unreachable_server_is_an_error() -> None:
    server = McpServer("gone", "http://127.0.0.1:9/mcp")

    async def work(sessions: McpSessions):  # noqa: ANN202
        with pytest.raises(McpError, match="could not connect to MCP server 'gone'"):
            await sessions.list_tools(server)

    run(_with_sessions(work, McpLimits(timeout=5)))


def test_results_are_bounded(http_server: McpProcess) -> None:
    server = McpServer("calc", http_server.url)

    async def work(sessions: McpSessions):  # noqa: ANN202
        return await sessions.call(server, "big", {"size": 50_000})

    result = run(_with_sessions(work, McpLimits(timeout=10, max_result_bytes=1000)))
    assert result.text.startswith("x" * 1000)
    assert result.text.endswith("[… output cut at 1000 bytes of 50000]")


def test_server_everything_from_npm() -> None:
    everything = McpProcess.everything()
    server = McpServer("everything", everything.url)
    try:
        async def work(sessions: McpSessions):  # noqa: ANN202
            tools = await sessions.list_tools(server)
            echo = await sessions.call(server, "echo", {"message": "hi there"})
            image = await sessions.call(server, "get-tiny-image", {})
            return tools, echo, image

        tools, echo, image = run(_with_sessions(work))
        names = {tool.name for tool in tools}
        assert {"echo", "get-sum"} <= names
        assert echo.text == "Echo: hi there"
        assert "[image content omitted" in image.text
    finally:
        everything.close()
