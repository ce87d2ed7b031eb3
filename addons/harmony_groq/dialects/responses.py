"""The OpenAI Responses API (``/v1/responses``): Codex CLI and ``client.responses``.

gpt-oss requests are parsed into the chat form (responses_request) and answered by
``ResponsesReply``; ``store`` keeps the reply for ``previous_response_id`` and
``GET``/``DELETE /v1/responses/{id}`` (in the state store: ``recall`` reads the response a
request continues before it is parsed). Groq takes what its strict Responses schema allows
directly; anything else (reasoning items, custom or namespace tools, chained or stored
responses) goes through Groq's chat API and is translated back.
"""

from __future__ import annotations

from typing import Any

from ..chat_request import EFFORTS, require_model
from ..errors import ProxyError, bad_request
from ..groq import groq_chat_request
from ..response_store import ResponseStore, StoredResponse
from ..settings import Config
from ..tools.groq_code import with_groq_code_tool
from ..tools.groq_route import with_browser_search
from .base import Conversation, GroqCall, OpenAIErrors
from .responses_reply import ResponsesReply
from .responses_request import (
    ResponsesConversation,
    input_items,
    parse_responses_request,
    parse_tools,
    server_tools,
)

# Groq's Responses schema (additionalProperties: false), responses-api.md §4: what it takes.
GROQ_FIELDS = ("model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
               "tools", "tool_choice", "text", "reasoning", "metadata", "parallel_tool_calls",
               "store", "stream", "user", "service_tier", "truncation")
GROQ_SERVICE_TIERS = ("auto", "default", "flex")
GROQ_ITEMS = ("message", "function_call", "function_call_output")
GROQ_TOOL_FIELDS = ("type", "name", "description", "parameters", "strict")
# Groq runs remote MCP itself (console.groq.com/docs/tool-use/remote-mcp): the tool and its
# items pass through; the server must be reachable from Groq.
MCP_ITEMS = ("mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response")


def has_mcp(body: dict[str, Any]) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and any(
        isinstance(t, dict) and t.get("type") == "mcp" for t in tools)


def groq_can_take(body: dict[str, Any]) -> bool:
    """Whether Groq's Responses endpoint can serve the request as it is (after sanitising).
    With an ``mcp`` tool only Groq's Responses API can (not stored here, then)."""
    mcp = has_mcp(body)
    if (body.get("store") is not False and not mcp) or body.get("previous_response_id"):
        return False  # kept here, so it must be answered here
    tools = body.get("tools") or []
    if any(isinstance(t, dict) and t.get("type") in ("custom", "namespace") for t in tools):
        return False
    items = GROQ_ITEMS + MCP_ITEMS if mcp else GROQ_ITEMS
    for item in input_items(body):
        kind = item.get("type", "message") if isinstance(item, dict) else "message"
        if kind not in items:
            return False
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list) and any(
                isinstance(p, dict) and p.get("type") not in ("input_text", "output_text")
                for p in content):
            return False
    return True


def _texts(parts: list[Any]) -> list[str]:
    return [p.get("text", "") for p in parts if isinstance(p, dict)]


def _groq_item(item: Any) -> Any:
    """An input item with only the keys Groq's schema names (Codex echoes ``id`` and
    ``status``); assistant messages in the easy form (Groq refuses typed assistant messages
    and ``output_text`` parts); tool outputs as strings."""
    if not isinstance(item, dict):
        return item
    kind = item.get("type", "message")
    if kind in MCP_ITEMS:
        return item
    if kind == "function_call":
        return {k: item[k] for k in ("type", "call_id", "name", "arguments") if k in item}
    if kind == "function_call_output":
        output = item.get("output")
        return {"type": kind, "call_id": item.get("call_id"),
                "output": "\n".join(_texts(output)) if isinstance(output, list) else output}
    content = item.get("content")
    if item.get("role") == "assistant":
        return {"role": "assistant",
                "content": "\n".join(_texts(content)) if isinstance(content, list) else content}
    if isinstance(content, list):
        content = [{"type": "input_text", "text": t} for t in _texts(content)]
    return {"type": "message", "role": item.get("role"), "content": content}


def _groq_mcp_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An ``mcp`` tool as Groq documents it: OpenAI's ``authorization`` goes as the
    ``Authorization`` header Groq sends the server."""
    tool = dict(tool)
    token = tool.pop("authorization", None)
    if isinstance(token, str) and token:
        headers = {k: v for k, v in (tool.get("headers") or {}).items()
                   if k.lower() != "authorization"}
        tool["headers"] = {**headers, "Authorization": f"Bearer {token}"}
    return tool


def groq_responses_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Keep what Groq's schema allows; drop the rest (``include``, ``prompt_cache_key``,
    ``reasoning.summary``, ``text.verbosity``, hosted tools)."""
    out = {key: body[key] for key in GROQ_FIELDS if body.get(key) is not None}
    out["model"] = model
    out["store"] = False
    if isinstance(out.get("input"), list):
        out["input"] = [_groq_item(item) for item in out["input"]]
    reasoning = out.pop("reasoning", None)
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if isinstance(effort, str) and effort.lower() in EFFORTS:
        out["reasoning"] = {"effort": EFFORTS[effort.lower()]}
    text = out.pop("text", None)
    if isinstance(text, dict) and text.get("format"):
        out["text"] = {"format": text["format"]}
    if out.get("service_tier") not in GROQ_SERVICE_TIERS:
        out.pop("service_tier", None)
    tools = [{k: t[k] for k in GROQ_TOOL_FIELDS if k in t} if t.get("type") == "function"
             else _groq_mcp_tool(t) for t in out.pop("tools", [])
             if isinstance(t, dict) and t.get("type") in ("function", "mcp")]
    if tools:
        out["tools"] = tools
    else:
        out.pop("tool_choice", None)
        out.pop("parallel_tool_calls", None)
    return out


class ResponsesDialect(OpenAIErrors):
    name = "responses"

    def __init__(self, store: ResponseStore, previous: StoredResponse | None = None) -> None:
        self.store = store
        self.previous = previous  # what recall read for one request

    async def recall(self, body: dict[str, Any]) -> ResponsesDialect:
        """This dialect for one request, with the stored response its
        ``previous_response_id`` names (``None`` if it cannot be read)."""
        previous = body.get("previous_response_id")
        if not isinstance(previous, str):
            return self
        return ResponsesDialect(self.store, await self.store.get(previous))

    def model(self, body: dict[str, Any], config: Config) -> str:
        model = require_model(body)
        input_items(body)
        return model

    def _parse(self, body: dict[str, Any], images: bool = False) -> ResponsesConversation:
        history: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = self.previous
            if stored is None or stored.response.get("id") != previous:
                raise bad_request(f"previous_response_id {previous!r} is unknown here: it was "
                                  "never stored (store: false), expired or was evicted "
                                  "(RESPONSES_STORE_TTL, RESPONSES_STORE_BYTES), or the state "
                                  "store (STATE_STORE) could not be read. Send the full "
                                  "history in 'input' instead.",
                                  param="previous_response_id",
                                  code="previous_response_not_found")
            history = stored.history
        return parse_responses_request(body, history, images)

    def _reply(self, body: dict[str, Any], parsed: ResponsesConversation) -> ResponsesReply:
        def keep(response: dict[str, Any]) -> None:
            self.store.put(response, parsed.items + response["output"])

        return ResponsesReply(body, body["model"], parsed.tools,
                              keep if body.get("store") is not False else None)

    def conversation(self, body: dict[str, Any], config: Config) -> Conversation:
        parsed = self._parse(body)
        return Conversation(parsed.chat, self._reply(body, parsed), body)

    def groq_call(self, body: dict[str, Any], model: str, config: Config) -> GroqCall:
        parse_tools(body.get("tools"))  # the same 400s as for gpt-oss before deciding
        searches = server_tools(body.get("tools"))  # Groq's browser_search, through its chat
        if not searches and groq_can_take(body):
            return GroqCall("/responses", groq_responses_body(body, model))
        if has_mcp(body):
            raise bad_request("An mcp tool for a Groq model goes to Groq's Responses API, "
                              "which is stateless and takes function and mcp tools only: send "
                              "the full history in 'input' (no previous_response_id) without "
                              "custom or namespace tools.", param="tools",
                              code="unsupported_parameter")
        parsed = self._parse(body, images=True)
        chat_body, names = groq_chat_request(parsed.chat_body, model)
        chat_body = with_groq_code_tool(chat_body, body, self.name, model)
        chat_body = with_browser_search(chat_body, searches, model)
        return GroqCall("/chat/completions", chat_body, self._reply(body, parsed), names or None)

    async def stored(self, method: str, response_id: str) -> dict[str, Any]:
        """``GET`` or ``DELETE /v1/responses/{id}``."""
        if method == "DELETE":
            if await self.store.delete(response_id):
                return {"id": response_id, "object": "response", "deleted": True}
        elif (stored := await self.store.get(response_id)) is not None:
            return stored.response
        raise ProxyError(404, f"No stored response {response_id!r} (not kept when sent with "
                         "store: false; expired, evicted, or the state store could not be "
                         "read).",
                         code="response_not_found")
