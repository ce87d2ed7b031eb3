"""Web-search steps in each client API's own shapes (registered with ``tools/items.py``).

Responses: ``web_search_call`` items (action ``search`` / ``open_page`` / ``find_in_page``)
with ``response.web_search_call.in_progress`` → ``.searching`` → ``.completed``. Messages:
``server_tool_use`` (name ``web_search``) + ``web_search_tool_result`` for searches, or the
result's error form with Anthropic's codes. Chat: Groq's ``executed_tools`` entry.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..base import StepRecord
from ..items import register

ANTHROPIC_ERRORS = {"max_uses_exceeded", "too_many_requests", "invalid_tool_input",
                    "query_too_long", "request_too_large", "unavailable"}


def action_of(step: StepRecord) -> dict[str, Any]:
    if step.action == "search":
        action: dict[str, Any] = {"type": "search", "query": step.query or ""}
        if step.outputs:
            action["sources"] = [{"type": "url", "url": o["url"]} for o in step.outputs]
        return action
    if step.action == "find_in_page":
        return {"type": "find_in_page", "pattern": step.pattern or "", "url": step.url or ""}
    return {"type": "open_page", "url": step.url or ""}


class ResponsesWebSearch:
    def item(self, step: StepRecord, status: str) -> dict[str, Any]:
        action = action_of(step) if status != "in_progress" else {
            "type": action_of(step)["type"]}
        return {"type": "web_search_call", "id": step.id, "status": status, "action": action}

    def progress(self, step: StepRecord, phase: str) -> list[tuple[str, dict[str, Any]]]:
        if phase == "started":
            return [("response.web_search_call.in_progress", {}),
                    ("response.web_search_call.searching", {})]
        return [("response.web_search_call.completed", {})]


def encrypted_content(output: dict[str, Any]) -> str:
    """What the proxy reads back when the block returns in history: the result itself."""
    return base64.b64encode(json.dumps(
        {"url": output["url"], "title": output.get("title", ""),
         "snippet": output.get("snippet", "")}, ensure_ascii=False).encode()).decode()


def decode_encrypted(value: Any) -> dict[str, Any]:
    try:
        data = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


class MessagesWebSearch:
    name = "web_search"
    usage_key = "web_search_requests"

    def use_input(self, step: StepRecord) -> dict[str, Any] | None:
        """Searches only: Anthropic's web_search has no open or find (they stay in the log)."""
        return {"query": step.query or ""} if step.action == "search" else None

    def result(self, step: StepRecord, tool_use_id: str) -> dict[str, Any]:
        if step.status == "failed":
            code = step.error if step.error in ANTHROPIC_ERRORS else "unavailable"
            content: Any = {"type": "web_search_tool_result_error", "error_code": code}
        else:
            content = [{"type": "web_search_result", "url": o["url"], "title": o.get("title")
                        or o["url"], "encrypted_content": encrypted_content(o),
                        "page_age": o.get("page_age")} for o in step.outputs]
        return {"type": "web_search_tool_result", "tool_use_id": tool_use_id,
                "content": content}


class ChatWebSearch:
    def executed_tool(self, step: StepRecord, index: int) -> dict[str, Any]:
        arguments = ({"query": step.query} if step.action == "search" else
                     {"pattern": step.pattern, "url": step.url} if step.action == "find_in_page"
                     else {"url": step.url})
        results = [{"title": o.get("title", ""), "url": o["url"], "content": o.get("snippet", ""),
                    "score": None} for o in step.outputs]
        entry: dict[str, Any] = {"index": index, "type": "browser_search",
                                 "arguments": json.dumps(arguments, ensure_ascii=False),
                                 "output": step.message if step.status == "failed" else
                                 "\n".join(f"{r['title']} ({r['url']})" for r in results)}
        if step.action == "search":
            entry["search_results"] = {"results": results, "images": []}
        else:
            entry["browser_results"] = [{"title": r["title"], "url": r["url"],
                                         "content": r["content"], "live_view_url": None}
                                        for r in results]
        return entry


register("web_search", responses=ResponsesWebSearch(), messages=MessagesWebSearch(),
         chat=ChatWebSearch())
