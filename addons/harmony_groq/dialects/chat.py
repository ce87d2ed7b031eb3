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

    @classmethod
    def for_request(cls, request: ChatRequest, reasoning_field: str) -> ChatReply:
        """The reply to ``request``, reasoning under ``reasoning_field`` unless it is hidden."""
        return cls(request.model, reasoning_keys(reasoning_field, request.hide_reasoning),
                   request.include_usage)

    def whole(self, message: AssembledMessage, outcome: Outcome) -> dict[str, Any]:
        return completion_dict(self.completion_id, self.model, message.to_message(self.keys),
                               outcome.finish, outcome.usage())

    def start(self, prompt_tokens: int = 0) -> list[bytes]:
        return [encode_event(self.builder.first())]

    def events(self, events: list[Event]) -> list[bytes]:
        return [encode_event(chunk) for event in events
                if (chunk := self.builder.for_event(event)) is not None]

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
        request = parse_chat_request(body)
        return Conversation(request, ChatReply.for_request(request, config.reasoning_field), body)

    def groq_call(self, body: dict[str, Any], model: str, config: Config) -> GroqCall:
        return GroqCall("/chat/completions", sanitize_body(body, model))
