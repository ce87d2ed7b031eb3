"""One response's server tools: the tools built for it, its steps, the cap, the prompt of the
next step, and the citations of its answer. Dialect- and backend-neutral; ``loop.py`` drives
it along a stream or a whole reply."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from openai_harmony import Author, Message, Role

from ..encoding import harmony_encoding
from ..parse import ContentDelta, Event
from ..render import HarmonyPrompt, neutralize_special_tokens
from ..tools.base import (
    Citation,
    CiteEvent,
    ServerCall,
    ServerTool,
    StepEvent,
    StepRecord,
    ToolOutput,
)

logger = logging.getLogger(__name__)
CALL_TEXT = "<|call|>"
NEXT_TURN = "<|start|>assistant"
CAP_TEXT = ("The tool limit of this response was reached ({n} tool calls). Answer now with what "
            "you have, without calling any tool.")
_MARKER = re.compile(r"【([^【】]{1,40})】")
_MAX_MARKER = 42


@functools.cache
def _control_ids() -> tuple[list[int], list[int]]:
    """``<|call|>`` and ``<|start|>assistant`` as ids (each encode call costs ~250 µs)."""
    encoding = harmony_encoding()
    return (encoding.encode(CALL_TEXT, allowed_special="all"),
            encoding.encode(NEXT_TURN, allowed_special="all"))


class ToolSession:
    """The server tools of one response (``tools``, by namespace), at most ``max_steps``
    steps: at the cap the model is told to answer without tools, and a call after that ends
    the generation."""

    def __init__(self, tools: dict[str, ServerTool], max_steps: int) -> None:
        self.tools = tools
        self.max_steps = max_steps
        # Steps run before the generation (an MCP server's listing, approved calls): shown
        # first, logged with the others, not counted against the cap.
        self.opening: list[StepRecord] = [step for tool in tools.values()
                                          for step in getattr(tool, "opening", ())]
        self.steps: list[StepRecord] = list(self.opening)
        self.refused_after_cap = False
        self.generated_ids_mark = 0  # how much of the reply's generation earlier steps used
        self.generated_text_mark = 0

    def used(self) -> int:
        return len(self.steps) - len(self.opening)

    def over_cap(self) -> bool:
        """The model called again after it was told to answer without tools."""
        return self.refused_after_cap

    def started(self, call: ServerCall) -> StepRecord:
        tool = self.tools.get(call.namespace)
        if tool is None or self.used() >= self.max_steps:
            return StepRecord(kind=tool.kind if tool else "tool", action=call.action)
        return tool.started(call)

    async def step(self, call: ServerCall, emit: Callable[[list[StepEvent]], object]
                   ) -> ToolOutput:
        """One step: its item started (``emit``), the tool run, its item finished."""
        step = self.started(call)
        emit([StepEvent(step, "started")])
        output = await self.run(call, step)
        emit([StepEvent(step, "finished")])
        return output

    async def run(self, call: ServerCall, step: StepRecord) -> ToolOutput:
        """Run ``call`` (or refuse it at the cap); the step records its time."""
        begun = time.monotonic()
        tool = self.tools.get(call.namespace)
        if self.used() >= self.max_steps:
            self.refused_after_cap = True
            output = ToolOutput(CAP_TEXT.format(n=self.max_steps),
                                step.fail("max_steps", "tool limit reached"))
        elif tool is None:
            output = ToolOutput(f"Unknown tool {call.recipient!r}.",
                                step.fail("invalid_tool_input", "unknown tool"))
        else:
            try:
                output = await tool.run(call, step)
            except Exception as exc:  # a tool's bug must not break the reply
                logger.exception("server tool %s failed", call.recipient)
                output = ToolOutput(f"The tool failed ({type(exc).__name__}).",
                                    step.fail("unavailable", f"{type(exc).__name__}"))
        if step.status == "in_progress":
            step.status = "completed"
        step.duration_ms = (time.monotonic() - begun) * 1000
        self.steps.append(step)
        return output

    def next_prompt(self, prompt: HarmonyPrompt, generated_ids: list[int], generated_text: str,
                    call: ServerCall, tool_text: str, text_transport: bool) -> HarmonyPrompt:
        """The prompt of the next step: this one, what the model generated (closed by
        ``<|call|>``), the tool's message, and ``<|start|>assistant``. Fetched text is data:
        special-token strings in it are made inert, so it cannot end the tool's message."""
        encoding = harmony_encoding()
        message = (Message.from_author_and_content(Author.new(Role.TOOL, call.recipient),
                                                   neutralize_special_tokens(tool_text))
                   .with_channel(call.channel).with_recipient("assistant"))
        tool_ids = encoding.render(message)
        call_token, next_ids = _control_ids()
        if not text_transport:
            ids = list(generated_ids)
            if not ids or ids[-1] != call_token[0]:
                ids += call_token
            token_ids = prompt.token_ids + ids + tool_ids + next_ids
            text = prompt.text + encoding.decode_utf8(ids + tool_ids + next_ids)
        else:
            text = generated_text if generated_text.endswith(CALL_TEXT) else (
                generated_text + CALL_TEXT)
            text = prompt.text + text + encoding.decode_utf8(tool_ids) + NEXT_TURN
            token_ids = prompt.token_ids + encoding.encode(
                text[len(prompt.text):], allowed_special="all")
        return dataclasses.replace(prompt, token_ids=token_ids, text=text, prefill_ids=())

    def cite(self, marker: str) -> Citation | None:
        for tool in self.tools.values():
            cite = getattr(tool, "cite", None)
            if cite is not None and (citation := cite(marker)) is not None:
                return citation
        return None

    def log(self) -> list[dict[str, Any]]:
        return [step.log() for step in self.steps]


class OpeningSteps:
    """Passes events to ``then`` (the citation filter), the steps run before the generation
    first: each reply shows them before anything the model wrote."""

    def __init__(self, steps: list[StepRecord], then: Callable[[list[Any]], list[Any]]) -> None:
        self.pending: list[Any] = [StepEvent(step, phase) for step in steps
                                   for phase in ("started", "finished")]
        self.then = then

    def __call__(self, events: list[Any]) -> list[Any]:
        if self.pending:
            opening, self.pending = self.pending, []
            return opening + self.then(events)
        return self.then(events)

    def flush(self) -> list[Any]:
        flush = getattr(self.then, "flush", None)
        return self.pending + (flush() if flush is not None else [])


class CitationFilter:
    """Answer text in, answer text out without harmony's ``【cursor†L1-L4】`` markers, each
    resolved marker a ``CiteEvent`` spanning the text since the last citation or line break.
    A marker is held back until it closes (at most ``_MAX_MARKER`` characters), so a stream
    never shows half of one; unknown markers stay in the text."""

    def __init__(self, cite: Callable[[str], Citation | None]) -> None:
        self.cite = cite
        self.pending = ""
        self.emitted = 0  # characters of answer sent
        self.segment_start = 0

    def __call__(self, events: list[Event]) -> list[Any]:
        if not any(isinstance(e, ContentDelta) for e in events):
            return events
        out: list[Any] = []
        for event in events:
            if isinstance(event, ContentDelta):
                self._text(event.text, out)
            else:
                out.append(event)
        return out

    def flush(self) -> list[Any]:
        out: list[Any] = []
        if self.pending:
            pending, self.pending = self.pending, ""
            self._emit(pending, out)
        return out

    def _text(self, text: str, out: list[Any]) -> None:
        buffer = self.pending + text
        self.pending = ""
        while buffer:
            at = buffer.find("【")
            if at < 0:
                self._emit(buffer, out)
                return
            if at:
                self._emit(buffer[:at], out)
                buffer = buffer[at:]
            match = _MARKER.match(buffer)
            if match is None:
                if "】" not in buffer[1:] and len(buffer) < _MAX_MARKER and "【" not in buffer[1:]:
                    self.pending = buffer  # may still close
                    return
                self._emit(buffer[0], out)
                buffer = buffer[1:]
                continue
            citation = self.cite(match.group(1))
            if citation is None:
                self._emit(match.group(0), out)
            else:
                out.append(CiteEvent(dataclasses.replace(
                    citation, start_index=self.segment_start, end_index=self.emitted)))
                self.segment_start = self.emitted
            buffer = buffer[match.end():]

    def _emit(self, text: str, out: list[Any]) -> None:
        if not text:
            return
        line = text.rfind("\n")
        if line >= 0:
            self.segment_start = self.emitted + line + 1
        self.emitted += len(text)
        out.append(ContentDelta(text))
