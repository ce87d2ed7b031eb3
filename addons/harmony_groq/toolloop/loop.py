"""The tool loop: a gpt-oss reply that stops on a call to a server tool is continued, in the
same response, once the proxy ran the tool. Shared by every dialect and backend.

Streams: the translator (streaming.py) suspends when a generation ends on such a call
(``on_server_call``). In the flow's last hook (``response``; mitmproxy keeps the client's body
open until it returns) ``ToolLoop.settle`` runs the tool and asks the same replica for the next
step (a normal completion whose prompt is the last one plus the call and the tool's answer:
the replica's prefix cache makes it cheap), feeding that stream through the same translator and
writing it straight to the client (``streaming.write_chunk``), as ``pool/resume.py`` does for a
failed replica. The step's items go out through the dialect's writer (``StepEvent``), so output
indexes and sequence numbers stay monotonic; the translator's heartbeat keeps the client's
stream alive while a tool runs. Whole replies: the same steps, one whole completion each, and
the reply written once at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from mitmproxy import http

from ..backends import Backend, BackendFormatError, BackendOutput, upstream_refusal
from ..chat_request import ChatRequest
from ..completion import AssembledMessage
from ..dialects.base import Dialect
from ..errors import ProxyError
from ..flows import answer, json_response
from ..parse import StrippedOutputError
from ..pool.dispatch import Attempt, Dispatcher
from ..pool.resume import ContinuedBackend
from ..records import record_of
from ..sse import SSEFramer
from ..state.writes import collect_writes
from ..streaming import (
    HarmonyStreamTranslator,
    can_write_chunks,
    stripped_error,
    write_chunk,
)
from ..tools import catalog  # noqa: F401 - registers the tools
from ..tools.options import ToolOptions
from ..tools.registry import ToolContext, build, prepare
from ..translate import HarmonyExchange, feed_output
from .session import CitationFilter, OpeningSteps, ToolSession

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT = 5.0


class ToolLoop:
    """Runs the server tools of gpt-oss replies (one ``ToolSession`` per flow)."""

    def __init__(self, options: ToolOptions, dispatcher: Dispatcher,
                 client: Callable[[], httpx.AsyncClient], timeout: Callable[[], float],
                 writes_settle: Callable[[Any], Awaitable[None]],
                 dialect_of: Callable[[http.HTTPFlow], Dialect]) -> None:
        self.options = options
        self.dispatcher = dispatcher
        self.client = client
        self.timeout = timeout
        self.writes_settle = writes_settle
        self.dialect_of = dialect_of
        self.sessions: dict[str, ToolSession] = {}
        self.streams: dict[str, HarmonyStreamTranslator] = {}

    async def prepare(self, request: ChatRequest) -> ChatRequest:
        """Before the prompt is rendered: what the request's server tools need first (an MCP
        server's tools listed, approved calls run)."""
        if not request.server_tools or self.options.config is None:
            return request
        return await prepare(request, ToolContext(self.options.config, self.client()))

    def session(self, flow: http.HTTPFlow, exchange: HarmonyExchange) -> ToolSession | None:
        """The flow's session, made on first use; None for a request without server tools."""
        if not exchange.request.server_tools or self.options.config is None:
            return None
        session = self.sessions.get(flow.id)
        if session is None:
            config = self.options.config
            tools = build(exchange.request.server_tools, ToolContext(config, self.client()))
            session = self.sessions[flow.id] = ToolSession(tools, config["server_tool_max_steps"])
        return session

    def attach(self, flow: http.HTTPFlow, translator: HarmonyStreamTranslator) -> None:
        """A gpt-oss stream: it suspends on server-tool calls and its answer is cited. Only
        where the loop can write the next steps to the client itself (HTTP/1 in plain text,
        as for a replica's failover); elsewhere the stream ends where the model called."""
        session = self.session(flow, translator.exchange)
        if session is None:
            return
        if not can_write_chunks(flow):
            record_of(flow)["tool_loop_refused"] = "the client's connection takes no chunks " \
                "of the proxy's own (TLS or HTTP/2): tool steps run for whole replies only"
            return
        self.streams[flow.id] = translator
        translator.on_server_call = lambda: not session.over_cap()
        translator.event_filter = OpeningSteps(session.opening, CitationFilter(session.cite))

    def pending(self, flow: http.HTTPFlow, exchange: HarmonyExchange | None) -> bool:
        """Whether the flow's last hook has tool steps to run (cheap for other flows)."""
        translator = self.streams.get(flow.id)
        if translator is not None:
            return translator.suspended and not translator.done
        return (exchange is not None and bool(exchange.request.server_tools)
                and not exchange.request.stream and flow.response is not None
                and flow.response.status_code == 200 and not flow.response.stream)

    def forget(self, flow: http.HTTPFlow) -> None:
        session = self.sessions.pop(flow.id, None)
        self.streams.pop(flow.id, None)
        if session is not None and session.steps:
            record_of(flow)["tool_steps"] = session.log()

    async def settle(self, flow: http.HTTPFlow, exchange: HarmonyExchange | None) -> bool:
        """Run the flow's tool steps; True when a whole reply was answered here (the reply
        side has nothing left to translate)."""
        translator = self.streams.get(flow.id)
        try:
            if translator is not None:
                await self._stream(flow, translator)
                return False
            return exchange is not None and await self._whole(flow, exchange)
        except StrippedOutputError as exc:
            return self._failed(flow, translator, stripped_error(exc))
        except Exception as exc:  # never a traceback to the client, never a hung stream
            logger.exception("the tool loop failed")
            return self._failed(flow, translator, ProxyError(
                502, f"The tool loop failed ({type(exc).__name__}); see the proxy's log.",
                code="internal_error"))
        finally:
            self.forget(flow)

    def _failed(self, flow: http.HTTPFlow, translator: HarmonyStreamTranslator | None,
                error: ProxyError) -> bool:
        """End the reply with ``error`` in the client API's shape."""
        if translator is None:
            answer(flow, error, self.dialect_of(flow))
            return True
        translator.suspended = False
        _write(flow, translator, translator.fail_now(error))
        return False

    # -- streams ----------------------------------------------------------------------------

    async def _stream(self, flow: http.HTTPFlow, translator: HarmonyStreamTranslator) -> None:
        session = self.sessions[flow.id]
        pooled = self.dispatcher.flows.get(flow.id)
        exchange = translator.exchange
        prompt = exchange.prompt
        while translator.suspended and not translator.done:
            call = translator.decoder.take_server_call()
            if call is None or pooled is None or pooled.attempt is None:
                break
            output = await session.step(
                call, lambda events: _write(flow, translator, translator.emit(events)))
            if output.ends_reply:  # e.g. a call waiting for the client's approval
                break
            tool_text = output.text
            backend = exchange.backend
            prompt = session.next_prompt(
                prompt, translator.generated_ids[session.generated_ids_mark:],
                "".join(translator.result.upstream_text[session.generated_text_mark:]),
                call, tool_text, backend.text_transport)
            replica = pooled.attempt.replica
            attempt = _step_attempt(pooled, replica)
            session.generated_ids_mark = len(translator.generated_ids)
            translator.result.upstream_text.append("")  # the next step's text starts here
            session.generated_text_mark = len(translator.result.upstream_text)
            request = exchange.request
            body = backend.request_body(prompt, request, True, pooled.model_field)
            translator.exchange = dataclasses.replace(
                exchange, backend=ContinuedBackend(_base(backend), translator.completion_tokens))
            translator.framer = SSEFramer()
            translator.suspended = False
            gone = await self._relay(flow, translator, attempt,
                                     replica.url + backend.completions_path, body)
            if gone:
                return
        if translator.suspended and not translator.done:  # the cap, or a step that ends it
            translator.suspended = False
            translator.on_server_call = None
            _write(flow, translator, translator.finish_now())

    async def _relay(self, flow: http.HTTPFlow, translator: HarmonyStreamTranslator,
                     attempt: Attempt, url: str, body: dict[str, Any]) -> bool:
        """One step's stream through the translator to the client; True when the client
        went away."""
        timeout = httpx.Timeout(self.timeout(), connect=CONNECT_TIMEOUT)
        outcome, problem = "ok", None
        try:
            async with self.client().stream("POST", url, json=body, timeout=timeout) as reply:
                if reply.status_code != 200:
                    outcome, problem = "rejected", f"answered {reply.status_code}"
                    raise ProxyError(502, f"The model server answered {reply.status_code} to a "
                                     "tool step.", code="upstream_error")
                async for data in reply.aiter_raw():
                    if not _write(flow, translator, translator(data)):
                        return True
                    if translator.done or translator.suspended:
                        return False
                _write(flow, translator, translator(b""))
        except ProxyError as exc:
            _write(flow, translator, translator.fail_now(exc))
        except httpx.HTTPError as exc:
            outcome, problem = "reset", f"broke ({type(exc).__name__})"
            _write(flow, translator, translator.fail_now(ProxyError(
                502, f"The model server's stream broke during a tool step: {problem}",
                code="upstream_error")))
        finally:
            attempt.end(outcome, problem)
        return False

    # -- whole replies ----------------------------------------------------------------------

    async def _whole(self, flow: http.HTTPFlow, exchange: HarmonyExchange) -> bool:
        """Whole reply: step after step until the answer; the client's body written once."""
        assert flow.response is not None
        record = record_of(flow)
        try:
            output = exchange.backend.read_response(json.loads(flow.response.content or b""))
        except (json.JSONDecodeError, UnicodeDecodeError, BackendFormatError):
            return False  # the reply side reports it
        session = self.sessions.get(flow.id) or self.session(flow, exchange)
        assert session is not None
        decoder = exchange.new_decoder()
        cites = OpeningSteps(session.opening, CitationFilter(session.cite))
        message = AssembledMessage()
        prompt, backend = exchange.prompt, exchange.backend
        url = record.get("upstream_request", {}).get("url", "")
        generated, texts = 0, []
        while True:
            message.add(cites(feed_output(decoder, output)))
            generated += _generated(output)
            texts.append(output.text)
            if not (decoder.end_server_call(output.truncated) and not session.over_cap()):
                break
            call = decoder.take_server_call()
            assert call is not None
            tool = await session.step(call, message.add)
            if tool.ends_reply:
                break
            prompt = session.next_prompt(prompt, output.token_ids or [], output.text, call,
                                         tool.text, backend.text_transport)
            body = backend.request_body(prompt, exchange.request, False,
                                        record.get("upstream_request", {}).get("body", {})
                                        .get("model", ""))
            try:
                response = await self.client().post(url, json=body, timeout=self.timeout())
            except httpx.HTTPError as exc:
                answer(flow, ProxyError(502, f"The model server failed during a tool step "
                                        f"({type(exc).__name__}).", code="upstream_error"),
                       self.dialect_of(flow))
                return True
            if response.status_code != 200:
                answer(flow, upstream_refusal(response.status_code, response.text[:500], body),
                       self.dialect_of(flow))
                return True
            output = backend.read_response(response.json())
        message.add(cites(decoder.finish(output.truncated)) + cites.flush())
        output = dataclasses.replace(output, completion_tokens=generated,
                                     prompt_tokens=len(exchange.prompt.token_ids))
        outcome = exchange.outcome(decoder, message, output, generated)
        with collect_writes() as writes:
            exchange.remember(message)
            body = exchange.reply.whole(message, outcome)
        record["upstream_response"] = {"status": 200, "text": "".join(texts),
                                       "finish_reason": output.finish_reason}
        record["repairs"] = decoder.repairs
        record["usage"] = outcome.usage()
        flow.response = json_response(200, body)
        if writes.pending():
            await self.writes_settle(writes)
        return True


def _generated(output: BackendOutput) -> int:
    if output.completion_tokens is not None:
        return output.completion_tokens
    return len(output.token_ids) if output.token_ids is not None else len(output.text) // 4 + 1


def _base(backend: Backend) -> Backend:
    return backend.backend if isinstance(backend, ContinuedBackend) else backend


def _step_attempt(pooled: Any, replica: Any) -> Attempt:
    """A tool step's request on the replica of the step before (its prefix is cached there),
    counted in flight and in the flow record's replicas."""
    replica.in_flight += 1
    entry = {"replica": replica.url, "tool_step": True}
    pooled.log.append(entry)
    return Attempt(replica, entry)


def _write(flow: http.HTTPFlow, translator: HarmonyStreamTranslator, out: list[bytes]) -> bool:
    """Send ``out`` to the client; False when it is gone."""
    if not out:
        return True
    translator.last_sent = translator.clock()
    return write_chunk(flow, b"".join(out))
