"""Decoder events → OpenAI ``chat.completion`` and ``chat.completion.chunk`` objects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .parse import ContentDelta, Event, ReasoningDelta, ToolCall
from .tools.base import Citation, CiteEvent, StepEvent, StepRecord


def reasoning_keys(setting: str, hidden: bool) -> tuple[str, ...]:
    """Which fields carry reasoning: the ``reasoning_field`` setting, or none when hidden."""
    if hidden or setting == "none":
        return ()
    if setting == "both":
        return ("reasoning", "reasoning_content")
    return (setting,)


def finish_reason(*, truncated: bool, stopped: bool, tool_calls: int) -> str:
    if stopped:
        return "stop"
    if truncated:
        return "length"
    return "tool_calls" if tool_calls else "stop"


def tool_call_dict(call: ToolCall, with_index: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if with_index:
        entry = {"index": call.index, **entry}
    return entry


@dataclass
class AssembledMessage:
    """The OpenAI assistant message the events add up to."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    # Server-tool steps (finished), each after the reasoning pieces before it; citations of
    # the answer (offsets in the joined content).
    steps: list[tuple[int, StepRecord]] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)

    def add(self, events: list[Event | StepEvent | CiteEvent]) -> None:
        for event in events:
            if isinstance(event, ContentDelta):
                self.content.append(event.text)
            elif isinstance(event, ReasoningDelta):
                self.reasoning.append(event.text)
            elif isinstance(event, ToolCall):
                self.tool_calls.append(event)
            elif isinstance(event, StepEvent):
                if event.phase == "finished":
                    self.steps.append((len(self.reasoning), event.step))
            else:
                self.citations.append(event.citation)

    def reasoning_around_steps(self) -> list[str | StepRecord]:
        """The reasoning texts and the steps in the order they happened."""
        parts: list[str | StepRecord] = []
        start = 0
        for end, step in self.steps:
            if end > start:
                parts.append("".join(self.reasoning[start:end]))
            parts.append(step)
            start = end
        if len(self.reasoning) > start:
            parts.append("".join(self.reasoning[start:]))
        return parts

    def to_message(self, keys: tuple[str, ...]) -> dict[str, Any]:
        content = "".join(self.content)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if (self.tool_calls and not content) else content,
        }
        reasoning = "".join(self.reasoning)
        if reasoning:
            for key in keys:
                message[key] = reasoning
        if self.tool_calls:
            message["tool_calls"] = [tool_call_dict(c, with_index=False) for c in self.tool_calls]
        return message


def completion_dict(completion_id: str, model: str, message: dict[str, Any], finish: str,
                    usage: dict) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish}],
        "usage": usage,
    }


@dataclass
class ChunkBuilder:
    """Builds the chunks of one streamed completion; reasoning and content never share one."""

    completion_id: str
    model: str
    keys: tuple[str, ...]
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}],
        }

    def first(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def for_event(self, event: Event) -> dict[str, Any] | None:
        if isinstance(event, ContentDelta):
            return self.chunk({"content": event.text})
        if isinstance(event, ReasoningDelta):
            if not self.keys:
                return None
            return self.chunk({key: event.text for key in self.keys})
        return self.chunk({"tool_calls": [tool_call_dict(event, with_index=True)]})

    def last(self, finish: str) -> dict[str, Any]:
        return self.chunk({}, finish)

    def usage(self, usage: dict) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }
