"""The gateway: answers the local endpoints and routes chat completions.

``Gateway`` answers ``/health``, ``/v1/models`` and errors itself and routes chat completions
(Groq URL, or harmony prompt → model server) in ``request``, installs stream translators in
``responseheaders`` and translates whole replies in ``response``; ``GroqKeyInjector`` adds the
Groq key at the last moment. ``addons/harmony.py`` wires them with ``Settings`` (settings.py)
and ``FlowLog`` (records.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ReverseMode

from .auth import check_proxy_key
from .backends import BackendFormatError, make_backend
from .chat_request import parse_chat_request, parse_json_body, require_model_and_messages
from .completion import reasoning_keys
from .errors import ProxyError
from .groq import (
    DROP_HEADERS,
    GroqModels,
    GroqStreamRelay,
    apply_reasoning_keys,
    sanitize_body,
)
from .parse import StrippedOutputError
from .records import META, header_pairs, record_of
from .redact import REDACTED, redact_headers
from .render import render_prompt
from .routing import (
    ALLOWED_METHODS,
    Endpoint,
    Route,
    choose_route,
    classify_path,
    is_chat_completions_path,
)
from .settings import Config, Settings
from .streaming import HarmonyStreamTranslator, StreamResult, send_last_chunk, stripped_error
from .translate import HarmonyExchange, translate_completion

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)
NO_RETRY = {"x-should-retry": "false"}
MAX_WORD = 32_768
_LONG_WORD = re.compile(rf"[^\W\d_]{{{MAX_WORD}}}")


def answer(flow: http.HTTPFlow, error: ProxyError, headers: dict[str, str] | None = None) -> None:
    flow.response = error.to_response(headers)
    record = record_of(flow)
    record["error"] = error.message
    record.setdefault("route", "local")


def _has_long_word(value: Any) -> bool:
    """A string (key or value) holding a run of more than MAX_WORD letters. Only strings that
    long can, so the regex (~100 ns a character) runs on almost nothing."""
    if isinstance(value, str):
        return len(value) >= MAX_WORD and _LONG_WORD.search(value) is not None
    if isinstance(value, dict):
        return any(_has_long_word(k) or _has_long_word(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_long_word(v) for v in value)
    return False


class GroqKeyInjector:
    """Adds the Groq key to a routed flow at the last moment.

    mitmproxy runs the ``update`` hook across the chain right after ``request`` and sends the
    request once it returns. Sitting at the very end of the chain, this runs after mitmweb's
    view has published the flow, so the key never reaches a browser; ``Gateway`` masks it
    again in ``responseheaders`` once it went upstream.
    """

    name = "harmony_groq_key_injector"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def update(self, flows: list) -> None:
        config = self.settings.config
        for flow in flows:
            # An intercepted flow waits in mitmweb: inject on the update its resume triggers.
            if (isinstance(flow, http.HTTPFlow) and flow.response is None and config
                    and not flow.intercepted
                    and flow.metadata.get(META, {}).pop("inject_key", False)):
                flow.request.headers["authorization"] = f"Bearer {config.groq_api_key}"


class Gateway:
    """Answers local endpoints and routes chat completions to Groq or the gpt-oss backend."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = GroqModels()
        self.exchanges: dict[str, HarmonyExchange] = {}
        self.relays: dict[str, GroqStreamRelay] = {}
        self.translators: dict[str, HarmonyStreamTranslator] = {}
        self._client: httpx.AsyncClient | None = None
        self._health: tuple[float, dict[str, Any]] | None = None
        self._health_task: asyncio.Task | None = None
        self.injector = GroqKeyInjector(settings)
        self.server_info: dict[str, Any] = {}
        self._startup_check: asyncio.Task | None = None

    @property
    def config(self) -> Config:
        # Set by Settings.configure before any flow; mitmproxy may read this attribute earlier.
        return cast(Config, self.settings.config)

    def http_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False,
                                             limits=httpx.Limits(max_connections=256))
        return self._client

    def configure(self, updated: set[str]) -> None:
        if "models_cache_seconds" in updated or "groq_base_url" in updated:
            self.models = GroqModels()
        if updated & {"backend", "transformers_url"}:
            self.server_info = {}
        self._health = None

    def running(self) -> None:
        # The key injector must see flows after every other addon (mitmweb's view included),
        # so it joins the end of mitmproxy's chain rather than this script's list.
        if self.injector not in ctx.master.addons.chain:
            ctx.master.addons.add(self.injector)
        if self.settings.config is not None:
            self._startup_check = asyncio.get_running_loop().create_task(self._check_server())

    async def _check_server(self) -> None:
        """Say at start-up what the model server is, or what is wrong with it."""
        await self._refresh_health()
        config, info = self.config, self.server_info
        if info.get("problem"):
            logger.warning("gpt-oss model server %s (BACKEND=%s): %s", config.transformers_url,
                           config.backend, info["problem"])
        else:
            logger.info("gpt-oss model server: %s %s, model %s, context %s", info.get("kind"),
                        info.get("version") or "(version not reported)", info.get("model"),
                        info.get("context_length"))

    def done(self) -> None:
        if self.injector in ctx.master.addons.chain:
            ctx.master.addons.remove(self.injector)
        if self._client is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(self._client.aclose())
            self._client = None

    # -- request --------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        record_of(flow)["started"] = flow.request.timestamp_start
        length = flow.request.headers.get("content-length", "")
        if self.settings.config and length.isdigit() and int(length) > self.config.max_body_size:
            answer(flow, self._too_large())

    def _too_large(self) -> ProxyError:
        return ProxyError(413, f"The request body is larger than {self.config.max_body_size} "
                          "bytes (MAX_BODY_SIZE).", code="request_too_large")

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        if self.settings.config is None:  # never forward anything while unconfigured
            answer(flow, ProxyError(503, "The proxy's settings did not load; see its log.",
                                    code="not_configured"))
            return
        if flow.is_replay == "request":
            _restore_client_request(flow)
        reverse = isinstance(flow.client_conn.proxy_mode, ReverseMode)
        path = flow.request.path
        if not reverse and not (flow.request.method == "POST" and is_chat_completions_path(path)):
            record_of(flow)["route"] = "passthrough"
            return
        endpoint = classify_path(path) if reverse else Endpoint.CHAT
        try:
            await self._answer_or_route(flow, endpoint)
        except ProxyError as exc:
            answer(flow, exc, NO_RETRY if exc.status < 500 else None)
        except RecursionError:
            answer(flow, ProxyError(400, "The request body is nested too deeply.",
                                    code="invalid_request"), NO_RETRY)
        except Exception as exc:
            logger.exception("unexpected failure handling %s %s", flow.request.method, path)
            answer(flow, ProxyError(500, f"Internal proxy error ({type(exc).__name__}); "
                                    "see the proxy's log.", code="internal_error"))

    async def _answer_or_route(self, flow: http.HTTPFlow, endpoint: Endpoint) -> None:
        if endpoint is Endpoint.UNKNOWN:
            raise ProxyError(404, f"Unknown path {flow.request.path.split('?')[0]!r}: this proxy "
                             "serves /v1/chat/completions, /v1/models and /health.",
                             code="not_found")
        allowed = ALLOWED_METHODS[endpoint]
        if flow.request.method != allowed:
            answer(flow, ProxyError(405, f"Use {allowed} for {flow.request.path.split('?')[0]}.",
                                    code="method_not_allowed"), {"allow": allowed})
            return
        if endpoint is Endpoint.HEALTH:
            record_of(flow)["route"] = "local"
            flow.response = _json_response(200, await self.health())
            return
        check_proxy_key(flow, self.config.proxy_api_key)
        if endpoint is Endpoint.MODELS:
            record_of(flow)["route"] = "local"
            flow.response = _json_response(200, await self.model_list())
            return
        await self.chat(flow)

    async def chat(self, flow: http.HTTPFlow) -> None:
        raw = flow.request.raw_content or b""
        if len(raw) > self.config.max_body_size:
            raise self._too_large()
        try:
            content = flow.request.get_content(strict=True) or b""
        except ValueError:
            raise ProxyError(400, "The request body's content-encoding cannot be decoded.",
                             code="invalid_encoding") from None
        body = parse_json_body(content)
        record = record_of(flow)
        record["client_path"] = flow.request.path
        record["client_request"] = {"headers": redact_headers(header_pairs(flow.request)),
                                    "body": body}
        model = require_model_and_messages(body)
        record["model"] = model
        choice = choose_route(model, self.config.harmony_models)
        record["route"] = choice.route.value
        record["stream"] = body.get("stream") is True
        if choice.route is Route.GROQ:
            self._to_groq(flow, body, choice.upstream_model)
        else:
            await self._to_harmony(flow, body)

    def _to_groq(self, flow: http.HTTPFlow, body: dict[str, Any], model: str) -> None:
        key = self.config.groq_api_key
        if not key:
            raise ProxyError(503, "GROQ_API_KEY is not configured on the proxy, so non-gpt-oss "
                             "models are unavailable. Set it in the proxy's environment.",
                             code="groq_key_missing")
        upstream = sanitize_body(body, model)
        url = f"{self.config.groq_base_url}/chat/completions"
        _rewrite(flow, url, upstream)
        record = record_of(flow)
        record["upstream_request"] = {"url": url, "body": upstream}
        record["inject_key"] = True

    async def _to_harmony(self, flow: http.HTTPFlow, body: dict[str, Any]) -> None:
        config = self.config
        if config.backend == "vllm" and "context_length" not in self.server_info:
            await self._refresh_health()  # vLLM needs the context length for its max_tokens
        if _has_long_word(body):
            # o200k BPE is quadratic in the length of one word: 200k letters take ~12 s of
            # CPU on the event loop. Refuse instead of stalling every other client.
            raise ProxyError(400, f"A message contains a word longer than {MAX_WORD} letters "
                             "without spaces; gpt-oss cannot tokenize it in reasonable time.",
                             code="word_too_long")
        backend = make_backend(config.backend, self.server_info.get("context_length"))
        request = parse_chat_request(body)
        prompt = render_prompt(request, config.harmony_date, backend.text_transport)
        exchange = HarmonyExchange(request, prompt, backend, config.reasoning_field)
        upstream = backend.request_body(prompt, request, request.stream, config.transformers_model)
        url = config.transformers_url + backend.completions_path
        record = record_of(flow)
        record["prompt"] = prompt.text
        record["prompt_tokens"] = len(prompt.token_ids)
        record["upstream_request"] = {"url": url, "body": upstream}
        _rewrite(flow, url, upstream)
        if request.stream:
            # mitmproxy forwards streams itself; its connect-failure page is HTML, so probe first.
            await self._probe(url)
            self.exchanges[flow.id] = exchange
            return
        flow.response = await self._call_backend(url, upstream)
        self.exchanges[flow.id] = exchange

    async def _probe(self, url: str) -> None:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname, port), timeout=5)
        except (OSError, TimeoutError):
            raise _unreachable(url) from None
        writer.close()

    async def _call_backend(self, url: str, body: dict[str, Any]) -> http.Response:
        """Non-streamed backend call, made here so a timeout can become a JSON 504."""
        try:
            response = await self.http_client().post(url, json=body,
                                              timeout=self.config.upstream_timeout)
        except httpx.ConnectError:
            raise _unreachable(url) from None
        except httpx.TimeoutException:
            raise ProxyError(504, f"The model server did not answer within "
                             f"{self.config.upstream_timeout} s (UPSTREAM_TIMEOUT).",
                             code="upstream_timeout") from None
        except httpx.HTTPError as exc:
            raise ProxyError(502, f"The model server's answer was unreadable "
                             f"({type(exc).__name__}).", code="upstream_error") from None
        headers = {k: v for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding",
                                        "content-encoding", "connection")}
        return http.Response.make(response.status_code, response.content, headers)

    # -- response -------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record = record_of(flow)
        assert flow.response is not None
        record.setdefault("response_headers_at", time.time())
        if "authorization" in flow.request.headers and record.get("route") == "groq":
            flow.request.headers["authorization"] = f"Bearer {REDACTED}"
        exchange = self.exchanges.get(flow.id)
        ok = flow.response.status_code == 200
        if exchange is not None and exchange.request.stream and ok and not _is_local(flow):
            def store(result: StreamResult) -> None:
                record["stream_summary"] = {
                    "upstream_text": "".join(result.upstream_text),
                    "message": result.client_message(),
                    "finish_reason": result.finish_reason, "usage": result.usage,
                    "error": result.error, "repairs": result.repairs,
                    "first_token_at": result.first_token_at,
                    "keepalives": result.keepalives,
                }

            translator = HarmonyStreamTranslator(exchange, self.config.keepalive_seconds, store)
            _prepare_sse(flow)
            flow.response.stream = translator
            self.translators[flow.id] = translator
        elif record.get("route") == "groq" and "text/event-stream" in flow.response.headers.get(
                "content-type", ""):
            relay = GroqStreamRelay(reasoning_keys(self.config.reasoning_field, False))
            self.relays[flow.id] = relay
            flow.response.stream = relay

    def response(self, flow: http.HTTPFlow) -> None:
        exchange = self.exchanges.pop(flow.id, None)
        self.translators.pop(flow.id, None)
        relay = self.relays.pop(flow.id, None)
        record = record_of(flow)
        if relay is not None:
            record["stream_summary"] = relay.summary()
        if record.get("route") == "groq" and flow.response is not None and not (
                flow.response.stream):
            self._groq_reasoning(flow)
        if exchange is None or flow.response is None or flow.response.stream:
            return
        if flow.response.status_code != 200:
            self._backend_error(flow)
            return
        try:
            payload = json.loads(flow.response.content or b"")
            output = exchange.backend.read_response(payload)
            record["upstream_response"] = {"status": 200, "text": output.text,
                                           "finish_reason": output.finish_reason}
            translated = translate_completion(exchange, output)
        except StrippedOutputError as exc:
            answer(flow, stripped_error(exc))
            return
        except (json.JSONDecodeError, UnicodeDecodeError, BackendFormatError) as exc:
            answer(flow, ProxyError(502, f"The model server's answer was unreadable: {exc}",
                                    code="upstream_error"))
            return
        record["repairs"] = translated.repairs
        flow.response = _json_response(200, translated.body)

    def _groq_reasoning(self, flow: http.HTTPFlow) -> None:
        """Groq answers ``message.reasoning``; offer it under the configured field names."""
        assert flow.response is not None
        content = flow.response.content or b""
        if flow.response.status_code != 200 or b'"reasoning"' not in content:
            return
        try:
            body = json.loads(content)
            changed = any([apply_reasoning_keys(choice["message"], reasoning_keys(
                self.config.reasoning_field, False)) for choice in body["choices"]])
        except (ValueError, KeyError, TypeError):
            return
        if changed:
            flow.response.content = json.dumps(body, ensure_ascii=False).encode()

    def _backend_error(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        status = flow.response.status_code
        excerpt = (flow.response.get_text(strict=False) or "")[:500]
        record_of(flow)["upstream_response"] = {"status": status, "body": excerpt}
        answer(flow, ProxyError(502, f"The model server answered {status}: {excerpt}",
                                code="upstream_error"))

    def error(self, flow: http.HTTPFlow) -> None:
        self.exchanges.pop(flow.id, None)
        translator = self.translators.pop(flow.id, None)
        if translator is not None and flow.error is not None:
            # Upstream reset or client gone mid-stream: log it, and end the client's stream
            # with an error event instead of a truncated body.
            send_last_chunk(flow, translator.abort(flow.error.msg))
        relay = self.relays.pop(flow.id, None)
        if relay is not None:
            record_of(flow)["stream_summary"] = relay.summary()
        if "authorization" in flow.request.headers and record_of(flow).get("route") == "groq":
            flow.request.headers["authorization"] = f"Bearer {REDACTED}"

    # -- local answers --------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Answered from a cache refreshed in the background, so it stays fast under load."""
        if self._health is None:
            await self._refresh_health()
        elif time.monotonic() - self._health[0] > 2 and (
                self._health_task is None or self._health_task.done()):
            self._health_task = asyncio.create_task(self._refresh_health())
        assert self._health is not None
        return self._health[1]

    async def _refresh_health(self) -> None:
        config = self.config
        info = await make_backend(config.backend).describe(self.http_client(),
                                                           config.transformers_url)
        self.server_info = info
        body = {
            "status": "ok",
            "transformers": {"url": config.transformers_url, "backend": config.backend, **info},
            "groq": {"base_url": config.groq_base_url,
                     "key_configured": bool(config.groq_api_key)},
        }
        self._health = (time.monotonic(), body)

    async def model_list(self) -> dict[str, Any]:
        config = self.config
        data: list[dict[str, Any]] = [
            {"id": mid, "object": "model", "created": 0, "owned_by": "gpt-oss-harmony-groq"}
            for mid in config.harmony_model_ids
        ]
        groq = await self.models.get(self.http_client(), config.groq_base_url, config.groq_api_key,
                                     config.models_cache_seconds)
        for model in groq:
            # A Groq id that would route locally (openai/gpt-oss-20b) is offered as groq/<id>.
            if choose_route(model["id"], config.harmony_models).route is Route.HARMONY:
                model = {**model, "id": f"groq/{model['id']}"}
            data.append(model)
        return {"object": "list", "data": data}


def _restore_client_request(flow: http.HTTPFlow) -> None:
    """mitmweb's Replay re-sends the request as rewritten for the upstream; send the client's
    original OpenAI request through the proxy again instead."""
    original = flow.metadata.get(META, {})
    if "client_request" not in original:
        return
    flow.request.path = original.get("client_path", "/v1/chat/completions")
    flow.request.content = json.dumps(original["client_request"]["body"]).encode()
    flow.metadata[META] = {"id": flow.id, "replay_of": original.get("id")}


def _unreachable(url: str) -> ProxyError:
    return ProxyError(503, f"The gpt-oss model server at {url} is unreachable. Start it "
                      "(see README: transformers serve) or set TRANSFORMERS_URL.",
                      code="upstream_unavailable")


def _is_local(flow: http.HTTPFlow) -> bool:
    return flow.server_conn.timestamp_start is None


def _json_response(status: int, body: dict[str, Any]) -> http.Response:
    return http.Response.make(status, json.dumps(body, ensure_ascii=False).encode(),
                              {"content-type": "application/json"})


@functools.lru_cache(maxsize=16)
def _target(url: str) -> tuple[str, str, int, str]:
    """``url`` split once: the ``request.url`` setter re-parses it on every flow (13 µs)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname or "", port, parts.path or "/"


def _rewrite(flow: http.HTTPFlow, url: str, body: dict[str, Any]) -> None:
    """Point the flow at ``url`` with ``body``; client credentials never travel on."""
    request = flow.request
    request.scheme, request.host, request.port, request.path = _target(url)
    for name in DROP_HEADERS:
        request.headers.pop(name, None)
    request.headers["content-type"] = "application/json"
    request.content = json.dumps(body, ensure_ascii=False).encode()


def _prepare_sse(flow: http.HTTPFlow) -> None:
    """Our chunks change the length: drop content-length, chunk HTTP/1, disable buffering."""
    assert flow.response is not None
    headers = flow.response.headers
    headers.pop("content-length", None)
    headers["content-type"] = "text/event-stream; charset=utf-8"
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"
    if not (flow.request.is_http2 or flow.request.is_http3):
        headers["transfer-encoding"] = "chunked"
