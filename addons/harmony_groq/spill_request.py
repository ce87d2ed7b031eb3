"""A gpt-oss conversation as a request for Groq's twin, and the reply written back in the
local model's shape.

The request is built from the parsed conversation (``ChatRequest``, what the harmony renderer
takes), so every dialect spills the same way: messages with the open tool chain's reasoning as
the assistant ``reasoning`` Groq's chat API accepts, tools, tool choice, effort, response format,
sampling and stream; then ``groq_chat_request`` does what every Groq-bound chat body gets. What
Groq does not get is said in ``notes``. ``SpillReply`` wraps the dialect's own reply writer: the
client sees the shape a local reply has, with tool-call ids the proxy gives out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .chat_request import ChatRequest
from .completion import AssembledMessage
from .dialects.base import Outcome, ReplyWriter
from .errors import ProxyError
from .groq import MAX_STOP, groq_chat_request
from .parse import Event, ToolCall, new_call_id
from .render import reasoning_of
from .tools.groq_route import with_browser_search

_REASONING_KEYS = ("reasoning", "reasoning_content", "thinking", "reasoning_details")


def _final_answer(message: dict[str, Any]) -> bool:
    return (message.get("role") == "assistant" and not message.get("tool_calls")
            and bool(message.get("content")))


def carry_reasoning(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Assistant reasoning as Groq takes it (one ``reasoning`` string) for the open tool chain
    (after the last final answer); earlier reasoning left out, as harmony drops it; notes say
    what was left out."""
    start = next((n + 1 for n in range(len(messages) - 1, -1, -1)
                  if _final_answer(messages[n])), 0)
    out, notes = [], []
    for n, message in enumerate(messages):
        if message.get("role") != "assistant" or not any(k in message for k in _REASONING_KEYS):
            out.append(message)
            continue
        reasoning = reasoning_of(message)
        kept = {k: v for k, v in message.items() if k not in _REASONING_KEYS}
        details = message.get("reasoning_details")
        if isinstance(details, list) and any(
                isinstance(d, dict) and d.get("type") != "reasoning.text" for d in details):
            notes.append(f"dropped: messages[{n}] reasoning_details other than reasoning.text "
                         "(encrypted or summaries): Groq's chat API takes reasoning as text only")
        if reasoning and n >= start:
            kept["reasoning"] = reasoning
        elif reasoning:
            notes.append(f"dropped: messages[{n}] reasoning ({len(reasoning)} characters), "
                         "before the last final answer (harmony drops it too)")
        out.append(kept)
    return out, notes


def spill_body(request: ChatRequest, twin: str, max_completion: int | None
               ) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Groq's chat body for ``request`` on ``twin``, the tool-name map, and notes on what
    differs from the local request."""
    messages, notes = carry_reasoning(request.messages)
    body: dict[str, Any] = {"model": twin, "messages": messages, "stream": request.stream,
                            "reasoning_effort": request.reasoning_effort}
    if request.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description,
            "parameters": t.parameters or {"type": "object", "properties": {}}}}
            for t in request.tools]
        body["tool_choice"] = ({"type": "function", "function": {"name": request.forced_tool}}
                               if request.forced_tool else request.tool_choice)
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format:
        body["response_format"] = request.response_format
    if request.stop:
        body["stop"] = list(request.stop)
        if len(request.stop) > MAX_STOP:
            notes.append(f"dropped: stop strings past Groq's {MAX_STOP}: "
                         f"{list(request.stop[MAX_STOP:])}")
    if max_completion is not None and max_completion != request.max_tokens:
        notes.append(f"changed: max_completion_tokens {max_completion} (asked: "
                     f"{request.max_tokens or 'none'}), capped by SPILLOVER_BUDGET_TOKENS")
    for key, value in (("max_completion_tokens", max_completion or request.max_tokens),
                       ("temperature", request.temperature), ("top_p", request.top_p),
                       ("seed", request.seed)):
        if value is not None:
            body[key] = value
    body, names = groq_chat_request(body, twin)
    return with_browser_search(body, request.server_tools, twin), names, notes


@dataclasses.dataclass
class SpillReply:
    """The dialect's reply writer for a spilled request: Groq's tool-call ids replaced by ones
    the proxy gives out (unique, so they can mark the conversation as spilled), and
    ``on_done`` told the finished message."""

    inner: ReplyWriter
    on_done: Callable[[AssembledMessage], None]
    ids: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.inner.keys

    def _call(self, event: Event) -> Event:
        if not isinstance(event, ToolCall):
            return event
        key = event.id or f"#{event.index}"
        if key not in self.ids:
            self.ids[key] = new_call_id()
        return dataclasses.replace(event, id=self.ids[key])

    def _own(self, message: AssembledMessage) -> AssembledMessage:
        calls: list[ToolCall] = [self._call(c) for c in message.tool_calls]  # type: ignore[misc]
        own = dataclasses.replace(message, tool_calls=calls)
        self.on_done(own)
        return own

    def whole(self, message: AssembledMessage, outcome: Outcome) -> dict[str, Any]:
        return self.inner.whole(self._own(message), outcome)

    def start(self, prompt_tokens: int = 0) -> list[bytes]:
        return self.inner.start(prompt_tokens)

    def events(self, events: list[Event]) -> list[bytes]:
        return self.inner.events([self._call(e) for e in events])

    def finish(self, message: AssembledMessage, outcome: Outcome) -> list[bytes]:
        return self.inner.finish(self._own(message), outcome)

    def fail(self, error: ProxyError) -> list[bytes]:
        return self.inner.fail(error)

    def keepalive(self) -> bytes:
        return self.inner.keepalive()
