"""The gateway's request side: local answers, and each client API's request routed.

``RequestSide`` answers the local endpoints (``/health``, ``/v1/models``, stored responses,
``count_tokens``) and every bad request in the client API's own error shape; it routes a model
request to Groq (the flow rewritten, the key injected) or renders it into a harmony prompt for
a model-server replica (or spill-over's Groq twin). What the reply side needs later is left in
``InFlight``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from .auth import check_proxy_key
from .chat_request import ChatRequest, check_word_lengths, parse_json_body
from .dialects.base import Conversation, Dialect, GroqCall
from .dialects.table import DialectTable
from .errors import ProxyError
from .flows import answer, json_response, restore_client_request, rewrite
from .groq import clamp_max_tokens
from .key_injector import GroqKeyInjector
from .local import LocalEndpoints, model_list_dialect
from .pool.dispatch import Dispatcher
from .pool.pool import Pools
from .reasoning_memory import ReasoningMemory
from .records import header_pairs, record_of
from .redact import redact_headers
from .render import render_prompt
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
from .spill import Spillover
from .state.addon import State
from .tools.code_addon import CodeExecution
from .tools.mcp import secrets as mcp_secrets
from .translate import HarmonyExchange

logger = logging.getLogger(__name__)
NO_RETRY = {"x-should-retry": "false"}


@dataclasses.dataclass
class InFlight:
    """What the request side leaves for the reply side, by flow id."""

    exchanges: dict[str, HarmonyExchange] = dataclasses.field(default_factory=dict)
    groq_calls: dict[str, GroqCall] = dataclasses.field(default_factory=dict)


class RequestSide:
    """The ``requestheaders`` and ``request`` hooks of the gateway."""

    def __init__(self, settings: Settings, state: State, dialects: DialectTable,
                 local: LocalEndpoints, pools: Pools, dispatcher: Dispatcher,
                 memory: ReasoningMemory, injector: GroqKeyInjector, spill: Spillover,
                 in_flight: InFlight, code: CodeExecution) -> None:
        self.settings = settings
        self.state = state
        self.dialects = dialects
        self.local = local
        self.pools = pools
        self.dispatcher = dispatcher
        self.memory = memory
        self.injector = injector
        self.spill = spill
        self.in_flight = in_flight
        self.code = code  # harmony's python tool: declared where a request asks for it
        self.late_key = True  # the injector on the chain's end adds the key (Gateway.running)
        # Server tools' work before rendering (toolloop/ ToolLoop.prepare; Gateway sets it)
        self.prepare_tools: Callable[[ChatRequest], Awaitable[ChatRequest]] | None = None

    @property
    def config(self) -> Config:
        return cast(Config, self.settings.config)

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
                answer(flow, self._too_large(), self.dialects.dialect_of(endpoint))

    def _too_large(self) -> ProxyError:
        return ProxyError(413, f"The request body is larger than {self.config.max_body_size} "
                          "bytes (MAX_BODY_SIZE).", code="request_too_large")

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if flow.is_replay == "request":
            restore_client_request(flow)
        endpoint = self._endpoint(flow)
        dialect = self.dialects.dialect_of(endpoint or Endpoint.UNKNOWN)
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
            flow.response = json_response(200, await self.dialects.responses.stored(
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
                "replicas": self.pools.health(), "spillover": self.spill.health(),
                "code_execution": self.code.health()}
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
        model = self.dialects.messages.model(body, self.config)
        groq = choose_route(model, self.config.harmony_models).route is Route.GROQ
        request = self.dialects.messages.chat(body, self.config,
                                              "placeholder" if groq else "refuse")
        check_word_lengths(body)
        transport = self.pools.for_model(model).text_transport
        return len(render_prompt(request, self.config.harmony_date, transport).token_ids)

    async def _route(self, flow: http.HTTPFlow, dialect: Dialect) -> None:
        body = self._body(flow)
        record = record_of(flow)
        record["client_path"] = flow.request.path
        record["client_request"] = {"headers": redact_headers(header_pairs(flow.request)),
                                    "body": mcp_secrets.masked(body)}
        if secrets := mcp_secrets.values(body):  # MCP credentials: masked in the whole record
            record["secrets"] = secrets
        model = dialect.model(body, self.config)
        if dialect is self.dialects.responses:  # the stored response it continues (state store)
            dialect = await self.dialects.responses.recall(body)
        record["model"] = model
        choice = choose_route(model, self.config.harmony_models)
        record["route"] = choice.route.value
        record["stream"] = body.get("stream") is True
        if choice.route is Route.GROQ:
            self._to_groq(flow, dialect.groq_call(body, choice.upstream_model, self.config))
        # gpt-oss: the model server, unless spill-over sends it to Groq's twin (spill/)
        elif call := await self.spill.route(flow, self._with_code(flow, dialect, body),
                                            self._to_harmony):
            self._to_groq(flow, call)

    def _with_code(self, flow: http.HTTPFlow, dialect: Dialect, body: dict[str, Any]
                   ) -> Conversation:
        """The conversation, with harmony's python tool where the client asked for code
        execution (tools/code_addon.py); a spilled request asks Groq's twin to run it."""
        conversation = dialect.conversation(body, self.config)
        specs = self.code.declare(dialect.name, body, flow.request.headers)
        if not specs:
            return conversation
        chat = conversation.chat
        return dataclasses.replace(conversation, chat=dataclasses.replace(
            chat, server_tools=chat.server_tools + specs))

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
        self.in_flight.groq_calls[flow.id] = call

    async def _to_harmony(self, flow: http.HTTPFlow, conversation: Conversation) -> None:
        config = self.config
        check_word_lengths(conversation.body)
        if config.backend == "vllm":  # measured once vLLM is up, for /health (cached after)
            await self.local.context_length()
        request = conversation.chat
        if request.server_tools and self.prepare_tools is not None:
            request = await self.prepare_tools(request)
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
        self.in_flight.exchanges[flow.id] = HarmonyExchange(
            request, prompt, backend, conversation.reply, self.memory)
