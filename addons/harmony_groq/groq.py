"""The Groq route: request sanitising, reasoning renamed in whole replies, the model list
(streams: groq_stream.py)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import httpx
from mitmproxy import http

from .chat_request import EFFORTS
from .groq_stream import apply_reasoning_keys

CLIENT_KEY_HEADERS = ("authorization", "x-api-key", "api-key")
DROP_HEADERS = CLIENT_KEY_HEADERS + (
    "cookie", "openai-organization", "openai-project", "accept-encoding", "proxy-authorization",
)
_DROP_TOP_LEVEL = ("reasoning", "reasoning_details", "include_reasoning_content", "cache_control")
_DROP_IN_MESSAGES = ("reasoning_content", "thinking", "reasoning_details", "cache_control")
MAX_STOP = 4


def sanitize_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Drop or rename the fields Groq is known to reject with 400 (groq-and-clients.md §1.2)."""
    out = {k: v for k, v in body.items() if k not in _DROP_TOP_LEVEL}
    out["model"] = model
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and "reasoning_effort" not in out and isinstance(
            reasoning.get("effort"), str):
        out["reasoning_effort"] = reasoning["effort"]
    if isinstance(out.get("stop"), list) and len(out["stop"]) > MAX_STOP:
        out["stop"] = out["stop"][:MAX_STOP]
    messages = []
    for message in body["messages"]:
        if message.get("server"):  # the proxy's own tool step (tools/): Groq has no such turn
            continue
        message = dict(message)
        if message.get("tool_calls"):
            calls = [c for c in message["tool_calls"] if c.get("type") != "server"]
            if calls:
                message["tool_calls"] = calls
            else:
                message.pop("tool_calls")
        if message.get("role") == "assistant" and "reasoning" not in message:
            carried = message.get("reasoning_content") or message.get("thinking")
            if isinstance(carried, str) and carried:
                message["reasoning"] = carried
        for key in _DROP_IN_MESSAGES:
            message.pop(key, None)
        messages.append(message)
    out["messages"] = messages
    return out


_GROQ_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME_LIMIT = 64


def _safe_name(name: str, taken: dict[str, str]) -> str:
    """``name`` within Groq's ``[a-zA-Z0-9_-]{1,64}``; too long, or clashing with a name
    already given out, it keeps a prefix and gets 8 hex digits of its hash."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"
    if len(safe) > _NAME_LIMIT or taken.get(safe, name) != name:
        safe = f"{safe[:_NAME_LIMIT - 9]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return safe


def groq_tool_names(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A chat body with tool names Groq cannot take renamed (in ``tools``, the history's
    ``tool_calls`` and ``tool_choice``), and the map Groq-safe name → client name."""
    names = [t["function"]["name"] for t in body.get("tools") or [] if "function" in t] + [
        c["function"]["name"] for m in body["messages"] for c in m.get("tool_calls") or []]
    unique = list(dict.fromkeys(names))
    taken = {name: name for name in unique if _GROQ_NAME.fullmatch(name)}  # safe → client
    renamed: dict[str, str] = {}  # client name → safe name, for the names that change
    for name in unique:
        if name not in taken:
            renamed[name] = _safe_name(name, taken)
            taken[renamed[name]] = name
    if not renamed:
        return body, {}

    def rename(holder: dict[str, Any]) -> dict[str, Any]:
        function = holder["function"]
        return {**holder, "function": {**function,
                                       "name": renamed.get(function["name"], function["name"])}}

    out = {**body, "messages": [
        {**m, "tool_calls": [rename(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m
        for m in body["messages"]]}
    if body.get("tools"):
        out["tools"] = [rename(t) if "function" in t else t for t in body["tools"]]
    if isinstance(body.get("tool_choice"), dict):
        out["tool_choice"] = rename(body["tool_choice"])
    return out, {safe: name for name, safe in renamed.items()}


def groq_chat_request(body: dict[str, Any], model: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A chat body another dialect built, as Groq's chat API takes it: a reasoning effort only
    for gpt-oss (Groq's other models reject it), usage at the end of a stream, the fields Groq
    rejects dropped, and tool names it cannot take renamed (the map gives them back)."""
    body = dict(body)
    reasoning = body.pop("reasoning", None)
    effort = body.pop("reasoning_effort", None) or (
        reasoning.get("effort") if isinstance(reasoning, dict) else None)
    if isinstance(effort, str) and effort.lower() in EFFORTS and "gpt-oss" in model.lower():
        body["reasoning_effort"] = EFFORTS[effort.lower()]
    if body.get("stream"):
        body["stream_options"] = {"include_usage": True}
    return groq_tool_names(sanitize_body(body, model))


def rename_reasoning(response: http.Response, keys: tuple[str, ...]) -> None:
    """Groq answers ``message.reasoning``; offer it under the configured field names."""
    content = response.content or b""
    if response.status_code != 200 or b'"reasoning"' not in content:
        return
    try:
        body = json.loads(content)
        changed = any([apply_reasoning_keys(choice["message"], keys)
                       for choice in body["choices"]])
    except (ValueError, KeyError, TypeError):
        return
    if changed:
        response.content = json.dumps(body, ensure_ascii=False).encode()


def clamp_max_tokens(body: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """``body`` with its output limit (``max_tokens``, ``max_completion_tokens``, Responses'
    ``max_output_tokens``) no higher than the model's ``limit``: Groq refuses a larger one
    with a 400 (Claude Code asks for 32 000, and 128 000 after a ``max_tokens`` stop)."""
    over = {key: limit for key in ("max_tokens", "max_completion_tokens", "max_output_tokens")
            if limit and type(body.get(key)) is int and body[key] > limit}
    return {**body, **over} if over else body


class GroqModels:
    """Groq's live model list, fetched with the server key and cached briefly; ``limits`` maps
    each model to its ``max_completion_tokens``."""

    def __init__(self) -> None:
        self.cached: list[dict[str, Any]] = []
        self.limits: dict[str, int] = {}
        self.fetched_at = 0.0
        self.last_error: str | None = None

    async def get(self, client: httpx.AsyncClient, base_url: str, api_key: str,
                  ttl: float) -> list[dict[str, Any]]:
        if not api_key:
            self.last_error = "GROQ_API_KEY is not set"
            return []
        if self.cached and time.monotonic() - self.fetched_at < ttl:
            return self.cached
        try:
            response = await client.get(f"{base_url}/models",
                                        headers={"authorization": f"Bearer {api_key}"},
                                        timeout=10)
            response.raise_for_status()
            data = response.json().get("data")
            if not isinstance(data, list):
                raise ValueError("no 'data' list")
        except (httpx.HTTPError, ValueError) as exc:
            self.last_error = f"Groq model list unavailable: {type(exc).__name__}"
            return self.cached
        self.cached = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        self.limits = {m["id"]: m["max_completion_tokens"] for m in self.cached
                       if type(m.get("max_completion_tokens")) is int}
        self.fetched_at = time.monotonic()
        self.last_error = None
        return self.cached
