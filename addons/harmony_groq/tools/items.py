"""Tool steps in each client API's own shapes: one mapping per (dialect, step kind).

The dialects' reply writers look a step's kind up here; a tool adds its kind by registering a
mapping per dialect (``register``), without touching the loop or the writers. A kind with no
mapping for a dialect is shown there only through the answer (the step stays in the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .base import StepRecord


class ResponsesMapping(Protocol):
    """Responses: one output item per step, with its progress events."""

    def item(self, step: StepRecord, status: str) -> dict[str, Any]:
        """The item, ``in_progress`` when it starts, then as it ended."""
        ...

    def progress(self, step: StepRecord, phase: str) -> list[tuple[str, dict[str, Any]]]:
        """Events between ``output_item.added`` and ``.done`` (type, fields other than
        item_id / output_index / sequence_number): ``started`` before the run, ``finished``
        after."""
        ...


class MessagesMapping(Protocol):
    """Messages: a ``server_tool_use`` block and its result block."""

    name: str  # the server_tool_use name ("web_search")
    usage_key: str  # usage.server_tool_use's counter ("web_search_requests")

    def use_input(self, step: StepRecord) -> dict[str, Any] | None:
        """The ``server_tool_use`` input; None: the step is not shown in this API."""
        ...

    def result(self, step: StepRecord, tool_use_id: str) -> dict[str, Any]: ...


class ChatMapping(Protocol):
    """Chat Completions: Groq's ``executed_tools`` entry."""

    def executed_tool(self, step: StepRecord, index: int) -> dict[str, Any]: ...


@dataclass
class _Kind:
    responses: ResponsesMapping | None = None
    messages: MessagesMapping | None = None
    chat: ChatMapping | None = None


_KINDS: dict[str, _Kind] = {}


def register(kind: str, *, responses: ResponsesMapping | None = None,
             messages: MessagesMapping | None = None, chat: ChatMapping | None = None) -> None:
    """Add (or replace) the mappings of a step kind."""
    _KINDS[kind] = _Kind(responses, messages, chat)


def responses_mapping(kind: str) -> ResponsesMapping | None:
    entry = _KINDS.get(kind)
    return entry.responses if entry else None


def messages_mapping(kind: str) -> MessagesMapping | None:
    entry = _KINDS.get(kind)
    return entry.messages if entry else None


def chat_mapping(kind: str) -> ChatMapping | None:
    entry = _KINDS.get(kind)
    return entry.chat if entry else None
