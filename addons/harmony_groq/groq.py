"""The Groq route: request sanitising, key handling, stream tee for the log, the model list."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .sse import SSEFramer

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


@dataclass
class GroqStreamTee:
    """Passes Groq's SSE through untouched while assembling it for the flow log."""

    framer: SSEFramer = field(default_factory=SSEFramer)
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: Any = None
    first_token_at: float | None = None
    events: int = 0

    def __call__(self, data: bytes) -> bytes:
        if data:
            try:
                for payload in self.framer.feed(data):
                    self._event(payload)
            except Exception as exc:  # the log must never break the stream
                self.error = f"unreadable Groq event: {exc}"
        return data

    def _event(self, payload: str) -> None:
        if payload.strip() == "[DONE]":
            return
        event = json.loads(payload)
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
            text = delta.get("reasoning") or delta.get("reasoning_content")
            if text:
                self._first()
                self.reasoning.append(text)
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

    def assembled(self) -> dict[str, Any]:
        return {
            "content": "".join(self.content),
            "reasoning": "".join(self.reasoning) or None,
            "tool_calls": list(self.tool_calls.values()) or None,
            "finish_reason": self.finish_reason,
            "events": self.events,
        }


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
