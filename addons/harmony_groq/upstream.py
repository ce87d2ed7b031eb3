"""HTTP to the model server made by the addon itself: the reachability probe before a stream,
and non-streamed calls (so a timeout becomes a JSON 504, not mitmproxy's HTML page)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import httpx
from mitmproxy import http

from .errors import ProxyError

_HOP_HEADERS = ("content-length", "transfer-encoding", "content-encoding", "connection")


def unreachable(url: str) -> ProxyError:
    return ProxyError(503, f"The gpt-oss model server at {url} is unreachable. Start it "
                      "(see docs/backends.md) or set TRANSFORMERS_URL.",
                      code="upstream_unavailable")


class ModelServerClient:
    """One pooled httpx client, made on first use and closed when the addon unloads."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False,
                                             limits=httpx.Limits(max_connections=256))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(self._client.aclose())
            self._client = None

    @staticmethod
    async def probe(url: str) -> None:
        """mitmproxy forwards streams itself; its connect-failure page is HTML, so probe first."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port), timeout=5)
        except (OSError, TimeoutError):
            raise unreachable(url) from None
        writer.close()

    async def complete(self, url: str, body: dict[str, Any], timeout: float) -> http.Response:
        """A non-streamed backend call, as a response for the flow."""
        try:
            response = await self.client().post(url, json=body, timeout=timeout)
        except httpx.ConnectError:
            raise unreachable(url) from None
        except httpx.TimeoutException:
            raise ProxyError(504, f"The model server did not answer within {timeout} s "
                             "(UPSTREAM_TIMEOUT).", code="upstream_timeout") from None
        except httpx.HTTPError as exc:
            raise ProxyError(502, f"The model server's answer was unreadable "
                             f"({type(exc).__name__}).", code="upstream_error") from None
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
        return http.Response.make(response.status_code, response.content, headers)
