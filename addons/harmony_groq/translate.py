"""One gpt-oss exchange: the rendered prompt, the backend, and the reply built from its output."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend, BackendOutput
from .chat_request import ChatRequest
from .completion import (
    AssembledMessage,
    completion_dict,
    finish_reason,
    reasoning_keys,
    usage_dict,
)
from .encoding import harmony_encoding
from .parse import Event, HarmonyDecoder
from .reasoning_memory import ReasoningMemory
from .render import HarmonyPrompt


@dataclass
class HarmonyExchange:
    """Everything the response side of a gpt-oss flow needs, made in the request hook."""

    request: ChatRequest
    prompt: HarmonyPrompt
    backend: Backend
    reasoning_field: str
    completion_id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    memory: ReasoningMemory | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return reasoning_keys(self.reasoning_field, self.request.hide_reasoning)

    def new_decoder(self) -> HarmonyDecoder:
        decoder = HarmonyDecoder(
            harmony_encoding(),
            tool_names=self.prompt.tool_names,
            declared_tools=self.prompt.declared_tools,
            allow_tool_calls=self.request.tool_choice != "none",
            single_tool_call=not self.request.parallel_tool_calls,
            stop=self.request.stop,
        )
        for token in self.prompt.prefill_ids:  # a forced call's header: part of the reply
            decoder.feed(token)
        return decoder

    def remember(self, message: AssembledMessage) -> None:
        """A finished reply's analysis, kept for the calls its client may send back without it."""
        if self.memory is not None:
            self.memory.remember("".join(message.reasoning), message.tool_calls)

    def usage(self, output_prompt_tokens: int | None, completion_tokens: int,
              reasoning_tokens: int) -> dict[str, Any]:
        prompt_tokens = output_prompt_tokens or len(self.prompt.token_ids)
        return usage_dict(prompt_tokens, completion_tokens, reasoning_tokens)


def feed_output(decoder: HarmonyDecoder, output: BackendOutput) -> list[Event]:
    """Token ids when the backend gives them, else the text re-encoded with specials allowed."""
    if output.token_ids is not None:
        events: list[Event] = []
        for token in output.token_ids:
            events.extend(decoder.feed(token))
        return events
    return decoder.feed_text(output.text) if output.text else []


@dataclass
class TranslatedCompletion:
    body: dict[str, Any]
    repairs: list[str]


def translate_completion(exchange: HarmonyExchange, output: BackendOutput) -> TranslatedCompletion:
    """A whole (non-streamed) backend completion → an OpenAI ``chat.completion``."""
    decoder = exchange.new_decoder()
    message = AssembledMessage()
    message.add(feed_output(decoder, output))
    message.add(decoder.finish(output.truncated))
    exchange.remember(message)
    completion_tokens = output.completion_tokens
    if completion_tokens is None:
        completion_tokens = len(harmony_encoding().encode(output.text, allowed_special="all"))
    finish = finish_reason(truncated=output.truncated, stopped=decoder.stopped,
                           tool_calls=len(message.tool_calls))
    body = completion_dict(
        exchange.completion_id, exchange.request.model, message.to_message(exchange.keys),
        finish, exchange.usage(output.prompt_tokens, completion_tokens, decoder.reasoning_tokens),
    )
    return TranslatedCompletion(body, decoder.repairs)
