"""Groq's streams read as they pass: the one reader of its chat-completion chunks, and the relays
that send Groq's own streams on unchanged (chat, Responses) while reading them for the flow log
and the metrics (tokens, time to first token, whether the stream ended).

``GroqChatReader`` is what both the chat relay here and ``GroqChatTranslator`` (groq_translate.py,
the other dialects) know of the chunk shape: deltas with reasoning, content and tool-call
pieces, ``finish_reason``, usage at the end (top level or in ``x_groq``), and Groq's
``x_groq.error`` or a top-level ``error``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .parse import ContentDelta, Event, ReasoningDelta, ToolCall
from .sse import SSEFramer
from .tools.groq_route import executed_steps


def reasoning_of(container: dict[str, Any]) -> str:
    """Groq's reasoning text (``reasoning``; ``reasoning_content`` as some clients send it)."""
    value = container.get("reasoning") or container.get("reasoning_content")
    return value if isinstance(value, str) else ""


def apply_reasoning_keys(container: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """Put Groq's ``reasoning`` under the configured field names (Cline reads only
    ``reasoning_content``); True if the container changed."""
    if "reasoning" not in container or keys == ("reasoning",):
        return False
    value = container.pop("reasoning")
    for key in keys:
        container[key] = value
    return True


@dataclass
class PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class GroqChatReader:
    """Groq's chat-completion chunks, one at a time: the text deltas of each as events, the
    tool calls assembled until the end, and how the stream ended."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, PendingCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: Any = None
    first_token_at: float | None = None
    chunks: int = 0

    def read(self, chunk: dict[str, Any]) -> list[Event]:
        """One parsed chunk: its reasoning and content deltas, in order."""
        self.chunks += 1
        x_groq = chunk.get("x_groq") if isinstance(chunk.get("x_groq"), dict) else {}
        error = chunk.get("error") or x_groq.get("error")
        if error:
            self.error = error
        usage = chunk.get("usage") or x_groq.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if reasoning := reasoning_of(delta):
                events.append(ReasoningDelta(reasoning))
                self.reasoning.append(reasoning)
            events += executed_steps(delta.get("executed_tools"))  # Groq's own browser
            if isinstance(delta.get("content"), str) and delta["content"]:
                events.append(ContentDelta(delta["content"]))
                self.content.append(delta["content"])
            for part in delta.get("tool_calls") or []:
                pending = self.calls.setdefault(part.get("index", len(self.calls)),
                                                PendingCall())
                function = part.get("function") or {}
                pending.id = part.get("id") or pending.id
                pending.name = function.get("name") or pending.name
                pending.arguments.append(function.get("arguments") or "")
                self._first()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if events:
            self._first()
        return events

    def _first(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.time()

    def tool_calls(self, names: dict[str, str]) -> list[ToolCall]:
        """The assembled calls, with Groq-safe names given back (``names``)."""
        return [ToolCall(n, c.id, names.get(c.name, c.name), "".join(c.arguments) or "{}")
                for n, c in enumerate(self.calls[i] for i in sorted(self.calls))]

    def message(self) -> dict[str, Any]:
        """The assembled message as Groq sent it, for the flow log."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": "".join(c.arguments)}
                for _, c in sorted(self.calls.items())]
        return message


_EVENT_END = re.compile(rb"\r?\n\r?\n")


class GroqStreamRelay:
    """Relays Groq's chat SSE event by event as it arrives (``flow.response.stream``), renaming
    reasoning fields as configured; reads it for the flow log."""

    def __init__(self, keys: tuple[str, ...] = ("reasoning", "reasoning_content")) -> None:
        self.keys = keys
        self.reader = GroqChatReader()
        self.buffer = b""
        self.done = False  # Groq's [DONE] went through
        self.unreadable = False

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if not data:
            rest, self.buffer = self.buffer, b""
            return rest or []
        self.buffer += data
        *events, self.buffer = _EVENT_END.split(self.buffer)
        out = [self._relay(raw) + b"\n\n" for raw in events]
        return b"".join(out) if out else []

    def _relay(self, raw: bytes) -> bytes:
        if not raw.startswith(b"data:"):
            return raw
        payload = raw[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return raw
        try:
            chunk = json.loads(payload)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            self.unreadable = True
            return raw
        self.reader.read(chunk)
        changed = False
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                changed |= apply_reasoning_keys(delta, self.keys)
        if not changed:
            return raw
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode()

    def summary(self) -> dict[str, Any]:
        """The assembled stream as plain data for the flow record."""
        reader = self.reader
        error = reader.error or ("unreadable Groq event" if self.unreadable else None)
        return {"message": reader.message(), "finish_reason": reader.finish_reason,
                "usage": reader.usage, "error": error, "first_token_at": reader.first_token_at,
                "events": reader.chunks}


_FIRST_OUTPUT = frozenset({"response.output_text.delta", "response.reasoning_text.delta",
                           "response.function_call_arguments.delta",
                           "response.refusal.delta"})
_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete"})


class GroqResponsesRelay:
    """Relays Groq's own Responses SSE unchanged (``flow.response.stream``); reads it for the
    flow log and the metrics: the first output delta (time to first token), the usage of the
    final response, and whether the stream ended (``response.completed``, ``.failed``,
    ``.incomplete``)."""

    def __init__(self) -> None:
        self.framer = SSEFramer()
        self.text: list[str] = []
        self.first_token_at: float | None = None
        self.usage: dict[str, Any] | None = None
        self.status: str | None = None
        self.error: Any = None
        self.done = False
        self.events = 0

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        for payload in self.framer.feed(data):
            self._read(payload)
        return data or []

    def _read(self, payload: str) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.error = self.error or "unreadable Groq event"
            return
        self.events += 1
        kind = event.get("type")
        if kind in _FIRST_OUTPUT and self.first_token_at is None:
            self.first_token_at = time.time()
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self.text.append(event["delta"])
        elif kind == "error":
            self.error = event.get("error") or event.get("message") or event
        elif kind in _ENDS:
            response = event.get("response") if isinstance(event.get("response"), dict) else {}
            self.done = True
            self.status = response.get("status")
            if isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
            if kind == "response.failed":
                self.error = response.get("error") or "Groq's response failed"

    def summary(self) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": "".join(self.text)},
                "finish_reason": self.status, "usage": self.usage, "error": self.error,
                "first_token_at": self.first_token_at, "events": self.events}
