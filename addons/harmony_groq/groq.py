"""The Groq route: request sanitising, the streamed-response relay, the model list."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from mitmproxy import http

from .chat_request import EFFORTS

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
        message = dict(message)
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
    names = [t["function"]["name"] for t in body.get("tools") or []] + [
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
        out["tools"] = [rename(t) for t in body["tools"]]
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


_EVENT_END = re.compile(rb"\r?\n\r?\n")


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
class GroqStreamRelay:
    """Relays Groq's SSE event by event as it arrives, renaming reasoning fields as configured
    and assembling the stream for the flow log."""

    keys: tuple[str, ...] = ("reasoning", "reasoning_content")
    buffer: bytes = b""
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: Any = None
    first_token_at: float | None = None
    events: int = 0
    done: bool = False  # Groq's [DONE] went through

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
            event = json.loads(payload)
        except ValueError:
            self.error = "unreadable Groq event"
            return raw
        self._record(event)
        changed = False
        for choice in event.get("choices") or []:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                changed |= apply_reasoning_keys(delta, self.keys)
        if not changed:
            return raw
        return b"data: " + json.dumps(event, ensure_ascii=False).encode()

    def _record(self, event: dict[str, Any]) -> None:
        self.events += 1
        if "error" in event:
            self.error = event["error"]
        x_groq = event.get("x_groq") or {}
        if x_groq.get("error"):
            self.error = x_groq["error"]
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._first()
                self.content.append(delta["content"])
            if delta.get("reasoning"):
                self._first()
                self.reasoning.append(delta["reasoning"])
            for call in delta.get("tool_calls") or []:
                self._first()
                entry = self.tool_calls.setdefault(call.get("index", 0), {
                    "id": call.get("id"), "name": "", "arguments": ""})
                fn = call.get("function") or {}
                entry["name"] += fn.get("name") or ""
                entry["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _first(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.time()

    def summary(self) -> dict[str, Any]:
        """The assembled stream as plain data for the flow record."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = list(self.tool_calls.values())
        return {"message": message, "finish_reason": self.finish_reason, "usage": self.usage,
                "error": self.error, "first_token_at": self.first_token_at,
                "events": self.events}


class GroqModels:
    """Groq's live model list, fetched with the server key and cached briefly."""

    def __init__(self) -> None:
        self.cached: list[dict[str, Any]] = []
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
        self.fetched_at = time.monotonic()
        self.last_error = None
        return self.cached
