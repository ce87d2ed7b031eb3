"""One gpt-oss exchange: the rendered prompt, the backend, and the reply built from its output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backends import Backend, BackendOutput
from .chat_request import ChatRequest
from .completion import AssembledMessage, finish_reason
from .dialects.base import Outcome, ReplyWriter
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
    reply: ReplyWriter  # the client API's writer of this reply
    memory: ReasoningMemory | None = None  # where issued calls' analysis is remembered

    def new_decoder(self) -> HarmonyDecoder:
        decoder = HarmonyDecoder(
            harmony_encoding(),
            tool_names=self.prompt.tool_names,
            declared_tools=self.prompt.declared_tools,
            allow_tool_calls=self.request.tool_choice != "none",
            single_tool_call=not self.request.parallel_tool_calls,
            stop=self.request.stop,
            server_tools=self.prompt.server_tools,
            final_only=(self.request.response_format or {}).get("type") == "json_schema",
        )
        for token in self.prompt.prefill_ids:  # a forced call's header: part of the reply
            decoder.feed(token)
        return decoder

    def remember(self, message: AssembledMessage) -> None:
        """Keep the analysis before the reply's tool calls, for clients that drop it."""
        if self.memory is not None:
            self.memory.remember("".join(message.reasoning), message.tool_calls)

    def outcome(self, decoder: HarmonyDecoder, message: AssembledMessage, output: BackendOutput,
                completion_tokens: int) -> Outcome:
        """How the reply ended; token counts as the backend reported them when it did."""
        finish = finish_reason(truncated=output.truncated and not decoder.stopped,
                               stopped=decoder.stopped, tool_calls=len(message.tool_calls))
        return Outcome(finish, output.prompt_tokens or len(self.prompt.token_ids),
                       output.completion_tokens or completion_tokens, decoder.reasoning_tokens,
                       decoder.stopped, decoder.stop_matcher.match, output.cached_tokens)


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
    message: AssembledMessage
    outcome: Outcome


def translate_completion(exchange: HarmonyExchange, output: BackendOutput) -> TranslatedCompletion:
    """A whole (non-streamed) backend completion → the client API's reply body."""
    decoder = exchange.new_decoder()
    message = AssembledMessage()
    message.add(feed_output(decoder, output))
    message.add(decoder.finish(output.truncated))
    exchange.remember(message)
    completion_tokens = output.completion_tokens
    if completion_tokens is None:
        completion_tokens = len(harmony_encoding().encode(output.text, allowed_special="all"))
    outcome = exchange.outcome(decoder, message, output, completion_tokens)
    return TranslatedCompletion(exchange.reply.whole(message, outcome), decoder.repairs,
                                message, outcome)
