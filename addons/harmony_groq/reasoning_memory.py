"""Reasoning carry-over: the analysis gpt-oss wrote before the tool calls the proxy issued,
put back into histories whose client dropped it.

gpt-oss reads a tool's result expecting its own analysis of the current tool chain before the
call (harmony drops old analysis only once a final answer closed the chain). Continue and many
hand-written SDK loops send the assistant tool-call message back with ``content`` and
``tool_calls`` only, so the model would continue its chain blind. The proxy issued those call
ids itself (random, unguessable, ``parse.new_call_id``), so it remembers, per reply, the
analysis and the calls as issued, and gives a message that carries those calls back its
analysis: the history then renders exactly as if the client had sent ``reasoning_content``.
Kept in the state store's ``reason`` namespace (state/): this process's memory by default, or a
Redis that several proxies share (``STATE_STORE``), so a call issued by one proxy is restored by
another. Writes never wait (they run on the per-token stream path); the read is one round trip
per request, and a store that cannot be read skips the restore (counted in the store metrics).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .errors import ProxyError
from .parse import ToolCall
from .render import reasoning_of, text_of
from .state import Namespace, StoreUnavailable
from .state.memory import MemoryStore

Call = tuple[str, str, str]  # (id, name, arguments), as the client got them
DEFAULT_TTL_SECONDS = 86400


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


def _same_arguments(sent: str, issued: str) -> bool:
    """The arguments the client sent back are the ones issued, byte for byte or as the same
    JSON (the Messages dialect hands calls out as parsed ``input`` and gets them back
    re-serialised compactly)."""
    if sent == issued:
        return True
    try:
        return json.loads(sent) == json.loads(issued)
    except ValueError:
        return False


def _same_calls(sent: tuple[Call, ...], issued: tuple[Call, ...]) -> bool:
    """``sent`` are the first of the ``issued`` calls: same ids and names, same arguments."""
    return len(sent) <= len(issued) and all(
        s[0] == i[0] and s[1] == i[1] and _same_arguments(s[2], i[2])
        for s, i in zip(sent, issued, strict=False))


def _is_final_answer(message: dict[str, Any]) -> bool:
    """An assistant message that renders as a ``final`` (render.py: text and no calls)."""
    if message.get("role") != "assistant" or message.get("tool_calls"):
        return False
    try:
        return bool(text_of(message.get("content"), "content"))
    except ProxyError:
        return False  # render_prompt rejects the request anyway


def _turn(value: Any) -> tuple[str, tuple[Call, ...]] | None:
    """A stored turn as (analysis, calls), or ``None`` for anything else."""
    if not isinstance(value, dict) or not isinstance(value.get("reasoning"), str):
        return None
    calls = value.get("calls")
    if not isinstance(calls, list) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(p, str) for p in c)
            for c in calls):
        return None
    return value["reasoning"], tuple(tuple(c) for c in calls)


class ReasoningMemory:
    """Per reply, keyed by its first call's id: what ``restore`` needs to put analysis back.

    The analysis goes where the model wrote it, before its first call: a message whose calls
    start with that call (all of them, or the first few of a client that split the reply) gets
    it; a message holding only later calls gets nothing, so nothing is ever rendered twice.
    """

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace

    @classmethod
    def in_memory(cls, budget_bytes: int = 16 * 1024 * 1024) -> ReasoningMemory:
        """A memory of its own in this process (tests, the benchmark)."""
        return cls(Namespace(MemoryStore({"reason": budget_bytes}), "reason",
                             DEFAULT_TTL_SECONDS))

    def remember(self, reasoning: str, tool_calls: Sequence[ToolCall]) -> None:
        """Keep a finished reply's analysis for its calls (nothing to keep without either).
        Never waits: a shared store writes in the background."""
        if not reasoning or not tool_calls:
            return
        calls = [[c.id, c.name, c.arguments] for c in tool_calls]
        self.namespace.put(calls[0][0], {"reasoning": reasoning, "calls": calls})

    async def restore(self, messages: list[dict[str, Any]]
                      ) -> tuple[list[dict[str, Any]], list[str]]:
        """``messages`` with remembered analysis on the tool-call messages that lack their own,
        and one line per message restored.

        Copy-on-write: the client's list and dicts are never changed (the flow log keeps the
        request as sent); unchanged, the same list comes back. Messages before the last final
        answer are left alone: their analysis would be dropped when rendering anyway.
        """
        start = next((n + 1 for n in range(len(messages) - 1, -1, -1)
                      if _is_final_answer(messages[n])), 0)
        wanted: list[tuple[int, tuple[Call, ...]]] = []
        for n in range(start, len(messages)):
            message = messages[n]
            if message.get("role") != "assistant" or reasoning_of(message):
                continue
            calls = _calls_of(message)
            if calls:
                wanted.append((n, calls))
        if not wanted:
            return messages, []
        try:
            turns = await self.namespace.get_many([calls[0][0] for _, calls in wanted])
        except StoreUnavailable:
            return messages, []  # counted by the store's metrics: this carry-over is skipped
        out = messages
        restored: list[str] = []
        for (n, calls), value in zip(wanted, turns, strict=True):
            turn = _turn(value)
            if turn is None or not _same_calls(calls, turn[1]):
                continue
            if out is messages:
                out = list(messages)
            out[n] = {**messages[n], "reasoning": turn[0]}
            restored.append(f"messages[{n}]: the analysis before tool call {calls[0][0]} "
                            f"({len(turn[0])} characters) restored; the client sent "
                            "the call without it")
        return out, restored
