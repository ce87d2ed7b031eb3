"""Which conversations spilled to Groq, so their next turns stay there (Groq's prompt cache,
and no bounce between two servers mid-task).

A conversation is recognised by what every later request of it carries: the ids of the tool
calls a spilled reply issued (the proxy gives them out, so they are unique), and a hash of its
opening (the messages up to and including the first assistant reply; a request without an
assistant reply is a new conversation, never sticky). The state store's "spill" namespace keeps
them (this process's memory, or Redis shared by every proxy), each with a time to live.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

MAX_ENTRIES = 100_000
GROQ = "groq"


def _text(content: Any) -> str:
    """Content as whitespace-normalised text: strings and text parts; other parts by value."""
    if isinstance(content, str):
        return " ".join(content.split())
    if isinstance(content, list):
        return " ".join(_text(p.get("text")) if isinstance(p, dict) and "text" in p
                        else json.dumps(p, sort_keys=True) for p in content)
    return "" if content is None else json.dumps(content, sort_keys=True)


def _call_ids(message: dict[str, Any]) -> list[str]:
    return [c["id"] for c in message.get("tool_calls") or []
            if isinstance(c, dict) and isinstance(c.get("id"), str) and c["id"]]


def opening_key(messages: Iterable[dict[str, Any]]) -> str | None:
    """``opening:<hash>`` of the messages through the first assistant reply (its text and call
    ids; reasoning left out, clients drop it), or None when there is no assistant reply."""
    digest = hashlib.sha256()
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            digest.update(json.dumps([role, _text(message.get("content")),
                                      _call_ids(message)]).encode())
            return "opening:" + digest.hexdigest()[:32]
        digest.update(json.dumps([role, _text(message.get("content"))]).encode())
        digest.update(b"\0")
    return None


def conversation_keys(messages: list[dict[str, Any]]) -> list[str]:
    """The keys a request is looked up by: its last assistant turn's call ids, its opening."""
    keys = []
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if last is not None:
        keys += [f"call:{call_id}" for call_id in _call_ids(last)]
    opening = opening_key(messages)
    if opening:
        keys.append(opening)
    return keys


def reply_keys(messages: list[dict[str, Any]], reply: dict[str, Any]) -> list[str]:
    """The keys a spilled reply makes sticky: its calls, and the conversation's opening (with
    this reply as the first assistant turn when the request had none)."""
    keys = [f"call:{call_id}" for call_id in _call_ids(reply)]
    opening = opening_key(messages) or opening_key([*messages, reply])
    if opening:
        keys.append(opening)
    return keys
