"""Reasoning carry-over: the analysis gpt-oss wrote before the tool calls the proxy issued,
put back into histories whose client dropped it.

gpt-oss reads a tool's result expecting its own analysis of the current tool chain before the
call (harmony drops old analysis only once a final answer closed the chain). Continue and many
hand-written SDK loops send the assistant tool-call message back with ``content`` and
``tool_calls`` only, so the model would continue its chain blind. The proxy issued those call
ids itself (random, unguessable, ``parse.new_call_id``), so it remembers, per reply, the
analysis and the calls as issued, and gives a message that carries those calls back its
analysis: the history then renders exactly as if the client had sent ``reasoning_content``.
Memory only (LRU, bounded by the size of the texts kept): a restart forgets, nothing is on disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ProxyError
from .parse import ToolCall
from .render import reasoning_of, text_of

Call = tuple[str, str, str]  # (id, name, arguments), as the client got them


@dataclass(frozen=True)
class IssuedTurn:
    """One reply that ended in tool calls: its analysis and its calls, in order."""

    reasoning: str
    calls: tuple[Call, ...]
    size: int  # bytes of the texts kept (UTF-8), what the budget counts

    @classmethod
    def of(cls, reasoning: str, tool_calls: Sequence[ToolCall]) -> IssuedTurn:
        calls = tuple((c.id, c.name, c.arguments) for c in tool_calls)
        size = len(reasoning.encode()) + sum(len(part.encode()) for c in calls for part in c)
        return cls(reasoning, calls, size)


def _calls_of(message: dict[str, Any]) -> tuple[Call, ...] | None:
    """The message's tool calls as (id, name, arguments) strings, or ``None`` if any is not
    shaped like one the proxy issued."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            return None
        parts = (call.get("id"), fn.get("name"), fn.get("arguments"))
        if not all(isinstance(part, str) for part in parts):
            return None
        out.append(parts)
    return tuple(out)


def _is_final_answer(message: dict[str, Any]) -> bool:
    """An assistant message that renders as a ``final`` (render.py: text and no calls)."""
    if message.get("role") != "assistant" or message.get("tool_calls"):
        return False
    try:
        return bool(text_of(message.get("content"), "content"))
    except ProxyError:
        return False  # render_prompt rejects the request anyway


class ReasoningMemory:
    """Per reply, keyed by its first call's id: what ``restore`` needs to put analysis back.

    The analysis goes where the model wrote it, before its first call: a message whose calls
    start with that call (all of them, or the first few of a client that split the reply) gets
    it; a message holding only later calls gets nothing, so nothing is ever rendered twice.
    """

    def __init__(self, budget_bytes: int = 16 * 1024 * 1024) -> None:
        self.budget = budget_bytes
        self.turns: OrderedDict[str, IssuedTurn] = OrderedDict()
        self.size = 0

    def remember(self, reasoning: str, tool_calls: Sequence[ToolCall]) -> None:
        """Keep a finished reply's analysis for its calls (nothing to keep without either)."""
        if not reasoning or not tool_calls:
            return
        turn = IssuedTurn.of(reasoning, tool_calls)
        if turn.size > self.budget:
            return
        key = turn.calls[0][0]
        old = self.turns.pop(key, None)
        if old is not None:
            self.size -= old.size
        self.turns[key] = turn
        self.size += turn.size
        while self.size > self.budget:
            _, evicted = self.turns.popitem(last=False)
            self.size -= evicted.size

    def restore(self, messages: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], list[str]]:
        """``messages`` with remembered analysis on the tool-call messages that lack their own,
        and one line per message restored.

        Copy-on-write: the client's list and dicts are never changed (the flow log keeps the
        request as sent); unchanged, the same list comes back. Messages before the last final
        answer are left alone: their analysis would be dropped when rendering anyway.
        """
        if not self.turns:
            return messages, []
        start = next((n + 1 for n in range(len(messages) - 1, -1, -1)
                      if _is_final_answer(messages[n])), 0)
        out = messages
        restored: list[str] = []
        for n in range(start, len(messages)):
            message = messages[n]
            if message.get("role") != "assistant" or reasoning_of(message):
                continue
            calls = _calls_of(message)
            turn = self.turns.get(calls[0][0]) if calls else None
            if turn is None or calls != turn.calls[:len(calls)]:
                continue
            self.turns.move_to_end(calls[0][0])
            if out is messages:
                out = list(messages)
            out[n] = {**message, "reasoning": turn.reasoning}
            restored.append(f"messages[{n}]: the analysis before tool call {calls[0][0]} "
                            f"({len(turn.reasoning)} characters) restored; the client sent "
                            "the call without it")
        return out, restored
