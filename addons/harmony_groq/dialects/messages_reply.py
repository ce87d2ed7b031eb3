"""Anthropic Messages replies: the ``message`` object, and its event stream token by token.

The stream follows the grammar Claude Code needs (``shared/reference/anthropic-messages.md``
§2): every frame with its ``event:`` line; ``message_start``; each block opened by
``content_block_start``, fed by deltas and closed by ``content_block_stop`` before the next
opens; a tool's input only as ``input_json_delta``; ``message_delta`` with the stop reason and
the usage, then ``message_stop``. Errors are ``{"type": "error", "error": {type, message}}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..completion import AssembledMessage
from ..errors import ProxyError
from ..parse import ContentDelta, Event, ReasoningDelta, ToolCall
from ..tools.base import Citation, CiteEvent, StepEvent, StepRecord
from ..tools.items import messages_mapping
from .base import Outcome

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}
PING = b'event: ping\ndata: {"type":"ping"}\n\n'
# Faults no retry can fix. Claude Code retries every 5xx with backoff for about three minutes
# before it prints anything, but prints a 400's message at once (its six quick retries with
# features turned off are answered locally).
PERMANENT = ("groq_key_missing", "groq_key_rejected", "harmony_tokens_stripped",
             "not_configured")


def error_status(error: ProxyError) -> int:
    return 400 if error.code in PERMANENT else error.status


def error_body(error: ProxyError) -> dict[str, Any]:
    status = error_status(error)
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else
                                       "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def signature(thinking: str) -> str:
    """A thinking block's signature: clients echo it back and the proxy ignores it, so it
    only has to be a stable, non-empty string."""
    return hashlib.sha256(thinking.encode()).hexdigest()


def object_json(arguments: str) -> str:
    """A call's arguments as the JSON of its ``input`` object: the model's own bytes when they
    are one, else ``{}`` (which the client's validation reports back to the model)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return "{}"
    return arguments if isinstance(value, dict) else "{}"


def tool_use_id(step: StepRecord) -> str:
    return "srvtoolu_" + step.id.split("_", 1)[-1]


def step_blocks(step: StepRecord) -> list[dict[str, Any]]:
    """A server tool step's ``server_tool_use`` block and its result block (none when the
    step is not one this API shows)."""
    mapping = messages_mapping(step.kind)
    if mapping is None or (tool_input := mapping.use_input(step)) is None:
        return []
    use_block = getattr(mapping, "use_block", None)  # a kind with its own block (mcp_tool_use)
    use = use_block(step, tool_input) if use_block is not None else {
        "type": "server_tool_use", "id": tool_use_id(step), "name": mapping.name,
        "input": tool_input}
    return [use, mapping.result(step, use["id"])]


def location(citation: Citation) -> dict[str, Any]:
    return {"type": "web_search_result_location", "url": citation.url,
            "title": citation.title, "cited_text": citation.cited_text[:150],
            "encrypted_index": base64.b64encode(citation.url.encode()).decode()}


def text_blocks(text: str, citations: list[Citation]) -> list[dict[str, Any]]:
    """The answer as text blocks, each cited passage a block with its citation."""
    blocks: list[dict[str, Any]] = []
    start = 0
    for citation in sorted(citations, key=lambda c: c.end_index):
        end = max(citation.end_index, start)
        if end > start:
            blocks.append({"type": "text", "text": text[start:end],
                           "citations": [location(citation)]})
        elif blocks and blocks[-1].get("citations"):
            blocks[-1]["citations"].append(location(citation))
        start = end
    if start < len(text) or not blocks:
        blocks.append({"type": "text", "text": text[start:]})
    return blocks


def _frame(kind: str, payload: dict[str, Any]) -> bytes:
    return (b"event: " + kind.encode() + b"\ndata: "
            + json.dumps({"type": kind, **payload}, ensure_ascii=False).encode() + b"\n\n")


def _delta(index: int, kind: str, key: str, text: str) -> bytes:
    """One ``content_block_delta`` frame, written directly: it is sent once per token."""
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"%s","%s":%s}}\n\n' % (
                index, kind.encode(), key.encode(),
                json.dumps(text, ensure_ascii=False).encode()))


@dataclass
class MessagesReply:
    """One Messages reply, whole or streamed; ``stops`` are the request's stop sequences."""

    model: str
    stops: tuple[str, ...] = ()
    show_thinking: bool = True
    message_id: str = field(default_factory=lambda: "msg_" + secrets.token_hex(12))

    def __post_init__(self) -> None:
        self.keys: tuple[str, ...] = ("thinking",) if self.show_thinking else ()
        self.index = -1
        self.open: str | None = None  # the kind of the block being streamed
        self.thinking: Any = None  # the open thinking block's running hash
        self.server_uses: dict[str, int] = {}  # usage.server_tool_use's counters

    def _usage(self, outcome: Outcome, server_uses: dict[str, int] | None = None
               ) -> dict[str, Any]:
        # Anthropic counts cache reads apart: input_tokens is the part not read from a cache.
        cached = outcome.cached_tokens or 0
        usage: dict[str, Any] = {"input_tokens": outcome.prompt_tokens - cached,
                                 "output_tokens": outcome.completion_tokens,
                                 "cache_creation_input_tokens": 0,
                                 "cache_read_input_tokens": cached}
        if server_uses:
            usage["server_tool_use"] = dict(server_uses)
        return usage

    def _stop(self, outcome: Outcome) -> dict[str, Any]:
        if outcome.stopped:
            # The decoder says which stop sequence matched; else, with one, it is that one.
            return {"stop_reason": "stop_sequence", "stop_sequence": outcome.stop_sequence or (
                self.stops[0] if len(self.stops) == 1 else None)}
        return {"stop_reason": STOP_REASONS.get(outcome.finish, "end_turn"),
                "stop_sequence": None}

    def _message(self, content: list[dict[str, Any]], stop: dict[str, Any],
                 usage: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.message_id, "type": "message", "role": "assistant",
                "model": self.model, "content": content, **stop, "usage": usage}

    def whole(self, message: AssembledMessage, outcome: Outcome) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        uses: dict[str, int] = {}
        for part in message.reasoning_around_steps():
            if isinstance(part, str):
                if self.show_thinking:
                    content.append({"type": "thinking", "thinking": part,
                                    "signature": signature(part)})
            elif blocks := step_blocks(part):
                content += blocks
                _count(uses, part)
        if message.content:
            content += text_blocks("".join(message.content), message.citations)
        content += [{"type": "tool_use", "id": call.id, "name": call.name,
                     "input": json.loads(object_json(call.arguments))}
                    for call in message.tool_calls]
        body = self._message(content, self._stop(outcome), self._usage(outcome, uses))
        if container := container_of(message):
            body["container"] = container
        return body

    # -- the stream -------------------------------------------------------------------------

    def start(self, prompt_tokens: int = 0) -> list[bytes]:
        empty = {"stop_reason": None, "stop_sequence": None}
        # Claude Code shows the context in use from message_start's input_tokens; the final
        # counts come in message_delta.
        usage = {"input_tokens": prompt_tokens, "output_tokens": 0,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        return [_frame("message_start", {"message": self._message([], empty, usage)})]

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close(out)
        self.index += 1
        self.open = kind
        out.append(_frame("content_block_start",
                          {"index": self.index, "content_block": {"type": kind, **block}}))

    def _close(self, out: list[bytes]) -> None:
        if self.open == "thinking":
            out.append(_frame("content_block_delta", {"index": self.index, "delta": {
                "type": "signature_delta", "signature": self.thinking.hexdigest()}}))
        if self.open is not None:
            out.append(_frame("content_block_stop", {"index": self.index}))
        self.open = None

    def events(self, events: list[Event]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, ReasoningDelta):
                if not self.show_thinking:
                    continue
                if self.open != "thinking":
                    self._open("thinking", {"thinking": "", "signature": ""}, out)
                    self.thinking = hashlib.sha256()
                self.thinking.update(event.text.encode())
                out.append(_delta(self.index, "thinking_delta", "thinking", event.text))
            elif isinstance(event, ContentDelta):
                if self.open != "text":
                    self._open("text", {"text": ""}, out)
                out.append(_delta(self.index, "text_delta", "text", event.text))
            elif isinstance(event, StepEvent):
                self._step(event, out)
            elif isinstance(event, CiteEvent):
                if self.open == "text":  # the cited passage ends here: its block closes
                    out.append(_frame("content_block_delta", {"index": self.index, "delta": {
                        "type": "citations_delta", "citation": location(event.citation)}}))
                    self._close(out)
            else:
                self._tool_use(event, out)
        return out

    def _step(self, event: StepEvent, out: list[bytes]) -> None:
        """``server_tool_use`` (its input as ``input_json_delta``) before the tool runs; the
        complete result block after, as Anthropic streams them."""
        blocks = step_blocks(event.step)
        if not blocks:
            return
        use, result = blocks
        if event.phase == "started":
            kind = use.pop("type")
            self._open(kind, {**use, "input": {}}, out)
            out.append(_delta(self.index, "input_json_delta", "partial_json",
                              json.dumps(use["input"], ensure_ascii=False)))
            self._close(out)
            return
        kind = result.pop("type")
        self._open(kind, result, out)
        self._close(out)
        _count(self.server_uses, event.step)

    def _tool_use(self, call: ToolCall, out: list[bytes]) -> None:
        self._open("tool_use", {"id": call.id, "name": call.name, "input": {}}, out)
        out.append(_delta(self.index, "input_json_delta", "partial_json",
                          object_json(call.arguments)))
        self._close(out)

    def finish(self, message: AssembledMessage, outcome: Outcome) -> list[bytes]:
        out: list[bytes] = []
        self._close(out)
        delta = self._stop(outcome)
        if container := container_of(message):
            delta["container"] = container
        out.append(_frame("message_delta", {"delta": delta,
                                            "usage": self._usage(outcome, self.server_uses)}))
        out.append(_frame("message_stop", {}))
        return out

    def fail(self, error: ProxyError) -> list[bytes]:
        return [_frame("error", {"error": error_body(error)["error"]})]

    def keepalive(self) -> bytes:
        return PING


def container_of(message: AssembledMessage) -> dict[str, Any] | None:
    """The code container the reply used (Anthropic's ``container``: its id and when it
    expires), which the client may name in its next request."""
    for _, step in reversed(message.steps):
        if step.detail.get("expires_at"):
            return {"id": step.detail["container_id"], "expires_at": step.detail["expires_at"]}
    return None


def _count(uses: dict[str, int], step: StepRecord) -> None:
    mapping = messages_mapping(step.kind)
    if mapping is not None and mapping.usage_key and step.error != "max_uses_exceeded":
        uses[mapping.usage_key] = uses.get(mapping.usage_key, 0) + 1
