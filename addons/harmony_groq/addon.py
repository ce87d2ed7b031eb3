"""The gateway: answers the local endpoints and routes each client API's requests.

``Gateway`` picks the endpoint from the path and the dialect (Chat Completions, Responses,
Anthropic Messages) that speaks it; it routes by model (Groq, or harmony prompt → model server)
in ``request``, installs stream translators in ``responseheaders`` and translates whole replies
in ``response``. ``GroqKeyInjector`` adds the Groq key at the last moment. ``addons/harmony.py``
wires them with ``Settings`` (settings.py) and ``FlowLog`` (records.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ReverseMode

from .auth import check_proxy_key
from .backends import BackendFormatError, upstream_refusal
from .chat_request import check_word_lengths, parse_json_body
from .completion import reasoning_keys
from .dialects.base import Conversation, Dialect, GroqCall
from .dialects.chat import ChatDialect
from .dialects.messages import MessagesDialect
from .dialects.responses import ResponsesDialect
from .errors import ProxyError
from .flows import (
    answer,
    is_local,
    json_response,
    prepare_sse,
    restore_client_request,
    rewrite,
)
from .groq import clamp_max_tokens, rename_reasoning
from .groq_stream import GroqResponsesRelay, GroqStreamRelay
from .groq_translate import GroqChatTranslator, retry_headers, translate_reply
from .key_injector import GroqKeyInjector
from .local import LocalEndpoints, model_list_dialect
from .parse import StrippedOutputError
from .pool.capacity import PoolCapacity
from .pool.dispatch import Dispatcher
from .pool.pool import Pools
from .pool.resume import Failover
from .reasoning_memory import ReasoningMemory
from .records import header_pairs, record_of
from .redact import REDACTED, redact_headers
from .render import render_prompt
from .response_store import ResponseStore
from .routing import (
    ALLOWED_METHODS,
    Endpoint,
    Route,
    bare_path,
    choose_route,
    classify_path,
    forward_endpoint,
    response_item_id,
)
from .settings import Config, Settings
from .spillover import Spillover
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
from .translate import HarmonyExchange, translate_completion
from .upstream import ModelServerClient

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)
NO_RETRY = {"x-should-retry": "false"}
_MASKED_KEY = f"Bearer {REDACTED}".encode()

class Gateway:
    """Answers local endpoints and routes each dialect's requests to Groq or gpt-oss."""

    def __init__(self, settings: Settings, state: State | None = None) -> None:
        self.settings = settings
        self.state = state or State(settings)  # harmony.py passes the one it loads as an addon
        self.upstream = ModelServerClient()
        self.local = LocalEndpoints(settings, self.upstream.client)
        self.pools = Pools(self.upstream.client)
        self.dispatcher = Dispatcher(self.pools, self.upstream)
        self.failover = Failover(self.dispatcher, self.upstream.client,
                                 lambda: self.config.upstream_timeout, self._translator)
        self.responses = ResponsesDialect(ResponseStore(self.state.responses))
        self.messages = MessagesDialect()
        self.dialects: dict[Endpoint, Dialect] = {
            Endpoint.CHAT: ChatDialect(), Endpoint.RESPONSES: self.responses,
            Endpoint.RESPONSE_ITEM: self.responses, Endpoint.MESSAGES: self.messages,
            Endpoint.COUNT_TOKENS: self.messages}
        self.exchanges: dict[str, HarmonyExchange] = {}
        self.groq_calls: dict[str, GroqCall] = {}
        self.streams: dict[str, InterruptibleStream] = {}
        self.relays: dict[str, GroqStreamRelay | GroqResponsesRelay] = {}
        self.heartbeats: dict[str, asyncio.Task] = {}
        self.ends = EndsAfterWrites(self.state.settle)
        self.memory = ReasoningMemory(self.state.reasoning)
        self.injector = GroqKeyInjector(settings)
        self.spill = Spillover(settings, lambda: self.memory,  # an addon after this one
                               sticky=self.state.spill, capacity=PoolCapacity(
                                   self.pools, lambda: self.config.spillover_max_inflight))
        self.late_key = True  # the injector on the chain's end adds the key (see running)
        self._startup_check: asyncio.Task | None = None

    @property
    def config(self) -> Config:
        # Set by Settings.configure before any flow; mitmproxy may read this attribute earlier.
        return cast(Config, self.settings.config)

    def dialect_of(self, endpoint: Endpoint) -> Dialect:
        """The dialect whose shape the flow's answers (errors included) take."""
        return self.dialects.get(endpoint) or self.dialects[Endpoint.CHAT]

    def flow_dialect(self, flow: http.HTTPFlow) -> Dialect:
        name = record_of(flow).get("dialect")
        return next((d for d in self.dialects.values() if d.name == name),
                    self.dialects[Endpoint.CHAT])

    def configure(self, updated: set[str]) -> None:
        self.local.configure(updated)
        if self.settings.config is not None:
            self.pools.configure(self.config.model_servers, self.config.routing)

    def running(self) -> None:
        # Where flows are shown (mitmweb's view), the key injector must see them after every
        # other addon, so it joins the end of mitmproxy's chain rather than this script's
        # list. mitmdump shows no flow before it is sent: the key goes in with the request
        # hook there, which spares mitmproxy one more addon to call on every event.
        self.late_key = ctx.master.addons.get("view") is not None
        if self.late_key and self.injector not in ctx.master.addons.chain:
            ctx.master.addons.add(self.injector)
        if self.settings.config is not None:
            self._startup_check = asyncio.get_running_loop().create_task(
                self.local.check_server())
            self.local.fetch_groq_models()  # Groq's output limits, before the first request
            self.pools.start()

    def done(self) -> None:
        if self.injector in ctx.master.addons.chain:
            ctx.master.addons.remove(self.injector)
        self.pools.stop()
        self.upstream.close()

    # -- request --------------------------------------------------------------------------

    def _endpoint(self, flow: http.HTTPFlow) -> Endpoint | None:
        """The endpoint in reverse mode; in regular mode the client API, or None to pass."""
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            return classify_path(flow.request.path)
        return forward_endpoint(flow.request.method, flow.request.path)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        record_of(flow)["started"] = flow.request.timestamp_start
        length = flow.request.headers.get("content-length", "")
        if self.settings.config and length.isdigit() and int(length) > self.config.max_body_size:
            endpoint = self._endpoint(flow)
            if endpoint is not None:
                answer(flow, self._too_large(), self.dialect_of(endpoint))

    def _too_large(self) -> ProxyError:
        return ProxyError(413, f"The request body is larger than {self.config.max_body_size} "
                          "bytes (MAX_BODY_SIZE).", code="request_too_large")

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if flow.is_replay == "request":
            restore_client_request(flow)
        endpoint = self._endpoint(flow)
        dialect = self.dialect_of(endpoint or Endpoint.UNKNOWN)
        if self.settings.config is None:  # never forward anything while unconfigured
            answer(flow, ProxyError(503, "The proxy's settings did not load; see its log.",
                                    code="not_configured"), dialect)
            return
        if endpoint is None:
            record_of(flow)["route"] = "passthrough"
            return
        if endpoint in self.dialects:  # errors before routing count under the client's API too
            record_of(flow)["dialect"] = dialect.name
        elif endpoint is Endpoint.MODELS:
            record_of(flow)["dialect"] = model_list_dialect(flow.request)
        try:
            await self._answer_or_route(flow, endpoint, dialect)
        except ProxyError as exc:
            answer(flow, exc, dialect, NO_RETRY if exc.status < 500 else None)
        except RecursionError:
            answer(flow, ProxyError(400, "The request body is nested too deeply.",
                                    code="invalid_request"), dialect, NO_RETRY)
        except Exception as exc:
            logger.exception("unexpected failure handling %s %s", flow.request.method,
                             flow.request.path)
            answer(flow, ProxyError(500, f"Internal proxy error ({type(exc).__name__}); "
                                    "see the proxy's log.", code="internal_error"), dialect)

    async def _answer_or_route(self, flow: http.HTTPFlow, endpoint: Endpoint,
                               dialect: Dialect) -> None:
        path = bare_path(flow.request.path)
        if endpoint is Endpoint.UNKNOWN:
            raise ProxyError(404, f"Unknown path {path!r}: this proxy serves "
                             "/v1/chat/completions, /v1/responses, /v1/messages, /v1/models "
                             "and /health.", code="not_found")
        allowed = ALLOWED_METHODS[endpoint]
        if flow.request.method not in allowed:
            answer(flow, ProxyError(405, f"Use {' or '.join(allowed)} for {path}.",
                                    code="method_not_allowed"), dialect,
                   {"allow": ", ".join(allowed)})
            return
        record_of(flow)["route"] = "local"
        if endpoint is Endpoint.HEALTH:
            flow.response = json_response(200, await self._health())
            return
        check_proxy_key(flow, self.config.proxy_api_key)
        if endpoint is Endpoint.MODELS:
            flow.response = json_response(200, await self.local.model_list(flow.request))
            return
        if endpoint is Endpoint.RESPONSE_ITEM:
            flow.response = json_response(200, await self.responses.stored(
                flow.request.method, response_item_id(flow.request.path)))
            return
        if endpoint is Endpoint.COUNT_TOKENS:
            flow.response = json_response(200, {"input_tokens": self._count_tokens(flow)})
            return
        await self._route(flow, dialect)

    async def _health(self) -> dict[str, Any]:
        """The model server's cached check and the state store's live one."""
        store = await self.state.health()
        body = {**await self.local.health(), "state_store": store,
                "replicas": self.pools.health()}
        if store["status"] != "ok":
            body["status"] = "degraded"
        return body

    def _body(self, flow: http.HTTPFlow) -> dict[str, Any]:
        raw = flow.request.raw_content or b""
        if len(raw) > self.config.max_body_size:
            raise self._too_large()
        try:
            content = flow.request.get_content(strict=True) or b""
        except ValueError:
            raise ProxyError(400, "The request body's content-encoding cannot be decoded.",
                             code="invalid_encoding") from None
        if len(content) > self.config.max_body_size:  # the limit holds once decompressed too
            raise self._too_large()
        return parse_json_body(content)

    def _count_tokens(self, flow: http.HTTPFlow) -> int:
        """The rendered harmony prompt's length: exact for gpt-oss, an estimate for Groq."""
        body = self._body(flow)
        model = self.messages.model(body, self.config)
        groq = choose_route(model, self.config.harmony_models).route is Route.GROQ
        request = self.messages.chat(body, self.config, "placeholder" if groq else "refuse")
        check_word_lengths(body)
        transport = self.pools.for_model(model).text_transport
        return len(render_prompt(request, self.config.harmony_date, transport).token_ids)

    async def _route(self, flow: http.HTTPFlow, dialect: Dialect) -> None:
        body = self._body(flow)
        record = record_of(flow)
        record["client_path"] = flow.request.path
        record["client_request"] = {"headers": redact_headers(header_pairs(flow.request)),
                                    "body": body}
        model = dialect.model(body, self.config)
        if dialect is self.responses:  # the stored response it continues, from the state store
            dialect = await self.responses.recall(body)
        record["model"] = model
        choice = choose_route(model, self.config.harmony_models)
        record["route"] = choice.route.value
        record["stream"] = body.get("stream") is True
        if choice.route is Route.GROQ:
            self._to_groq(flow, dialect.groq_call(body, choice.upstream_model, self.config))
        # gpt-oss: the model server, unless spill-over sends it to Groq's twin (spillover.py)
        elif call := await self.spill.route(flow, dialect.conversation(body, self.config),
                                            self._to_harmony):
            self._to_groq(flow, call)

    def _to_groq(self, flow: http.HTTPFlow, call: GroqCall) -> None:
        if not self.config.groq_api_key:
            raise ProxyError(503, "GROQ_API_KEY is not configured on the proxy, so non-gpt-oss "
                             "models are unavailable. Set it in the proxy's environment.",
                             code="groq_key_missing")
        url = self.config.groq_base_url + call.path
        body = clamp_max_tokens(call.body, self.local.groq_limit(call.body.get("model", "")))
        record = record_of(flow)
        # A chat body Groq takes as it is goes on as the client's (uncompressed) bytes.
        unchanged = (body == record["client_request"]["body"]
                     and "content-encoding" not in flow.request.headers)
        rewrite(flow, url, None if unchanged else body)
        record["upstream_request"] = {
            "url": url, "body": record["client_request"]["body"] if unchanged else body}
        if self.late_key:
            record["inject_key"] = True
        else:
            self.injector.inject(flow)
        self.groq_calls[flow.id] = call

    async def _to_harmony(self, flow: http.HTTPFlow, conversation: Conversation) -> None:
        config = self.config
        check_word_lengths(conversation.body)
        if config.backend == "vllm":  # measured once vLLM is up, for /health (cached after)
            await self.local.context_length()
        request = conversation.chat
        record = record_of(flow)
        messages, restored = await self.memory.restore(request.messages)
        if restored:  # the client dropped the analysis before calls the proxy issued
            request = dataclasses.replace(request, messages=messages)
            record["restored_reasoning"] = restored
        transport = self.pools.for_model(request.model).text_transport
        prompt = render_prompt(request, config.harmony_date, transport)
        record["prompt"] = prompt.text
        record["prompt_tokens"] = len(prompt.token_ids)
        backend = await self.dispatcher.send(flow, prompt, request, config.transformers_model,
                                             config.replica_attempts, config.upstream_timeout)
        self.exchanges[flow.id] = HarmonyExchange(request, prompt, backend, conversation.reply,
                                                  self.memory)

    # -- response -------------------------------------------------------------------------

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

        call = self.groq_calls.get(flow.id)
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
        exchange = self.exchanges.get(flow.id)
        if exchange is None or not exchange.request.stream:
            return None
        record = record_of(flow)
        translator = HarmonyStreamTranslator(
            exchange, self.config.keepalive_seconds,
            lambda result: record.__setitem__("stream_summary", result.summary()),
            hold_end=self.ends.holder(flow))  # the end waits for the writes the next turn reads
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
        return self._response(flow)

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
        with collect_writes() as writes:
            if call is not None:
                self._groq_response(flow, call)
            elif exchange is not None:
                self._harmony_response(flow, exchange)
        return self.state.settle(writes) if writes.pending() else None

    def _harmony_response(self, flow: http.HTTPFlow, exchange: HarmonyExchange) -> None:
        assert flow.response is not None
        record = record_of(flow)
        dialect = self.flow_dialect(flow)
        if flow.response.status_code != 200:
            status = flow.response.status_code
            excerpt = (flow.response.get_text(strict=False) or "")[:500]
            record["upstream_response"] = {"status": status, "body": excerpt}
            sent = record.get("upstream_request", {}).get("body", {})
            answer(flow, upstream_refusal(status, excerpt, sent), dialect)
            return
        try:
            payload = json.loads(flow.response.content or b"")
            output = exchange.backend.read_response(payload)
            record["upstream_response"] = {"status": 200, "text": output.text,
                                           "finish_reason": output.finish_reason}
            translated = translate_completion(exchange, output)
        except StrippedOutputError as exc:
            answer(flow, stripped_error(exc), dialect)
            return
        except (json.JSONDecodeError, UnicodeDecodeError, BackendFormatError) as exc:
            answer(flow, ProxyError(502, f"The model server's answer was unreadable: {exc}",
                                    code="upstream_error"), dialect)
            return
        record["repairs"] = translated.repairs
        record["usage"] = translated.outcome.usage()
        flow.response = json_response(200, translated.body)

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
            answer(flow, exc, self.flow_dialect(flow), retry_headers(response))
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
        relay = self.relays.pop(flow.id, None)
        if relay is not None:
            record_of(flow)["stream_summary"] = relay.summary()
        return (self.exchanges.pop(flow.id, None), self.groq_calls.pop(flow.id, None),
                self.streams.pop(flow.id, None))

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


def _mask_groq_key(flow: http.HTTPFlow) -> None:
    """Once the request went to Groq, the injected key is masked in the flow (mitmweb, saved
    flows) again."""
    if record_of(flow).get("route") != "groq":
        return
    headers = flow.request.headers  # one pass over the raw fields, as flows.rewrite does
    headers.fields = tuple((name, _MASKED_KEY) if name.lower() == b"authorization"
                           else (name, value) for name, value in headers.fields)
