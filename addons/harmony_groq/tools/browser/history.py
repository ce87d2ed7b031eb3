"""Web-search steps a client sends back in its history (Responses ``web_search_call`` items,
Anthropic ``server_tool_use`` + ``web_search_tool_result`` blocks), in the chat form the
renderer takes: the browser call and its answer, so the model sees what it searched."""

from __future__ import annotations

import json
from typing import Any

from .page import domain_of


def server_call(call_id: str, recipient: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """An assistant ``tool_calls`` entry for a server tool's call (render.py)."""
    return {"id": call_id, "type": "server", "function": {
        "name": recipient, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def server_result(call_id: str, recipient: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "server": True, "name": recipient,
            "content": text}


def search_results_text(query: str, results: list[dict[str, Any]]) -> str:
    """A past search's page as the model saw it (cursors are not kept across requests)."""
    lines = [f"Search results for `{query}`", ""]
    for number, result in enumerate(results):
        url = result.get("url") or ""
        lines.append(f"【{number}†{result.get('title') or url}†{domain_of(url)}】")
        if result.get("snippet"):
            lines.append(str(result["snippet"]))
    if not results:
        lines.append("(the results of this search were not kept)")
    return "\n".join(lines)


def replayed_action(action: Any) -> tuple[str, dict[str, Any], str] | None:
    """A Responses ``web_search_call`` action → (recipient, arguments, answer text)."""
    if not isinstance(action, dict):
        return None
    kind = action.get("type")
    if kind == "search":
        query = action.get("query") or " ".join(q for q in action.get("queries") or []
                                                if isinstance(q, str))
        sources = [s for s in action.get("sources") or [] if isinstance(s, dict)
                   and isinstance(s.get("url"), str)]
        return ("browser.search", {"query": query},
                search_results_text(query, [{"url": s["url"]} for s in sources]))
    if kind == "open_page" and isinstance(action.get("url"), str):
        return ("browser.open", {"id": action["url"]},
                f"(the page {action['url']} was opened; its text was not kept)")
    if kind in ("find_in_page", "find") and isinstance(action.get("pattern"), str):
        return ("browser.find", {"pattern": action["pattern"]},
                f"(the find results for `{action['pattern']}` were not kept)")
    return None
