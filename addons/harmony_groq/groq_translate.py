"""Groq chat completions read back as decoder events, for the dialects that reach Groq through
its chat API: the reply is then written by the same dialect writer as a gpt-oss reply."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from .backends import cached_tokens
from .completion import AssembledMessage
from .dialects.base import GroqCall, Outcome, ReplyWriter
from .errors import ProxyError
from .groq_stream import GroqChatReader, reasoning_of
from .parse import ContentDelta, Event, ReasoningDelta, ToolCall
from .sse import SSEFramer
from .state.writes import collect_writes
from .streaming import HoldEnd, InterruptibleStream
from .tools.groq_route import executed_steps

logger = logging.getLogger(__name__)


def message_events(message: dict[str, Any], names: dict[str, str] | None) -> list[Any]:
    """A whole Groq assistant message as events: reasoning, content, then the calls."""
    events: list[Event] = []
    if reasoning := reasoning_of(message):
        events.append(ReasoningDelta(reasoning))
    events += executed_steps(message.get("executed_tools"))  # Groq's own browser
    if isinstance(message.get("content"), str) and message["content"]:
        events.append(ContentDelta(message["content"]))
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        name = function.get("name") or ""
        events.append(ToolCall(index, call.get("id") or "", (names or {}).get(name, name),
                               function.get("arguments") or "{}"))
    return events


def outcome_of(finish_reason: str | None, usage: dict[str, Any] | None,
               message: AssembledMessage) -> Outcome:
    usage = usage or {}
    details = usage.get("completion_tokens_details") or {}
    finish = "length" if finish_reason == "length" else (
        "tool_calls" if message.tool_calls else "stop")
    return Outcome(finish, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
                   details.get("reasoning_tokens") or 0, cached_tokens=cached_tokens(usage))


def translate_reply(call: GroqCall, response: http.Response) -> tuple[dict[str, Any], Outcome]:
    """Groq's whole ``chat.completion`` → the dialect's reply body and how it ended; Groq's
    error (or an answer that is not a chat completion) as a ``ProxyError``."""
    assert call.reply is not None
    content = response.content or b""
    if response.status_code != 200:
        raise groq_error(response.status_code, content)
    try:
        body = json.loads(content)
        choice = body["choices"][0]
        message = AssembledMessage()
        message.add(message_events(choice["message"], call.tool_names))
        outcome = outcome_of(choice.get("finish_reason"), body.get("usage"), message)
    except Exception:  # noqa: BLE001 - any shape but a chat completion is Groq's fault
        raise ProxyError(502, "Groq's answer was not a chat completion.",
                         code="upstream_error") from None
    return call.reply.whole(message, outcome), outcome


def groq_error(status: int, content: bytes) -> ProxyError:
    """Groq's OpenAI-shaped error as a ProxyError with the same status, code and message;
    except that Groq refusing the server's key (401/403) is the proxy's fault, not the
    client's key: a 502 the client must not answer by logging in again."""
    try:
        error = json.loads(content)["error"]
        message, code = str(error.get("message") or ""), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code = content.decode("utf-8", "replace")[:500], None
    if status in (401, 403):
        return ProxyError(502, f"Groq refused the proxy's GROQ_API_KEY ({status}: {message}); "
                          "fix the key in the proxy's environment.", code="groq_key_rejected")
    return ProxyError(status, message or f"Groq answered {status}.",
                      code=code if isinstance(code, str) else None)


def retry_headers(response: http.Response) -> dict[str, str]:
    """What of Groq's error answer a translated error keeps: the client's retry logic reads
    ``retry-after`` and the rate-limit headers."""
    return {k: v for k, v in response.headers.items()
            if k.lower() == "retry-after" or k.lower().startswith("x-ratelimit-")}


class GroqChatTranslator(InterruptibleStream):
    """Groq's chat-completion SSE in, the dialect's stream out (``flow.response.stream``)."""

    def __init__(self, call: GroqCall, on_done: Callable[[dict[str, Any]], None],
                 hold_end: HoldEnd | None = None) -> None:
        assert call.reply is not None
        self.hold_end = hold_end
        self.reply: ReplyWriter = call.reply
        self.names = call.tool_names or {}
        self.on_done = on_done
        self.framer = SSEFramer()
        self.reader = GroqChatReader()
        self.message = AssembledMessage()
        self.started = self.done = False

    def __call__(self, data: bytes) -> list[bytes]:
        if self.done:
            return []
        out = self._opening()
        try:
            for payload in self.framer.feed(data):
                self._event(payload, out)
                if self.done:
                    return out
            if not data:
                if self.reader.finish_reason is None:
                    raise ProxyError(502, "Groq ended the stream before the reply finished.",
                                     code="upstream_incomplete")
                self._finish(out)
        except ProxyError as exc:
            self._fail(exc, out)
        except Exception as exc:  # never let mitmproxy drop a chunk silently
            logger.exception("Groq stream translation failed")
            self._fail(ProxyError(502, f"Groq's stream could not be translated: {exc}",
                                  code="translation_error"), out)
        return out

    def _event(self, payload: str, out: list[bytes]) -> None:
        if payload.strip() == "[DONE]":
            self._finish(out)
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise ProxyError(502, f"Groq sent an unreadable event: {payload[:200]!r}",
                             code="upstream_error")
        events = self.reader.read(chunk)
        if error := self.reader.error:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ProxyError(502, f"Groq failed mid-stream: {message}", code="upstream_error")
        if events:
            self._emit(events, out)

    def _emit(self, events: list[Event], out: list[bytes]) -> None:
        self.message.add(events)
        out.extend(self.reply.events(events))

    def _finish(self, out: list[bytes]) -> None:
        calls = self.reader.tool_calls(self.names)
        if calls:
            self._emit(list(calls), out)
        outcome = outcome_of(self.reader.finish_reason, self.reader.usage, self.message)
        with collect_writes() as writes:  # a stored response; a spilled reply's memory
            end = self.reply.finish(self.message, outcome)
        self._end(end, writes, out)
        self._close({"finish_reason": outcome.finish, "usage": outcome.usage(), "error": None})

    def _fail(self, error: ProxyError, out: list[bytes]) -> None:
        out.extend(self.reply.fail(error))
        self._close({"finish_reason": None, "usage": None, "error": error.message,
                     "interrupted": self.interrupted})

    def _close(self, summary: dict[str, Any]) -> None:
        self.done = True
        self.on_done({"upstream_text": None, "message": self.message.to_message(self.reply.keys),
                      "repairs": [], "first_token_at": self.reader.first_token_at,
                      "keepalives": 0, **summary})
