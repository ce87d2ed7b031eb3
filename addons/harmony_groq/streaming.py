"""Per-token translation of a model server's SSE stream into ``chat.completion.chunk`` events.

Installed as ``flow.response.stream`` in the ``responseheaders`` hook. mitmproxy calls it with
each network chunk as it arrives and once with ``b""`` at the end; it returns the bytes to send
(``[]`` to hold back; never ``b""`` mid-stream, which would end the body). An exception here
would silently drop a chunk, so every failure becomes an OpenAI error event instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .backends import BackendFormatError, BackendOutput
from .completion import AssembledMessage, ChunkBuilder, finish_reason
from .errors import ProxyError
from .parse import StrippedOutputError
from .sse import DONE, KEEPALIVE, SSEFramer, encode_event
from .translate import HarmonyExchange, feed_output

logger = logging.getLogger(__name__)

STRIPPED_HELP = (
    "The model server removed harmony's control tokens (<|channel|>, <|message|>, …), so the "
    "gpt-oss reply cannot be parsed. Serve a harmony-ready copy of the model: run "
    "`./run.sh prepare MODEL` (or `harmony-groq-prepare MODEL`) and start `transformers serve` "
    "on the folder it prints."
)


def stripped_error(exc: StrippedOutputError) -> ProxyError:
    return ProxyError(502, f"{STRIPPED_HELP} ({exc})", code="harmony_tokens_stripped")


@dataclass
class StreamResult:
    """What the log records once the stream is over."""

    upstream_text: list[str] = field(default_factory=list)
    message: AssembledMessage = field(default_factory=AssembledMessage)
    finish_reason: str | None = None
    usage: dict | None = None
    error: str | None = None
    repairs: list[str] = field(default_factory=list)
    first_token_at: float | None = None


class HarmonyStreamTranslator:
    """Backend SSE bytes in, OpenAI chunk SSE bytes out."""

    def __init__(self, exchange: HarmonyExchange, keepalive_seconds: float,
                 on_done: Callable[[StreamResult], None]) -> None:
        self.exchange = exchange
        self.decoder = exchange.new_decoder()
        self.builder = ChunkBuilder(exchange.completion_id, exchange.request.model, exchange.keys)
        self.framer = SSEFramer()
        self.keepalive_seconds = keepalive_seconds
        self.on_done = on_done
        self.result = StreamResult()
        self.started = False
        self.done = False
        self.completion_tokens = 0
        self.last_sent = time.monotonic()

    def __call__(self, data: bytes) -> list[bytes]:
        if self.done:
            return []
        out: list[bytes] = []
        try:
            if not self.started:
                self.started = True
                out.append(encode_event(self.builder.first()))
            if data:
                for payload in self.framer.feed(data):
                    self._event(payload, out)
                    if self.done:
                        break
            elif not self.done:
                self._fail(ProxyError(502, "The model server ended the stream before the "
                                      "completion finished.", code="upstream_incomplete"), out)
        except StrippedOutputError as exc:
            self._fail(stripped_error(exc), out)
        except Exception as exc:  # never let mitmproxy drop a chunk silently
            logger.exception("stream translation failed")
            self._fail(ProxyError(502, f"The model server's stream could not be translated: "
                                  f"{exc}", code="translation_error"), out)
        if out:
            self.last_sent = time.monotonic()
        return out

    def _event(self, payload: str, out: list[bytes]) -> None:
        if payload.strip() == "[DONE]":
            return
        try:
            output = self.exchange.backend.read_event(json.loads(payload))
        except (json.JSONDecodeError, BackendFormatError) as exc:
            raise BackendFormatError(f"unreadable event {payload[:200]!r}") from exc
        if output.error is not None:
            self._fail(ProxyError(502, f"The model server failed: {output.error}",
                                  code="upstream_error"), out)
            return
        if output.text or output.token_ids:
            if self.result.first_token_at is None:
                self.result.first_token_at = time.time()
            self.result.upstream_text.append(output.text)
            self.completion_tokens += len(output.token_ids) if output.token_ids else 1
        self._emit(feed_output(self.decoder, output), out)
        if self.decoder.stopped:
            self._finish(output, out)
        elif output.finish_reason is not None:
            self._emit(self.decoder.finish(output.truncated), out)
            self._finish(output, out)

    def _emit(self, events: list, out: list[bytes]) -> None:
        sent = False
        for event in events:
            self.result.message.add([event])
            chunk = self.builder.for_event(event)
            if chunk is not None:
                out.append(encode_event(chunk))
                sent = True
        if events and not sent and not out and (
                time.monotonic() - self.last_sent >= self.keepalive_seconds):
            out.append(KEEPALIVE)

    def _finish(self, output: BackendOutput, out: list[bytes]) -> None:
        message = self.result.message
        finish = finish_reason(truncated=output.truncated and not self.decoder.stopped,
                               stopped=self.decoder.stopped, tool_calls=len(message.tool_calls))
        completion_tokens = output.completion_tokens or self.completion_tokens
        usage = self.exchange.usage(output.prompt_tokens, completion_tokens,
                                    self.decoder.reasoning_tokens)
        out.append(encode_event(self.builder.last(finish)))
        if self.exchange.request.include_usage:
            out.append(encode_event(self.builder.usage(usage)))
        out.append(DONE)
        self.result.finish_reason, self.result.usage = finish, usage
        self._close()

    def _fail(self, error: ProxyError, out: list[bytes]) -> None:
        out.append(error.sse_event())
        self.result.error = error.message
        self._close()

    def _close(self) -> None:
        self.done = True
        self.result.repairs = self.decoder.repairs
        self.on_done(self.result)
