"""HTTP to the model server made by the addon itself: the reachability probe before a stream,
and non-streamed calls (so a timeout becomes a JSON 504, not mitmproxy's HTML page); every
failure is an ``UpstreamFailure`` with its cause (upstream_failure.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import httpx
from mitmproxy import http

from .upstream_failure import UpstreamFailure, client_error, failure_of_exception

_HOP_HEADERS = ("content-length", "transfer-encoding", "content-encoding", "connection")


PROBE_TIMEOUT = 5.0


def failed(url: str, exc: BaseException, timeout: float) -> UpstreamFailure:
    """The client's error for a call to the model server at ``url`` that raised ``exc``."""
    failure = failure_of_exception(exc)
    return UpstreamFailure(failure, client_error(
        failure, f"The gpt-oss model server at {url}", timeout))


class ModelServerClient:
    """One pooled httpx client, and one that keeps no connection (``fresh``: a retry after a
    kept-alive connection was closed must not take another idle one), each made on first use
    and closed when the addon unloads."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._fresh: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False,
                                             limits=httpx.Limits(max_connections=256))
        return self._client

    def fresh(self) -> httpx.AsyncClient:
        if self._fresh is None:
            self._fresh = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(
                max_connections=256, max_keepalive_connections=0))
        return self._fresh

    def close(self) -> None:
        for client in (self._client, self._fresh):
            if client is not None:
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().create_task(client.aclose())
        self._client = self._fresh = None

    @staticmethod
    async def probe(url: str) -> None:
        """mitmproxy forwards streams itself; its connect-failure page is HTML, so probe first."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port), timeout=PROBE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise failed(url, exc, PROBE_TIMEOUT) from None
        writer.close()

    async def complete(self, url: str, body: dict[str, Any], timeout: float,
                       fresh: bool = False) -> http.Response:
        """A non-streamed backend call, as a response for the flow (``fresh``: on a new
        connection)."""
        try:
            response = await (self.fresh() if fresh else self.client()).post(
                url, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise failed(url, exc, timeout) from None
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
        return http.Response.make(response.status_code, response.content, headers)
