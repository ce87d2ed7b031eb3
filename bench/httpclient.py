"""A minimal asyncio HTTP/1.1 keep-alive client: the load generator's only network code.

httpx or the openai SDK would cost the load generator, which shares a core with the fakes,
more CPU per request than the proxy under test; this one writes one request and reads the
response (content-length or chunked) with the stream reader, nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """Where a request goes: the same request body can be sent to several targets."""

    name: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Response:
    status: int
    body: bytes
    seconds: float


class Connection:
    """One keep-alive connection to 127.0.0.1:``target.port``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reopened = 0  # requests resent on a new connection

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.target.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _head(self, length: int) -> bytes:
        lines = [f"POST {self.target.path} HTTP/1.1", f"host: 127.0.0.1:{self.target.port}",
                 "content-type: application/json", f"content-length: {length}"]
        lines += [f"{name}: {value}" for name, value in self.target.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def post(self, body: bytes, on_chunk: Callable[[bytes], None] | None = None
                   ) -> Response:
        """Send ``body``; ``on_chunk`` sees each chunk of a chunked body as it arrives."""
        started = time.perf_counter()
        try:
            head = await self._send(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            # A kept-alive connection the server closed as we reused it: resend once, fresh.
            self.close()
            self.writer = None
            self.reopened += 1
            head = await self._send(body)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value for name, _, value in
                   (line.partition(":") for line in lines)}
        status = int(status_line.split(" ", 2)[1])
        if "chunked" in headers.get("transfer-encoding", ""):
            body_out = await self._chunks(on_chunk)
        else:
            body_out = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if "close" in headers.get("connection", "").lower():
            self.close()
            self.writer = None
        return Response(status, body_out, time.perf_counter() - started)

    async def _send(self, body: bytes) -> bytes:
        """Send the request; the response head once it arrives."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(self._head(len(body)) + body)
        await self.writer.drain()
        return await self.reader.readuntil(b"\r\n\r\n")

    async def _chunks(self, on_chunk: Callable[[bytes], None] | None) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            data = (await self.reader.readexactly(size + 2))[:-2]
            if on_chunk is not None:
                on_chunk(data)
            parts.append(data)
