"""Server tools on the Groq route: Groq's gpt-oss runs its own ``browser_search``.

The client's web-search declaration (Responses ``web_search*``, Anthropic ``web_search_*``,
OpenAI ``web_search_options``) becomes Groq's ``{"type": "browser_search"}`` tool, and the
``executed_tools`` Groq answers with become the same ``StepRecord``s the local loop makes, so
each dialect shows them as its own items. Groq's other models have no built-in tools: a web
search for one of them is refused with a clear 400 (running the proxy's loop over a function
tool there would change the model's behaviour behind the client's back)."""

from __future__ import annotations

import json
from typing import Any

from ..chat_request import ServerToolSpec
from ..errors import bad_request
from .base import StepEvent, StepRecord

BROWSER_SEARCH = {"type": "browser_search"}


def groq_has_browser(model: str) -> bool:
    return "gpt-oss" in model.lower()


def with_browser_search(body: dict[str, Any], specs: tuple[ServerToolSpec, ...] | bool,
                        model: str) -> dict[str, Any]:
    """``body`` (a Groq chat body) with Groq's built-in browser when the client asked for web
    search; a 400 for a Groq model without it."""
    if not specs:
        return body
    if not groq_has_browser(model):
        raise bad_request(f"Web search is not available for {model!r}: on Groq only the gpt-oss "
                          "models have a built-in browser (browser_search). Use a gpt-oss "
                          "model, or leave the web search tool out.",
                          code="server_tool_unavailable")
    tools = [t for t in body.get("tools") or [] if t.get("type") != "browser_search"]
    out = {**body, "tools": [*tools, BROWSER_SEARCH]}
    out.pop("web_search_options", None)
    if not tools:
        out.pop("parallel_tool_calls", None)
    return out


def executed_steps(executed: Any) -> list[StepEvent]:
    """Groq's ``executed_tools`` (browser_search, search, visit) as finished step events."""
    events: list[StepEvent] = []
    for entry in executed if isinstance(executed, list) else []:
        step = _step(entry)
        if step is not None:
            events += [StepEvent(step, "started"), StepEvent(step, "finished")]
    return events


def _step(entry: Any) -> StepRecord | None:
    if not isinstance(entry, dict) or entry.get("type") not in ("browser_search", "search",
                                                                 "visit", "browser.search",
                                                                 "browser.open"):
        return None
    try:
        arguments = json.loads(entry.get("arguments") or "{}")
    except (ValueError, TypeError):
        arguments = {}
    arguments = arguments if isinstance(arguments, dict) else {}
    search = entry.get("search_results") if isinstance(entry.get("search_results"), dict) \
        else {}
    found = search.get("results") if isinstance(search.get("results"), list) else []
    browsed = entry.get("browser_results") if isinstance(entry.get("browser_results"),
                                                          list) else []
    outputs = [{"url": r["url"], "title": r.get("title") or r["url"],
                "snippet": r.get("content") or "", "page_age": None}
               for r in [*found, *browsed] if isinstance(r, dict) and isinstance(r.get("url"),
                                                                                 str)]
    query = arguments.get("query")
    if isinstance(query, str) or found:
        step = StepRecord("web_search", "search", query=str(query or ""), outputs=outputs,
                          backend="groq")
    else:
        url = arguments.get("url") or arguments.get("id")
        step = StepRecord("web_search", "open_page", url=str(url) if url else
                          (outputs[0]["url"] if outputs else None), outputs=outputs,
                          backend="groq")
    step.status = "completed"
    return step
