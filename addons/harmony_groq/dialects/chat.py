"""OpenAI Chat Completions: ``chat.completion`` bodies and ``chat.completion.chunk`` streams."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..chat_request import (
    ChatRequest,
    ServerToolSpec,
    parse_chat_request,
    require_model_and_messages,
)
from ..completion import AssembledMessage, ChunkBuilder, completion_dict, reasoning_keys
from ..errors import ProxyError
from ..groq import sanitize_body
from ..parse import Event
from ..settings import Config
from ..sse import DONE, KEEPALIVE, encode_event
from ..tools.base import Citation, CiteEvent, StepEvent, StepRecord
from ..tools.browser.browser import browser_spec
from ..tools.code_history import chat_executed
from ..tools.groq_route import with_browser_search
from ..tools.items import chat_mapping
from .base import Conversation, GroqCall, OpenAIErrors, Outcome


def split_server_tools(body: dict[str, Any]) -> tuple[dict[str, Any], tuple[ServerToolSpec, ...]]:
    """Groq's ``{"type": "browser_search"}`` tool and OpenAI's ``web_search_options``: web
    search the proxy runs (harmony's browser); the body without them for the chat parser."""
    tools = body.get("tools")
    searches = [t for t in tools if isinstance(t, dict) and t.get("type") == "browser_search"] \
        if isinstance(tools, list) else []
    if not searches and not isinstance(body.get("web_search_options"), dict):
        return body, ()
    rest = {**body}
    if isinstance(tools, list):
        functions = [t for t in tools if t not in searches]
        rest["tools"] = functions or None
        if not functions:
            rest.pop("tool_choice", None)  # "required" meant the search
    return rest, (browser_spec(),)


def executed_tool(step: StepRecord, index: int) -> dict[str, Any] | None:
    mapping = chat_mapping(step.kind)
    return mapping.executed_tool(step, index) if mapping is not None else None


def url_citation(citation: Citation) -> dict[str, Any]:
    return {"type": "url_citation", "url_citation": {
        "start_index": citation.start_index, "end_index": citation.end_index,
        "title": citation.title, "url": citation.url}}


@dataclass
class ChatReply:
    """One chat completion, whole or as chunks; reasoning under the configured field names."""

    model: str
    keys: tuple[str, ...]
    include_usage: bool = False
    completion_id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))

    def __post_init__(self) -> None:
        self.builder = ChunkBuilder(self.completion_id, self.model, self.keys)
        self.steps = 0  # executed_tools entries sent

    @classmethod
    def for_request(cls, request: ChatRequest, reasoning_field: str) -> ChatReply:
        """The reply to ``request``, reasoning under ``reasoning_field`` unless it is hidden."""
        return cls(request.model, reasoning_keys(reasoning_field, request.hide_reasoning),
                   request.include_usage)

    def whole(self, message: AssembledMessage, outcome: Outcome) -> dict[str, Any]:
        reply = message.to_message(self.keys)
        executed = [entry for n, (_, step) in enumerate(message.steps)
                    if (entry := executed_tool(step, n)) is not None]
        if executed:
            reply["executed_tools"] = executed
        if message.citations:
            reply["annotations"] = [url_citation(c) for c in message.citations]
        return completion_dict(self.completion_id, self.model, reply, outcome.finish,
                               outcome.usage())

    def start(self, prompt_tokens: int = 0) -> list[bytes]:
        return [encode_event(self.builder.first())]

    def events(self, events: list[Event | StepEvent | CiteEvent]) -> list[bytes]:
        out = []
        for event in events:
            if isinstance(event, StepEvent):  # Groq's shape: the tool once it ran
                entry = executed_tool(event.step, self.steps) if event.phase == "finished" \
                    else None
                if entry is not None:
                    self.steps += 1
                    out.append(encode_event(self.builder.chunk({"executed_tools": [entry]})))
            elif isinstance(event, CiteEvent):
                out.append(encode_event(self.builder.chunk(
                    {"annotations": [url_citation(event.citation)]})))
            elif (chunk := self.builder.for_event(event)) is not None:
                out.append(encode_event(chunk))
        return out

    def finish(self, message: AssembledMessage, outcome: Outcome) -> list[bytes]:
        out = [encode_event(self.builder.last(outcome.finish))]
        if self.include_usage:
            out.append(encode_event(self.builder.usage(outcome.usage())))
        out.append(DONE)
        return out

    def fail(self, error: ProxyError) -> list[bytes]:
        return [error.sse_event()]

    def keepalive(self) -> bytes:
        return KEEPALIVE


class ChatDialect(OpenAIErrors):
    name = "chat"

    def model(self, body: dict[str, Any], config: Config) -> str:
        return require_model_and_messages(body)

    def conversation(self, body: dict[str, Any], config: Config) -> Conversation:
        functions, tools = split_server_tools(body)
        messages = [turn for index, message in enumerate(body["messages"])
                    for turn in (chat_executed(message, f"messages[{index}]")
                                 if isinstance(message, dict) else [message])]
        request = parse_chat_request({**functions, "messages": messages})
        if tools:
            request = dataclasses.replace(request, server_tools=tools)
        return Conversation(request, ChatReply.for_request(request, config.reasoning_field), body)

    def groq_call(self, body: dict[str, Any], model: str, config: Config) -> GroqCall:
        functions, searches = split_server_tools(body)
        return GroqCall("/chat/completions",
                        with_browser_search(sanitize_body(functions, model), searches, model))
