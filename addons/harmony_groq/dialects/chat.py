"""OpenAI Chat Completions: ``chat.completion`` bodies and ``chat.completion.chunk`` streams."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from ..chat_request import ChatRequest, parse_chat_request, require_model_and_messages
from ..completion import AssembledMessage, ChunkBuilder, completion_dict, reasoning_keys
from ..errors import ProxyError
from ..groq import sanitize_body
from ..parse import Event
from ..settings import Config
from ..sse import DONE, KEEPALIVE, encode_event
from ..tools import items
from ..tools.base import CiteEvent, StepEvent, StepRecord
from ..tools.code_history import chat_executed
from .base import Conversation, GroqCall, OpenAIErrors, Outcome


@dataclass
class ChatReply:
    """One chat completion, whole or as chunks; reasoning under the configured field names."""

    model: str
    keys: tuple[str, ...]
    include_usage: bool = False
    completion_id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))

    def __post_init__(self) -> None:
        self.builder = ChunkBuilder(self.completion_id, self.model, self.keys)
        self.executed = 0  # executed_tools entries streamed

    @classmethod
    def for_request(cls, request: ChatRequest, reasoning_field: str) -> ChatReply:
        """The reply to ``request``, reasoning under ``reasoning_field`` unless it is hidden."""
        return cls(request.model, reasoning_keys(reasoning_field, request.hide_reasoning),
                   request.include_usage)

    def whole(self, message: AssembledMessage, outcome: Outcome) -> dict[str, Any]:
        reply = message.to_message(self.keys)
        executed = [entry for index, (_, step) in enumerate(message.steps)
                    if (entry := _executed_tool(step, index)) is not None]
        if executed:  # server tools the proxy ran, in Groq's shape
            reply["executed_tools"] = executed
        return completion_dict(self.completion_id, self.model, reply, outcome.finish,
                               outcome.usage())

    def start(self, prompt_tokens: int = 0) -> list[bytes]:
        return [encode_event(self.builder.first())]

    def events(self, events: list[Event]) -> list[bytes]:
        out = []
        for event in events:
            if isinstance(event, StepEvent):
                if event.phase == "finished" and (
                        entry := _executed_tool(event.step, self.executed)) is not None:
                    self.executed += 1
                    out.append(encode_event(self.builder.chunk({"executed_tools": [entry]})))
            elif not isinstance(event, CiteEvent) and (
                    chunk := self.builder.for_event(event)) is not None:
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


def _executed_tool(step: StepRecord, index: int) -> dict[str, Any] | None:
    mapping = items.chat_mapping(step.kind)
    return mapping.executed_tool(step, index) if mapping is not None else None


class ChatDialect(OpenAIErrors):
    name = "chat"

    def model(self, body: dict[str, Any], config: Config) -> str:
        return require_model_and_messages(body)

    def conversation(self, body: dict[str, Any], config: Config) -> Conversation:
        messages = [turn for index, message in enumerate(body["messages"])
                    for turn in (chat_executed(message, f"messages[{index}]")
                                 if isinstance(message, dict) else [message])]
        request = parse_chat_request({**body, "messages": messages})
        return Conversation(request, ChatReply.for_request(request, config.reasoning_field), body)

    def groq_call(self, body: dict[str, Any], model: str, config: Config) -> GroqCall:
        return GroqCall("/chat/completions", sanitize_body(body, model))
