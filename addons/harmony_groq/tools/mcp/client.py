"""The proxy as an MCP client: sessions to the client's remote MCP servers, on the ``mcp`` SDK.

A session is opened once per server and headers (``McpSessions``), reused by every step of a
response and by later requests for ``MCP_SESSION_TTL`` seconds after its last use. The SDK's
transports are anyio context managers that must be left in the task that entered them, so each
session lives in a task of its own (``_Connection``) and calls reach it from any request.
Whatever goes wrong (refused connection, a server that hangs or dies mid-call, a protocol
error) becomes ``McpError`` with a message meant for the model and the client, never the
headers; results are bounded (``max_result_bytes``) and are only ever text for the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp_types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

logger = logging.getLogger(__name__)

LIST_PAGES = 20  # tools/list pages read at most (a paginator that never ends cannot hang us)
CLIENT_INFO = mcp_types.Implementation(name="gpt-oss-harmony-groq", version="0.1.0")


class McpError(Exception):
    """A failure talking to an MCP server, worded for the model and the client."""


@dataclass(frozen=True)
class McpServer:
    """One remote MCP server as a request names it. ``headers`` hold the client's secrets for
    this server only: they are not part of ``repr`` and reach no log."""

    label: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def key(self) -> str:
        """Sessions are shared only by requests with the same URL and the same headers."""
        digest = hashlib.sha256(json.dumps([self.url, sorted(self.headers)]).encode())
        return digest.hexdigest()

    @property
    def sse(self) -> bool:
        """The older HTTP+SSE transport, for URLs whose path ends in ``/sse``."""
        return urlsplit(self.url).path.rstrip("/").endswith("/sse")


@dataclass(frozen=True)
class McpTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None

    def item(self) -> dict[str, Any]:
        """The tool as Responses' ``mcp_list_tools`` lists it."""
        return {"name": self.name, "description": self.description,
                "input_schema": self.input_schema, "annotations": self.annotations}


@dataclass(frozen=True)
class McpResult:
    """A tool's answer as text for the model; ``is_error``: the tool said it failed."""

    text: str
    is_error: bool = False


@dataclass(frozen=True)
class McpLimits:
    timeout: float = 30.0  # seconds to connect and list, and per call
    session_ttl: float = 60.0  # seconds an idle session stays open for reuse
    max_result_bytes: int = 64 * 1024  # of one result's text (more is cut, and says so)


def result_text(result: mcp_types.CallToolResult, max_bytes: int) -> McpResult:
    """A ``tools/call`` result as bounded text: text parts as they are, embedded text
    resources' text, other content named (gpt-oss is text-only), structured content as JSON
    when there is no text."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[binary resource {resource.uri} omitted]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link: {block.uri}]")
        else:
            parts.append(f"[{block.type} content omitted: gpt-oss reads text only]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return McpResult(bounded("\n".join(parts), max_bytes), result.is_error)


def bounded(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    kept = data[:max_bytes].decode(errors="ignore")
    return f"{kept}\n[… output cut at {max_bytes} bytes of {len(data)}]"


def _tool(tool: mcp_types.Tool) -> McpTool:
    annotations = tool.annotations.model_dump(exclude_none=True) if tool.annotations else None
    return McpTool(tool.name, tool.description or "", tool.input_schema, annotations or None)


def _reason(exc: BaseException) -> str:
    """What went wrong, without anything the request carried (headers, URL credentials)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, BaseExceptionGroup):
        return _reason(exc.exceptions[0])
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx2.TransportError):
        return f"connection failed ({type(exc).__name__})"
    message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return message


class _Connection:
    """One open session, held by its own task until closed."""

    def __init__(self, server: McpServer, limits: McpLimits) -> None:
        self.server = server
        self.limits = limits
        self.client: Client | None = None
        self.tools: list[McpTool] | None = None
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()
        self.failure: BaseException | None = None
        self.last_used = time.monotonic()
        self.busy = 0  # calls under way (never swept)
        self.broken = False
        self.task = asyncio.get_running_loop().create_task(self._hold())

    def _transport(self) -> Any:
        server, timeout = self.server, self.limits.timeout
        if server.sse:
            return sse_client(server.url, headers=dict(server.headers), timeout=timeout,
                              sse_read_timeout=timeout)
        http = httpx2.AsyncClient(headers=dict(server.headers),
                                  timeout=httpx2.Timeout(timeout, read=timeout))
        events = 4 * self.limits.max_result_bytes + 65536  # one SSE event's bound
        return _owning(http, streamable_http_client(server.url, http_client=http,
                                                    max_sse_event_size=events))

    async def _hold(self) -> None:
        try:
            async with Client(self._transport(), client_info=CLIENT_INFO, cache=None,
                              read_timeout_seconds=self.limits.timeout) as client:
                self.client = client
                self.ready.set()
                await self.closing.wait()
        except BaseException as exc:  # noqa: BLE001 - whatever ended it is the session's news
            self.failure = exc
            self.broken = True
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.broken = True
            self.ready.set()

    async def open(self) -> Client:
        try:
            await asyncio.wait_for(self.ready.wait(), self.limits.timeout)
        except TimeoutError:
            self.close()
            raise McpError(f"MCP server {self.server.label!r} did not answer within "
                           f"{self.limits.timeout:g} s") from None
        if self.client is None or (self.broken and self.failure is not None):
            reason = _reason(self.failure) if self.failure else "closed"
            raise McpError(f"could not connect to MCP server {self.server.label!r}: {reason}")
        return self.client

    async def list_tools(self) -> list[McpTool]:
        if self.tools is None:
            client = await self.open()
            tools: list[McpTool] = []
            cursor: str | None = None
            for _ in range(LIST_PAGES):
                page = await self._bounded(client.list_tools(cursor=cursor), "tools/list")
                tools += [_tool(t) for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    break
            self.tools = tools
        return self.tools

    async def call(self, name: str, arguments: dict[str, Any]) -> McpResult:
        client = await self.open()
        result = await self._bounded(
            client.call_tool(name, arguments, read_timeout_seconds=self.limits.timeout),
            f"the call to {name!r}")
        return result_text(result, self.limits.max_result_bytes)

    async def _bounded(self, work: Any, what: str) -> Any:
        self.busy += 1
        try:
            return await asyncio.wait_for(work, self.limits.timeout)
        except McpError:
            raise
        except Exception as exc:  # noqa: BLE001 - a server's failure is the model's news
            self.close()  # a session that failed once is not trusted again
            label = self.server.label
            if isinstance(exc, TimeoutError):
                raise McpError(f"MCP server {label!r}: {what} timed out after "
                               f"{self.limits.timeout:g} s") from None
            raise McpError(f"MCP server {label!r}: {what} failed: {_reason(exc)}") from None
        finally:
            self.busy -= 1
            self.last_used = time.monotonic()

    def close(self) -> None:
        self.broken = True
        self.closing.set()


@contextlib.asynccontextmanager
async def _owning(http: httpx2.AsyncClient, transport: Any) -> Any:
    """The streamable HTTP transport, closing the HTTP client it was given once left."""
    async with http, transport as streams:
        yield streams


class McpSessions:
    """Open MCP sessions by server URL and headers, reused while fresh (``session_ttl``)."""

    def __init__(self, limits: McpLimits | None = None) -> None:
        self.limits = limits or McpLimits()
        self.open: dict[str, _Connection] = {}
        self._sweeper: asyncio.Task | None = None

    def configure(self, limits: McpLimits) -> None:
        self.limits = limits

    def _connection(self, server: McpServer) -> _Connection:
        key = server.key
        connection = self.open.get(key)
        if connection is None or connection.broken:
            connection = self.open[key] = _Connection(server, self.limits)
            if self._sweeper is None or self._sweeper.done():
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return connection

    async def list_tools(self, server: McpServer) -> list[McpTool]:
        """The server's tools (listed once per session)."""
        return await self._connection(server).list_tools()

    async def call(self, server: McpServer, name: str, arguments: Mapping[str, Any]
                   ) -> McpResult:
        """Call ``name``; a failure of the server or the session raises ``McpError``."""
        return await self._connection(server).call(name, dict(arguments))

    async def _sweep(self) -> None:
        """Close sessions idle past their TTL; ends when none is left."""
        while self.open:
            await asyncio.sleep(min(self.limits.session_ttl, 5.0))
            now = time.monotonic()
            for key, connection in list(self.open.items()):
                idle = now - connection.last_used > self.limits.session_ttl
                if connection.broken or (idle and not connection.busy):
                    connection.close()
                    del self.open[key]

    async def aclose(self) -> None:
        for connection in self.open.values():
            connection.close()
        tasks = [c.task for c in self.open.values()]
        self.open.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
