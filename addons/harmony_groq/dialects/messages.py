"""Anthropic Messages (``/v1/messages``), the API Claude Code speaks: to gpt-oss through the
chat conversation form, to Groq through its chat API; errors, model list and token counts in
Anthropic's shapes (``shared/reference/anthropic-messages.md``)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from ..chat_request import ChatRequest, parse_chat_request
from ..errors import ProxyError, bad_request
from ..groq import groq_chat_request
from ..settings import Config
from ..tools.groq_code import with_groq_code_tool
from ..tools.groq_route import with_browser_search
from .base import Conversation, GroqCall
from .messages_reply import MessagesReply, error_body, error_status
from .messages_request import (
    Images,
    chat_body,
    forced_server_tool,
    require_max_tokens,
    require_model_and_roles,
    resolve_model,
    server_tools,
    thinking_hidden,
)


def anthropic_models(models: list[dict[str, Any]]) -> dict[str, Any]:
    """``/v1/models`` as Anthropic lists models (Claude Code's model discovery reads only this
    shape), from the OpenAI-shaped entries."""
    data = [{"type": "model", "id": m["id"], "display_name": m["id"],
             "created_at": datetime.datetime.fromtimestamp(
                 m.get("created") or 0, datetime.UTC).isoformat().replace("+00:00", "Z")}
            for m in models]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


class MessagesDialect:
    name = "messages"

    def model(self, body: dict[str, Any], config: Config) -> str:
        return resolve_model(require_model_and_roles(body), config.claude_model_map)

    def chat(self, body: dict[str, Any], config: Config, images: Images = "refuse"
             ) -> ChatRequest:
        """The request in the chat form the renderer takes (``images="placeholder"``: to
        estimate a Groq request's size in tokens)."""
        request = parse_chat_request(chat_body(body, self.model(body, config), images))
        tools = server_tools(body)
        if not tools:
            return request
        forced = forced_server_tool(body)
        return dataclasses.replace(request, server_tools=tools, **(
            {"tool_choice": "named", "forced_tool": forced} if forced else {}))

    def conversation(self, body: dict[str, Any], config: Config) -> Conversation:
        request = self.chat(body, config)
        require_max_tokens(body)
        return Conversation(request, MessagesReply(request.model, request.stop,
                                                   not thinking_hidden(body)), body)

    def groq_call(self, body: dict[str, Any], model: str, config: Config) -> GroqCall:
        require_max_tokens(body)
        if body.get("mcp_servers"):
            raise bad_request("mcp_servers is served for gpt-oss models here; for a Groq model "
                              "use the Responses API's mcp tool (Groq runs it).",
                              param="mcp_servers", code="unsupported_parameter")
        request, names = groq_chat_request(chat_body(body, model, "pass"), model)
        request = with_groq_code_tool(request, body, self.name, model)
        request = with_browser_search(request, server_tools(body), model)
        reply = MessagesReply(self.model(body, config), tuple(request.get("stop") or ()),
                              not thinking_hidden(body))
        return GroqCall("/chat/completions", request, reply, names or None)

    def error_body(self, error: ProxyError) -> dict[str, Any]:
        return error_body(error)

    def error_status(self, error: ProxyError) -> int:
        return error_status(error)
