"""Responses API replies: the ``response`` object, and its event stream token by token.

The stream follows the grammar Codex and the openai SDK read
(``shared/reference/responses-api.md`` §1.7): ``response.created`` first, every item
``output_item.added`` before its deltas and ``output_item.done`` after them, then
``response.completed`` (or ``response.incomplete``/``response.failed``) and the end of the
body. Each frame carries ``event:`` and a ``sequence_number``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..completion import AssembledMessage
from ..errors import ProxyError
from ..parse import Event, ReasoningDelta, ToolCall
from ..tools.base import Citation, CiteEvent, StepEvent, StepRecord
from ..tools.items import responses_mapping
from ..tools.mcp.secrets import public_tools
from .base import Outcome
from .responses_request import ToolKind


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_of(outcome: Outcome) -> dict[str, Any]:
    return {
        "input_tokens": outcome.prompt_tokens,
        "input_tokens_details": {"cached_tokens": outcome.cached_tokens or 0},
        "output_tokens": outcome.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "encrypted_content": None}


def message_item(item_id: str, text: str, status: str = "completed",
                 annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": annotations or [],
                "logprobs": []}]
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": content if status == "completed" else []}


def url_citation(citation: Citation, base: int = 0) -> dict[str, Any]:
    """An ``output_text`` annotation; ``base``: where the item's text starts in the answer."""
    return {"type": "url_citation", "start_index": max(citation.start_index - base, 0),
            "end_index": max(citation.end_index - base, 0), "title": citation.title,
            "url": citation.url}


def step_item(step: StepRecord) -> dict[str, Any] | None:
    mapping = responses_mapping(step.kind)
    return mapping.item(step, step.status) if mapping is not None else None


def call_item(call: ToolCall, kind: ToolKind | None, status: str = "completed"
              ) -> dict[str, Any]:
    """A function call, or a custom tool call whose ``input`` is the raw text."""
    done = status == "completed"
    name = kind.name if kind else call.name
    if kind is not None and kind.custom:
        item: dict[str, Any] = {"type": "custom_tool_call", "id": _item_id("ctc", call.id),
                                "call_id": call.id, "name": name,
                                "input": custom_input(call.arguments) if done else "",
                                "status": status}
    else:
        item = {"type": "function_call", "id": _item_id("fc", call.id), "call_id": call.id,
                "name": name, "arguments": call.arguments if done else "", "status": status}
    if kind is not None and kind.namespace:
        item["namespace"] = kind.namespace
    return item


def _item_id(prefix: str, call_id: str) -> str:
    return f"{prefix}_{call_id.removeprefix('call_')}"


def custom_input(arguments: str) -> str:
    """The raw text of a custom tool call: ``input`` of the JSON the model wrote, or the text."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return arguments


@dataclass
class ResponsesReply:
    """One Responses reply, whole or streamed; ``on_complete`` stores it when asked to."""

    request: dict[str, Any]  # the client's body: echoed fields of the response object
    model: str
    tools: dict[str, ToolKind]
    on_complete: Callable[[dict[str, Any]], None] | None = None
    response_id: str = field(default_factory=lambda: new_id("resp"))
    keys: tuple[str, ...] = ("reasoning",)

    def __post_init__(self) -> None:
        self.created_at = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.open_text: list[str] = []
        self.delta_template: tuple[bytes, tuple[bytes, bytes]] = (b"", (b"", b""))
        self.annotations: list[dict[str, Any]] = []  # the open message's
        self.answered = 0  # characters of answer text sent (citations count from here)
        self.item_base = 0  # where the open message's text starts in the answer

    # -- the response object ---------------------------------------------------------------

    def response(self, status: str, output: list[dict[str, Any]],
                 outcome: Outcome | None = None, error: dict | None = None) -> dict[str, Any]:
        body = self.request
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at,
            "status": status, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete"
            else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model, "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": None},
            "store": body.get("store") is not False,
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": public_tools(body.get("tools") or []),
            "truncation": "disabled", "metadata": body.get("metadata") or {},
            "usage": usage_of(outcome) if outcome else None,
        }

    def _complete(self, output: list[dict[str, Any]], outcome: Outcome) -> dict[str, Any]:
        status = "incomplete" if outcome.finish == "length" else "completed"
        response = self.response(status, output, outcome)
        if self.on_complete is not None:
            self.on_complete(response)
        return response

    def whole(self, message: AssembledMessage, outcome: Outcome) -> dict[str, Any]:
        output = []
        for part in message.reasoning_around_steps():
            if isinstance(part, str):
                output.append(reasoning_item(new_id("rs"), part))
            elif (item := step_item(part)) is not None:
                output.append(item)
        if message.content:
            output.append(message_item(new_id("msg"), "".join(message.content), "completed",
                                       [url_citation(c) for c in message.citations]))
        output += [call_item(call, self.tools.get(call.name)) for call in message.tool_calls]
        return self._complete(output, outcome)

    # -- the stream -------------------------------------------------------------------------

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return (f"event: {kind}\ndata: ".encode()
                + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n")

    def start(self, prompt_tokens: int = 0) -> list[bytes]:
        response = self.response("in_progress", [])
        return [self._event("response.created", {"response": response}),
                self._event("response.in_progress", {"response": response})]

    def keepalive(self) -> bytes:
        """An event, not a comment: Codex's idle timer counts parsed events only."""
        return self._event("response.in_progress",
                           {"response": self.response("in_progress", list(self.output))})

    def events(self, events: list[Event | StepEvent | CiteEvent]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, ToolCall):
                self._close(out)
                self._call(event, out)
                continue
            if isinstance(event, StepEvent):
                self._step(event, out)
                continue
            if isinstance(event, CiteEvent):
                self._cite(event, out)
                continue
            kind = "reasoning" if isinstance(event, ReasoningDelta) else "message"
            if self.open is None or self.open["type"] != kind:
                self._close(out)
                self._open(kind, out)
            if kind == "message":
                self.answered += len(event.text)
            self.open_text.append(event.text)
            out.append(self._delta(event.text))
        return out

    def _step(self, event: StepEvent, out: list[bytes]) -> None:
        """A tool step's item: added with its progress events before the tool runs, its
        last progress event and ``output_item.done`` after."""
        mapping = responses_mapping(event.step.kind)
        if mapping is None:
            return
        step = event.step
        if event.phase == "started":
            self._close(out)  # an open reasoning or message item ends first: index after it
        index = len(self.output)
        if event.phase == "started":
            out.append(self._event("response.output_item.added", {
                "output_index": index, "item": mapping.item(step, "in_progress")}))
        for kind, fields in mapping.progress(step, event.phase):
            out.append(self._event(kind, {"item_id": step.id, "output_index": index, **fields}))
        if event.phase == "finished":
            self._done(mapping.item(step, step.status), out)

    def _cite(self, event: CiteEvent, out: list[bytes]) -> None:
        if self.open is None or self.open["type"] != "message":
            return
        annotation = url_citation(event.citation, self.item_base)
        out.append(self._event("response.output_text.annotation.added", {
            "item_id": self.open["id"], "output_index": len(self.output), "content_index": 0,
            "annotation_index": len(self.annotations), "annotation": annotation}))
        self.annotations.append(annotation)

    def _delta(self, text: str) -> bytes:
        """A text delta event, from a template made when its item opened (the hot path: one
        per token)."""
        head, tail = self.delta_template
        frame = b"%s%d%s%s%s" % (head, self.sequence, tail[0],
                                 json.dumps(text, ensure_ascii=False).encode(), tail[1])
        self.sequence += 1
        return frame

    def _open(self, kind: str, out: list[bytes]) -> None:
        if kind == "reasoning":
            self.open = {"type": "reasoning", "id": new_id("rs"), "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        else:
            self.open = message_item(new_id("msg"), "", "in_progress")
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self.annotations, self.item_base = [], self.answered
        self.open_text = []
        index = len(self.output)
        delta = f"response.{'reasoning_text' if kind == 'reasoning' else 'output_text'}.delta"
        extra = ', "logprobs": []' if kind == "message" else ""
        self.delta_template = (
            f'event: {delta}\ndata: {{"type": "{delta}", "sequence_number": '.encode(),
            (f', "item_id": "{self.open["id"]}", "output_index": {index}, '
             '"content_index": 0, "delta": '.encode(), f"{extra}}}\n\n".encode()))
        out.append(self._event("response.output_item.added",
                               {"output_index": index, "item": self.open}))
        out.append(self._event("response.content_part.added", {
            "item_id": self.open["id"], "output_index": index, "content_index": 0,
            "part": part}))

    def _close(self, out: list[bytes]) -> None:
        if self.open is None:
            return
        text, index, item_id = "".join(self.open_text), len(self.output), self.open["id"]
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        if self.open["type"] == "reasoning":
            item = reasoning_item(item_id, text)
            out.append(self._event("response.reasoning_text.done", {**where, "text": text}))
        else:
            item = message_item(item_id, text, "completed", self.annotations)
            out.append(self._event("response.output_text.done",
                                   {**where, "text": text, "logprobs": []}))
        out.append(self._event("response.content_part.done",
                               {**where, "part": item["content"][0]}))
        self._done(item, out)
        self.open = None

    def _done(self, item: dict[str, Any], out: list[bytes]) -> None:
        out.append(self._event("response.output_item.done",
                               {"output_index": len(self.output), "item": item}))
        self.output.append(item)

    def _call(self, call: ToolCall, out: list[bytes]) -> None:
        kind = self.tools.get(call.name)
        item = call_item(call, kind)
        index = len(self.output)
        out.append(self._event("response.output_item.added", {
            "output_index": index, "item": call_item(call, kind, "in_progress")}))
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "custom_tool_call":
            out.append(self._event("response.custom_tool_call_input.delta",
                                   {**where, "delta": item["input"]}))
            out.append(self._event("response.custom_tool_call_input.done",
                                   {**where, "input": item["input"]}))
        else:
            out.append(self._event("response.function_call_arguments.delta",
                                   {**where, "delta": item["arguments"]}))
            out.append(self._event("response.function_call_arguments.done",
                                   {**where, "name": item["name"],
                                    "arguments": item["arguments"]}))
        self._done(item, out)

    def finish(self, message: AssembledMessage, outcome: Outcome) -> list[bytes]:
        out: list[bytes] = []
        self._close(out)
        response = self._complete(list(self.output), outcome)
        kind = "response.incomplete" if response["status"] == "incomplete" else (
            "response.completed")
        out.append(self._event(kind, {"response": response}))
        return out

    def fail(self, error: ProxyError) -> list[bytes]:
        failure = {"code": error.code or "server_error", "message": error.message}
        return [self._event("response.failed", {"response": self.response(
            "failed", list(self.output), error=failure)})]
