"""Search backends (``SEARCH_BACKEND``): each answers a query with ranked results.

``searxng`` (a self-hosted SearXNG's JSON API at ``SEARXNG_URL``), ``brave``, ``tavily``,
``exa`` (keys from ``BRAVE_API_KEY``, ``TAVILY_API_KEY``, ``EXA_API_KEY``), ``ddgs`` (keyless,
the default: the ``ddgs`` metasearch library) and ``off``. Configured backends are trusted (not
subject to ``ALLOW_PRIVATE_URLS``). Keys go only into the request to their service; no error
or log line carries them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from mitmproxy import exceptions

from ...settings import SECRET_ENVS, OptionSpec
from ..options import ToolConfig, declare

BACKENDS = ("ddgs", "searxng", "brave", "tavily", "exa", "off")
KEYS = {"brave": "BRAVE_API_KEY", "tavily": "TAVILY_API_KEY", "exa": "EXA_API_KEY"}
SECRET_ENVS.extend(KEYS.values())


def _check(config: ToolConfig) -> None:
    backend = config["search_backend"]
    if backend == "searxng" and not config["searxng_url"].startswith(("http://", "https://")):
        raise exceptions.OptionsError("SEARCH_BACKEND=searxng needs SEARXNG_URL (http(s)://…)")
    if backend in KEYS and not config.secret(KEYS[backend]):
        raise exceptions.OptionsError(f"SEARCH_BACKEND={backend} needs {KEYS[backend]} in the "
                                      "proxy's environment")


declare(
    OptionSpec("search_backend", "SEARCH_BACKEND", str, "ddgs",
               "Where the browser tool searches: ddgs (keyless), searxng, brave, tavily, exa "
               "or off.", BACKENDS),
    OptionSpec("searxng_url", "SEARXNG_URL", str, "",
               "Base URL of a SearXNG instance (its JSON API) for SEARCH_BACKEND=searxng."),
    check=_check)


@dataclass(frozen=True)
class SearchResult:
    url: str
    title: str
    snippet: str = ""
    page_age: str | None = None


class SearchError(Exception):
    """A failed search; ``code`` in Anthropic's vocabulary (``unavailable``,
    ``too_many_requests``); the message never carries a key."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, count: int) -> list[SearchResult]: ...


def _results(items: Any, url: str, title: str, snippet: str, age: str | None = None
             ) -> list[SearchResult]:
    if not isinstance(items, list):
        return []
    found = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(url), str) and item[url]:
            found.append(SearchResult(item[url], str(item.get(title) or item[url]),
                                      str(item.get(snippet) or ""),
                                      str(item[age]) if age and item.get(age) else None))
    return found


@dataclass
class HttpSearch:
    """A search service spoken to over HTTP (one of ``BACKENDS`` but ddgs and off)."""

    name: str
    client: httpx.AsyncClient
    timeout: float
    key: str = ""
    base_url: str = ""

    async def search(self, query: str, count: int) -> list[SearchResult]:
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._request(query, count)
        except TimeoutError:
            raise SearchError("unavailable", f"The {self.name} search took longer than "
                              f"{self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise SearchError("unavailable", f"The {self.name} search failed "
                              f"({type(exc).__name__})") from None
        if response.status_code == 429:
            raise SearchError("too_many_requests", f"The {self.name} search is rate limited")
        if response.status_code != 200:
            raise SearchError("unavailable", f"The {self.name} search answered "
                              f"{response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise SearchError("unavailable", f"The {self.name} search answered non-JSON") \
                from None
        return self._read(body if isinstance(body, dict) else {})[:count]

    async def _request(self, query: str, count: int) -> httpx.Response:
        if self.name == "searxng":
            return await self.client.get(f"{self.base_url.rstrip('/')}/search",
                                         params={"q": query, "format": "json"})
        if self.name == "brave":
            return await self.client.get("https://api.search.brave.com/res/v1/web/search",
                                         params={"q": query, "count": count},
                                         headers={"x-subscription-token": self.key,
                                                  "accept": "application/json"})
        if self.name == "tavily":
            return await self.client.post("https://api.tavily.com/search",
                                          json={"query": query, "max_results": count},
                                          headers={"authorization": f"Bearer {self.key}"})
        return await self.client.post("https://api.exa.ai/search", json={
            "query": query, "numResults": count,
            "contents": {"text": {"maxCharacters": 500}}}, headers={"x-api-key": self.key})

    def _read(self, body: dict[str, Any]) -> list[SearchResult]:
        if self.name == "searxng":
            return _results(body.get("results"), "url", "title", "content", "publishedDate")
        if self.name == "brave":
            web = body.get("web") if isinstance(body.get("web"), dict) else {}
            return _results(web.get("results"), "url", "title", "description", "age")
        if self.name == "tavily":
            return _results(body.get("results"), "url", "title", "content")
        return _results(body.get("results"), "url", "title", "text", "publishedDate")


@dataclass
class DdgsSearch:
    """Keyless metasearch through the ``ddgs`` library (blocking: run in a thread)."""

    timeout: float
    name: str = "ddgs"

    async def search(self, query: str, count: int) -> list[SearchResult]:
        try:
            from ddgs import DDGS
        except ImportError:
            raise SearchError("unavailable", "The ddgs search library is not installed") \
                from None

        def run() -> list[dict[str, Any]]:
            return DDGS(timeout=int(self.timeout)).text(query, max_results=count) or []

        try:
            async with asyncio.timeout(self.timeout + 1):
                found = await asyncio.to_thread(run)
        except TimeoutError:
            raise SearchError("unavailable", "The ddgs search took too long") from None
        except Exception as exc:  # ddgs raises its own exceptions for "no results", blocks…
            raise SearchError("unavailable", f"The ddgs search failed ({type(exc).__name__})") \
                from None
        return _results(found, "href", "title", "body")


class NoSearch:
    name = "off"

    async def search(self, query: str, count: int) -> list[SearchResult]:
        raise SearchError("unavailable", "Web search is turned off on this proxy "
                          "(SEARCH_BACKEND=off)")


def search_backend(config: ToolConfig, client: httpx.AsyncClient) -> SearchBackend:
    name = config["search_backend"]
    timeout = float(config["fetch_timeout"])
    if name == "off":
        return NoSearch()
    if name == "ddgs":
        return DdgsSearch(timeout)
    return HttpSearch(name, client, timeout, config.secret(KEYS.get(name, "")),
                      config["searxng_url"])
