"""The gateway's reply side: streams translated as they pass, whole replies translated.

``ReplySide`` installs, in ``responseheaders``, the per-token translator of a gpt-oss stream
(resumable on another replica through ``Failover``) or of a Groq stream another dialect asked
for, or a relay that reads Groq's own stream as it passes; in ``response`` it translates whole
replies and rewrites backend refusals into the client API's error shape; in ``error`` it ends a
broken stream in that shape. A reply's end waits for the state-store writes it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
from mitmproxy import http

from .backends import BackendFormatError, upstream_refusal
from .completion import reasoning_keys
from .dialects.base import GroqCall
from .dialects.table import DialectTable
from .errors import ProxyError
from .flows import answer, is_local, json_response, prepare_sse
from .groq import rename_reasoning
from .groq_stream import GroqResponsesRelay, GroqStreamRelay
from .groq_translate import GroqChatTranslator, retry_headers, translate_reply
from .parse import StrippedOutputError
from .pool.dispatch import Dispatcher
from .pool.resume import Failover
from .records import record_of
from .redact import REDACTED
from .request_side import InFlight
from .settings import Config, Settings
from .state.addon import State
from .state.writes import collect_writes
from .streaming import (
    EndsAfterWrites,
    HarmonyStreamTranslator,
    InterruptibleStream,
    can_write_chunks,
    heartbeat,
    send_last_chunk,
    stripped_error,
)
from .strict_check import StrictRetry
from .strict_stream import StreamStrictRetry
from .toolloop import ToolLoop
from .translate import HarmonyExchange, TranslatedCompletion, translate_completion

_MASKED_KEY = f"Bearer {REDACTED}".encode()


class ReplySide:
    """The ``responseheaders``, ``response`` and ``error`` hooks of the gateway."""

    def __init__(self, settings: Settings, state: State, dialects: DialectTable,
                 dispatcher: Dispatcher, client: Callable[[], httpx.AsyncClient],
                 in_flight: InFlight, tools: ToolLoop) -> None:
        self.settings = settings
        self.state = state
        self.dialects = dialects
        self.in_flight = in_flight
        self.failover = Failover(dispatcher, client, lambda: self.config.upstream_timeout,
                                 self._translator)
        self.ends = EndsAfterWrites(state.settle)
        self.streams: dict[str, InterruptibleStream] = {}
        self.relays: dict[str, GroqStreamRelay | GroqResponsesRelay] = {}
        self.heartbeats: dict[str, asyncio.Task] = {}
        self.tools = tools  # server tools: a reply stopped on a call is continued there
        self.strict = StrictRetry(client, state.settle,
                                  lambda: self.config.strict_retries,
                                  lambda: self.config.upstream_timeout)
        self.strict_streams = StreamStrictRetry(self.strict, self.ends)

    @property
    def config(self) -> Config:
        return cast(Config, self.settings.config)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record = record_of(flow)
        assert flow.response is not None
        record.setdefault("response_headers_at", time.time())
        _mask_groq_key(flow)
        self.failover.responseheaders(flow)
        if flow.response.status_code != 200 or is_local(flow):
            return

        def store(summary: dict[str, Any]) -> None:
            record["stream_summary"] = summary

        call = self.in_flight.groq_calls.get(flow.id)
        sse = "text/event-stream" in flow.response.headers.get("content-type", "")
        translator = self._translator(flow)
        if translator is not None:
            stream: InterruptibleStream = translator
        elif call is not None and sse and call.reply is not None:
            stream = GroqChatTranslator(call, store, hold_end=self.ends.holder(flow))
        elif call is not None and sse:  # Groq's own chat or Responses stream, read as it passes
            relay = GroqStreamRelay(reasoning_keys(self.config.reasoning_field, False)) if (
                record.get("dialect") == "chat") else GroqResponsesRelay()
            self.relays[flow.id] = relay
            flow.response.stream = relay
            return
        else:
            if sse:
                flow.response.stream = True  # a stream relayed as it is
            return
        prepare_sse(flow)
        flow.response.stream = self.failover.wrap(flow, translator) if translator else stream
        self.streams[flow.id] = stream

    def _translator(self, flow: http.HTTPFlow) -> HarmonyStreamTranslator | None:
        """A gpt-oss stream's translator (and its heartbeat); None for other flows."""
        exchange = self.in_flight.exchanges.get(flow.id)
        if exchange is None or not exchange.request.stream:
            return None
        record = record_of(flow)
        translator = HarmonyStreamTranslator(
            exchange, self.config.keepalive_seconds,
            lambda result: record.__setitem__("stream_summary", result.summary()),
            hold_end=self.ends.holder(flow))  # the end waits for the writes the next turn reads
        translator.strict_again = self.strict_streams.holder(flow)
        self.tools.attach(flow, translator)
        if can_write_chunks(flow):
            with contextlib.suppress(RuntimeError):  # no loop: a hook outside mitmproxy
                self.heartbeats[flow.id] = asyncio.get_running_loop().create_task(
                    heartbeat(flow, translator))
        return translator

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Whole replies translated. Sync, but for what mitmproxy must await before the reply's
        end goes out: a pooled stream continuing on another replica, and the store writes the
        reply made (the next turn may read them on another proxy)."""
        if self.failover.pending(flow, end_body=False):
            return self._settle(flow, False, self._response)
        exchange = self.in_flight.exchanges.get(flow.id)
        if self.tools.pending(flow, exchange):
            return self._tool_steps(flow, exchange)
        return self._response(flow)

    async def _tool_steps(self, flow: http.HTTPFlow, exchange: HarmonyExchange | None) -> None:
        """The reply stopped on a server tool's call: the loop continues it (toolloop/)."""
        if await self.tools.settle(flow, exchange):
            self.in_flight.exchanges.pop(flow.id, None)  # answered whole by the loop
        waiting = self._response(flow)
        if waiting is not None:
            await waiting

    async def _settle(self, flow: http.HTTPFlow, end_body: bool,
                      then: Callable[[http.HTTPFlow, bool], Awaitable[None] | None]) -> None:
        waiting = then(flow, await self.failover.settle(flow, end_body))
        if waiting is not None:
            await waiting

    def _response(self, flow: http.HTTPFlow, resumed: bool = False) -> Awaitable[None] | None:
        exchange, call, _ = self._forget(flow)
        response = flow.response
        if response is None or response.stream:
            return self.ends.finishing(flow)
        retrying = None
        with collect_writes() as writes:
            if call is not None:
                self._groq_response(flow, call)
            elif exchange is not None:
                retrying = self._harmony_response(flow, exchange)
        if retrying is not None:
            return _after(self.state.settle(writes), retrying)
        return self.state.settle(writes) if writes.pending() else None

    def _harmony_response(self, flow: http.HTTPFlow, exchange: HarmonyExchange
                          ) -> Awaitable[None] | None:
        assert flow.response is not None
        record = record_of(flow)
        dialect = self.dialects.flow_dialect(flow)
        if flow.response.status_code != 200:
            status = flow.response.status_code
            excerpt = (flow.response.get_text(strict=False) or "")[:500]
            record["upstream_response"] = {"status": status, "body": excerpt}
            sent = record.get("upstream_request", {}).get("body", {})
            answer(flow, upstream_refusal(status, excerpt, sent), dialect)
            return None
        try:
            payload = json.loads(flow.response.content or b"")
            output = exchange.backend.read_response(payload)
            record["upstream_response"] = {"status": 200, "text": output.text,
                                           "finish_reason": output.finish_reason}
            translated = translate_completion(exchange, output)
        except StrippedOutputError as exc:
            answer(flow, stripped_error(exc), dialect)
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, BackendFormatError) as exc:
            answer(flow, ProxyError(502, f"The model server's answer was unreadable: {exc}",
                                    code="upstream_error"), dialect)
            return None

        def done(translated: TranslatedCompletion) -> None:
            record["repairs"] = translated.repairs
            record["usage"] = translated.outcome.usage()
            flow.response = json_response(200, translated.body)

        retrying = self.strict.retry(flow, exchange, translated, dialect, done)
        if retrying is None:
            done(translated)
        return retrying

    def _groq_response(self, flow: http.HTTPFlow, call: GroqCall) -> None:
        """Groq's whole answer: reasoning renamed (chat), or translated into the dialect."""
        response = flow.response
        assert response is not None
        if call.reply is None:
            if record_of(flow).get("dialect") == "chat":
                rename_reasoning(response, reasoning_keys(self.config.reasoning_field, False))
            return
        try:
            body, outcome = translate_reply(call, response)
        except ProxyError as exc:
            answer(flow, exc, self.dialects.flow_dialect(flow), retry_headers(response))
            return
        record_of(flow)["usage"] = outcome.usage()
        flow.response = json_response(200, body)

    def _forget(self, flow: http.HTTPFlow
                ) -> tuple[HarmonyExchange | None, GroqCall | None, InterruptibleStream | None]:
        """Drop all this flow kept here (its last hook runs); return what that hook needs."""
        task = self.heartbeats.pop(flow.id, None)
        if task is not None:
            task.cancel()
        self.failover.forget(flow)
        self.tools.forget(flow)
        relay = self.relays.pop(flow.id, None)
        if relay is not None:
            record_of(flow)["stream_summary"] = relay.summary()
        return (self.in_flight.exchanges.pop(flow.id, None),
                self.in_flight.groq_calls.pop(flow.id, None), self.streams.pop(flow.id, None))

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self.failover.pending(flow, end_body=True):
            return self._settle(flow, True, self._error)
        return self._error(flow)

    def _error(self, flow: http.HTTPFlow, resumed: bool = False) -> Awaitable[None] | None:
        relay = self.relays.get(flow.id)
        _, _, stream = self._forget(flow)
        end_body = False
        if flow.error is not None and not resumed:
            if (stream or relay) is not None and (stream or relay).done:
                # The stream had ended (its last event, or its own error, was sent) before
                # this: a client hanging up at once is no failure, a backend error stays first;
                # the client's body still gets its end if the upstream's was what got lost.
                record_of(flow)["ended_before_error"] = end_body = True
            elif stream is not None:
                # Upstream reset or client gone mid-stream: log it, and end the client's stream
                # with an error event instead of a truncated body.
                send_last_chunk(flow, stream.abort(flow.error.msg))
        _mask_groq_key(flow)
        # An end waiting for its writes goes out before the body's end and the close.
        return self.ends.finishing(flow, end_body)


async def _after(first: Awaitable[None], then: Awaitable[None]) -> None:
    await first
    await then


def _mask_groq_key(flow: http.HTTPFlow) -> None:
    """Once the request went to Groq, the injected key is masked in the flow (mitmweb, saved
    flows) again."""
    if record_of(flow).get("route") != "groq":
        return
    headers = flow.request.headers  # one pass over the raw fields, as flows.rewrite does
    headers.fields = tuple((name, _MASKED_KEY) if name.lower() == b"authorization"
                           else (name, value) for name, value in headers.fields)
