"""The ``browser`` server tool: ``search``, ``open``, ``find`` over a page stack, one browser
per response, shown to the model in the reference browser's display (``[cursor] title (url)``,
``**viewing lines [a - b] of n**``, ``L<n>: …`` lines, links as ``【id†text†domain】``), so
its citations ``【cursor†L4-L7】`` resolve to the page and lines they name."""

from __future__ import annotations

import functools
import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from openai_harmony import ToolNamespaceConfig

from ...chat_request import ServerToolSpec
from ...encoding import harmony_encoding
from ...settings import OptionSpec
from ..base import Citation, ServerCall, StepRecord, ToolOutput
from ..options import declare
from ..registry import ToolContext, register_tool
from ..urls import UnsafeUrl, fetch
from .page import Page, domain_of, html_to_page, text_to_page
from .search import SearchBackend, SearchError, search_backend

NAMESPACE, KIND = "browser", "web_search"
WRAP = 80
_CITE = re.compile(r"^(\d+)†L(\d+)(?:-L(\d+))?$")
_LINK_IN_TEXT = re.compile(r"【(\d+)†([^†】]+)(?:†[^†】]+)?】")
USER_AGENT = "Mozilla/5.0 (compatible; gpt-oss-harmony-groq browser)"

declare(
    OptionSpec("browser_view_tokens", "BROWSER_VIEW_TOKENS", int, 1024,
               "Tokens of a page the browser tool shows the model at once."),
    OptionSpec("browser_results", "BROWSER_RESULTS", int, 10,
               "Search results the browser tool shows per search."),
)


@functools.cache
def browser_config() -> ToolNamespaceConfig:
    """harmony's own browser declaration (the trained text)."""
    return ToolNamespaceConfig.browser()


def browser_spec(options: dict[str, Any] | None = None) -> ServerToolSpec:
    """The spec a dialect makes of a web-search declaration; ``options``: ``max_uses``,
    ``allowed_domains``, ``blocked_domains``."""
    return ServerToolSpec(NAMESPACE, browser_config(), KIND, dict(options or {}))


class ToolUsageError(Exception):
    """A call the model got wrong: it hears why (``invalid_tool_input`` for the client)."""


def _matches(host: str, domains: list[str]) -> bool:
    host = host.lower().removeprefix("www.")
    return any(host == d or host.endswith("." + d) for d in domains)


def _domains(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [d.strip().lower().removeprefix("www.").split("/")[0] for d in value
            if isinstance(d, str) and d.strip()]


@dataclass
class Browser:
    """One response's browser."""

    search_engine: SearchBackend
    context: ToolContext
    max_uses: int | None = None
    allowed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    namespace: str = NAMESPACE
    kind: str = KIND

    def __post_init__(self) -> None:
        self.pages: list[Page] = []
        self.wrapped: dict[int, list[str]] = {}
        self.searches = 0
        self.view_tokens = int(self.context.config["browser_view_tokens"])
        self.results = int(self.context.config["browser_results"])

    # -- the step's record ------------------------------------------------------------------

    def started(self, call: ServerCall) -> StepRecord:
        args = _arguments(call.arguments)
        action = call.action
        if action == "search":
            return StepRecord(KIND, "search", query=str(args.get("query", "")),
                              backend=self.search_engine.name)
        if action == "find":
            page = self._page_or_none(args.get("cursor", -1))
            return StepRecord(KIND, "find_in_page", pattern=str(args.get("pattern", "")),
                              url=page.url if page else None, backend="page")
        return StepRecord(KIND, "open_page", url=self._target_or_none(args), backend="fetch")

    # -- running ----------------------------------------------------------------------------

    async def run(self, call: ServerCall, step: StepRecord) -> ToolOutput:
        try:
            args = _arguments(call.arguments)
            if args is None:
                raise ToolUsageError("The arguments must be a JSON object.")
            if call.action == "search":
                text = await self._search(args, step)
            elif call.action == "open":
                text = await self._open(args, step)
            elif call.action == "find":
                text = self._find(args, step)
            else:
                raise ToolUsageError(f"The browser has no function {call.action!r}: use "
                                     "search, open or find.")
        except ToolUsageError as exc:
            step.fail("invalid_tool_input", str(exc))
            return ToolOutput(str(exc), step)
        except SearchError as exc:
            step.fail(exc.code, exc.message)
            return ToolOutput(f"Error during search: {exc.message}", step)
        except UnsafeUrl as exc:
            step.fail("url_not_allowed" if exc.code == "blocked_url" else exc.code, exc.message)
            return ToolOutput(f"Error fetching URL: {exc.message}", step)
        step.status = "completed"
        return ToolOutput(text, step)

    async def _search(self, args: dict[str, Any], step: StepRecord) -> str:
        query = args.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolUsageError("search needs a non-empty `query`.")
        if self.max_uses is not None and self.searches >= self.max_uses:
            step.fail("max_uses_exceeded", f"at most {self.max_uses} searches")
            raise SearchError("max_uses_exceeded", f"The search limit of this response "
                              f"({self.max_uses}) was reached; answer with what you have.")
        self.searches += 1
        found = await self.search_engine.search(query, self.results * 2)
        found = [r for r in found if self._domain_allowed(r.url)][:self.results]
        step.outputs = [{"url": r.url, "title": r.title, "snippet": r.snippet,
                         "page_age": r.page_age} for r in found]
        lines, links, snippets = [], {}, {}
        for number, result in enumerate(found):
            links[number] = result.url
            snippets[number] = result.snippet
            lines.append(f"【{number}†{_clean(result.title)}†{domain_of(result.url)}】")
            if result.snippet:
                lines.append(" ".join(result.snippet.split()))
            lines.append("")
        if not found:
            lines.append(f"No results for `{query}`.")
        page = Page("", f"Search results for `{query}`", "\n".join(lines).strip(), links,
                    snippets)
        step.bytes = len(page.text.encode())
        return self._push_and_show(page, 0, -1)

    async def _open(self, args: dict[str, Any], step: StepRecord) -> str:
        target = args.get("id", -1)
        loc, num_lines = _int(args.get("loc", -1)), _int(args.get("num_lines", -1))
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            url = target
        else:
            page = self._page(args.get("cursor", -1))
            link = _int(target)
            if link < 0:  # scroll the page at ``cursor``
                step.url = page.url or None
                return self._push_and_show(page, max(loc, 0), num_lines)
            if link not in page.links:
                raise ToolUsageError(f"Invalid link id `{link}`.")
            url = page.links[link]
        step.url = url
        if not self._domain_allowed(url):
            raise UnsafeUrl("blocked_url", f"{domain_of(url) or url} is outside the domains "
                            "this request allows.")
        fetched = await fetch(self.context.client, url, self.context.config.policy,
                              {"user-agent": USER_AGENT, "accept": "text/html, text/plain;q=0.9"})
        step.bytes = len(fetched.body)
        if fetched.status >= 400:
            raise UnsafeUrl("unavailable", f"{url} answered {fetched.status}")
        kind = fetched.content_type.split(";")[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml", ""):
            page = html_to_page(fetched.body, fetched.url)
        elif kind.startswith("text/") or kind in ("application/json", "application/xml"):
            page = text_to_page(fetched.body.decode("utf-8", "replace"), fetched.url)
        else:
            raise UnsafeUrl("unavailable", f"{url} is {kind}, not a page the browser reads")
        step.outputs = [{"url": page.url, "title": page.title, "snippet": "", "page_age": None}]
        return self._push_and_show(page, max(loc, 0), num_lines)

    def _find(self, args: dict[str, Any], step: StepRecord) -> str:
        pattern = args.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ToolUsageError("find needs a `pattern`.")
        page = self._page(args.get("cursor", -1))
        step.url = page.url or None
        lines = [_LINK_IN_TEXT.sub(r"\2", line) for line in self._lines(page)]
        chunks, needle, index = [], pattern.lower(), 0
        while index < len(lines) and len(chunks) < 50:
            if needle in lines[index].lower():
                chunks.append(f"# 【{len(chunks)}†match at L{index}】\n"
                              + "\n".join(lines[index:index + 4]))
                index += 4
            else:
                index += 1
        text = "\n\n".join(chunks) or f"No `find` results for pattern: `{pattern}`"
        result = Page(f"{page.url}/find?pattern={quote(pattern)}",
                      f"Find results for text: `{pattern}` in `{page.title}`", text,
                      {n: page.url for n in range(len(chunks))})
        step.outputs = [{"url": page.url, "title": page.title, "snippet": "", "page_age": None}]
        return self._push_and_show(result, 0, -1)

    # -- pages and their display ------------------------------------------------------------

    def _domain_allowed(self, url: str) -> bool:
        host = urlsplit(url).hostname or ""
        if self.allowed and not _matches(host, self.allowed):
            return False
        return not (self.blocked and _matches(host, self.blocked))

    def _page(self, cursor: Any) -> Page:
        page = self._page_or_none(cursor)
        if page is None:
            raise ToolUsageError("No page is open at that cursor." if self.pages else
                                 "No pages to access!")
        return page

    def _page_or_none(self, cursor: Any) -> Page | None:
        number = _int(cursor)
        if not self.pages:
            return None
        if number == -1:
            return self.pages[-1]
        return self.pages[number] if 0 <= number < len(self.pages) else None

    def _target_or_none(self, args: dict[str, Any] | None) -> str | None:
        if not args:
            return None
        target = args.get("id", -1)
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            return target
        page = self._page_or_none(args.get("cursor", -1))
        if page is None:
            return None
        return page.links.get(_int(target)) if _int(target) >= 0 else (page.url or None)

    def _lines(self, page: Page) -> list[str]:
        key = id(page)
        if key not in self.wrapped:
            self.wrapped[key] = [piece for line in page.text.split("\n")
                                 for piece in (textwrap.wrap(line, WRAP, replace_whitespace=False,
                                                             drop_whitespace=False) or [""])]
        return self.wrapped[key]

    def _push_and_show(self, page: Page, loc: int, num_lines: int) -> str:
        if not self.pages or self.pages[-1] is not page:
            self.pages.append(page)
        cursor = len(self.pages) - 1
        lines = self._lines(page)
        total = len(lines)
        if loc >= max(total, 1):
            raise ToolUsageError(f"Invalid location parameter: `{loc}`. Cannot exceed page "
                                 f"maximum of {total - 1}.")
        end = self._view_end(lines, loc, num_lines)
        body = "\n".join(f"L{n}: {lines[n]}" for n in range(loc, end))
        header = page.title + (f" ({page.url})" if page.url else "")
        return (f"[{cursor}] {header}\n**viewing lines [{loc} - {max(end - 1, loc)}] of "
                f"{max(total - 1, 0)}**\n\n{body}")

    def _view_end(self, lines: list[str], loc: int, num_lines: int) -> int:
        if num_lines > 0:
            return min(loc + num_lines, len(lines))
        encoding, budget, end = harmony_encoding(), self.view_tokens, loc
        while end < len(lines):
            budget -= len(encoding.encode(f"L{end}: {lines[end]}\n", disallowed_special=()))
            if budget < 0 and end > loc:
                break
            end += 1
        return end

    # -- citations --------------------------------------------------------------------------

    def cite(self, marker: str) -> Citation | None:
        match = _CITE.match(marker.strip())
        if match is None or int(match.group(1)) >= len(self.pages):
            return None
        page = self.pages[int(match.group(1))]
        lines = self._lines(page)
        first = int(match.group(2))
        last = int(match.group(3) or first)
        cited = "\n".join(lines[first:last + 1])
        if not page.url:  # a search results page: the result the lines name
            link = _LINK_IN_TEXT.search(cited)
            if link is None:
                return None
            number = int(link.group(1))
            url = page.links.get(number)
            if url is None:
                return None
            return Citation(url, link.group(2), page.snippets.get(number, "")[:500])
        url = page.url.split("/find?pattern=", 1)[0]  # a find result cites its page
        return Citation(url, page.title, _LINK_IN_TEXT.sub(r"\2", cited)[:500])


def _clean(text: str) -> str:
    return re.sub(r"[【】†]", "", " ".join(text.split()))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _arguments(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _browser(spec: ServerToolSpec, context: ToolContext) -> Browser:
    options = spec.options
    max_uses = options.get("max_uses")
    return Browser(search_backend(context.config, context.client), context,
                   max_uses if isinstance(max_uses, int) and max_uses > 0 else None,
                   _domains(options.get("allowed_domains")),
                   _domains(options.get("blocked_domains")))


register_tool(NAMESPACE, _browser)
