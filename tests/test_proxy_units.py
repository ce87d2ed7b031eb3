"""Unit tests of routing, settings, redaction, errors and the gateway hooks (no proxy process)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from harmony_groq.addon import Gateway
from harmony_groq.errors import ProxyError
from harmony_groq.groq import sanitize_body
from harmony_groq.records import FlowLog, flow_record
from harmony_groq.redact import REDACTED, redact_headers, redact_text, redact_value
from harmony_groq.routing import Endpoint, Route, choose_route, classify_path, forward_endpoint
from harmony_groq.settings import OPTIONS, Settings, build_config, env_default

SUBSTRINGS = ("gpt-oss", "harmony")


@pytest.mark.parametrize(("model", "route", "upstream"), [
    ("gpt-oss-20b", Route.HARMONY, "gpt-oss-20b"),
    ("GPT-OSS-120B", Route.HARMONY, "GPT-OSS-120B"),
    ("my-harmony-finetune", Route.HARMONY, "my-harmony-finetune"),
    ("openai/gpt-oss-20b", Route.HARMONY, "openai/gpt-oss-20b"),
    ("groq/openai/gpt-oss-20b", Route.GROQ, "openai/gpt-oss-20b"),
    ("GROQ/llama-3.3-70b-versatile", Route.GROQ, "llama-3.3-70b-versatile"),
    ("llama-3.3-70b-versatile", Route.GROQ, "llama-3.3-70b-versatile"),
    ("qwen/qwen3-32b", Route.GROQ, "qwen/qwen3-32b"),
])
def test_choose_route(model: str, route: Route, upstream: str) -> None:
    choice = choose_route(model, SUBSTRINGS)
    assert (choice.route, choice.upstream_model) == (route, upstream)


@pytest.mark.parametrize(("path", "endpoint"), [
    ("/health", Endpoint.HEALTH),
    ("/v1/models", Endpoint.MODELS),
    ("/models/", Endpoint.MODELS),
    ("/v1/chat/completions?x=1", Endpoint.CHAT),
    ("/chat/completions", Endpoint.CHAT),
    ("/v1/completions", Endpoint.UNKNOWN),
    ("/v1/embeddings", Endpoint.UNKNOWN),
    ("/", Endpoint.UNKNOWN),
    ("/v1/responses", Endpoint.RESPONSES),
    ("/v1/responses/resp_abc-1", Endpoint.RESPONSE_ITEM),
    ("/v1/responses/a/b", Endpoint.UNKNOWN),
    ("/v1/messages?beta=true", Endpoint.MESSAGES),
    ("/v1/messages/count_tokens", Endpoint.COUNT_TOKENS),
])
def test_classify_path(path: str, endpoint: Endpoint) -> None:
    assert classify_path(path) is endpoint


@pytest.mark.parametrize(("method", "path", "endpoint"), [
    ("POST", "/openai/v1/chat/completions", Endpoint.CHAT),
    ("POST", "/v1/responses?x=1", Endpoint.RESPONSES),
    ("POST", "/api/v1/messages", Endpoint.MESSAGES),
    ("GET", "/v1/messages", None),
    # Other APIs' …/messages and …/responses pass through untouched.
    ("POST", "/v1/threads/thread_1/messages", None),
    ("POST", "/v1.0/me/messages", None),
    ("POST", "/api/responses", None),
])
def test_regular_mode_intercepts_only_the_client_apis(method: str, path: str,
                                                      endpoint: Endpoint | None) -> None:
    assert forward_endpoint(method, path) is endpoint


def _values(**overrides: object) -> dict:
    values = {spec.name: spec.default for spec in OPTIONS}
    values.update(overrides)
    return values


@pytest.mark.parametrize(("overrides", "message"), [
    ({"transformers_url": "localhost:8000"}, "transformers_url='localhost:8000' is not an http"),
    ({"groq_base_url": "ftp://x"}, "groq_base_url='ftp://x' is not an http"),
    ({"reasoning_field": "thoughts"}, "reasoning_field='thoughts': choose one of"),
    ({"harmony_date": "25/11/2026"}, "harmony_date='25/11/2026' is not YYYY-MM-DD"),
    ({"upstream_timeout": 0}, "upstream_timeout must be a positive integer"),
    ({"reasoning_memory_bytes": -1}, "reasoning_memory_bytes must be at least 0"),
    ({"harmony_models": " , "}, "harmony_models must name at least one substring"),
])
def test_bad_settings_fail_with_one_clear_line(overrides: dict, message: str) -> None:
    with pytest.raises(exceptions.OptionsError) as info:
        build_config(_values(**overrides), {})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_settings_from_environment_and_secrets() -> None:
    spec = next(s for s in OPTIONS if s.name == "upstream_timeout")
    assert env_default(spec, {"UPSTREAM_TIMEOUT": "42"}) == 42
    with pytest.raises(exceptions.OptionsError, match="UPSTREAM_TIMEOUT='soon' is not an integer"):
        env_default(spec, {"UPSTREAM_TIMEOUT": "soon"})
    config = build_config(_values(transformers_url="http://h:1/"),
                          {"GROQ_API_KEY": " gsk_abc ", "PROXY_API_KEY": "p"})
    assert config.transformers_url == "http://h:1"
    assert config.groq_api_key == "gsk_abc"
    assert config.harmony_models == ("gpt-oss", "harmony")
    assert build_config(_values(reasoning_memory_bytes=0), {}).reasoning_memory_bytes == 0


def test_redaction() -> None:
    text = ("key gsk_abcdefghijklmnop1234 and sk-proj-abcdefghijklmnopqrstuvwx and "
            "Authorization: Bearer secret-token-1 and my own s3cr3t")
    out = redact_text(text, ["s3cr3t"])
    for secret in ("gsk_abcdefghijklmnop1234", "sk-proj-abcdefghijklmnopqrstuvwx",
                   "secret-token-1", "s3cr3t"):
        assert secret not in out
    assert out.count(REDACTED) == 4
    headers = redact_headers([("Authorization", "Bearer x"), ("X-Api-Key", "k"),
                              ("api-key", "k2"), ("Cookie", "a=b"), ("Accept", "text/plain")])
    assert headers == {"authorization": REDACTED, "x-api-key": REDACTED, "api-key": REDACTED,
                       "cookie": REDACTED, "accept": "text/plain"}
    nested = redact_value({"messages": [{"content": "use gsk_abcdefghijklmnop1234"}]})
    assert nested == {"messages": [{"content": f"use {REDACTED}"}]}


@pytest.mark.parametrize("key", ["gsk_abcdefghijklmnop1234", "sk-ant-abcdefghijklmnop",
                                 "sk-abcdefghijklmnop", "BEARER tok-1", "bEaReR\ttok-2"])
def test_redaction_of_each_key_shape_alone(key: str) -> None:
    # Each shape on its own: the pattern scan is skipped for text without a key's literal.
    assert redact_text(f'{{"content": "x {key} y"}}') == f'{{"content": "x {REDACTED} y"}}'
    assert redact_text('{"content": "skip no keys, ask bear"}') == (
        '{"content": "skip no keys, ask bear"}')


def test_error_shape() -> None:
    error = ProxyError(404, "nope", code="not_found")
    response = error.to_response()
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.content) == {
        "error": {"message": "nope", "type": "invalid_request_error", "param": None,
                  "code": "not_found"}}
    assert ProxyError(503, "down").type == "api_error"
    assert ProxyError(502, "x").sse_event().endswith(b"data: [DONE]\n\n")


def test_groq_body_sanitised() -> None:
    body = {"model": "groq/llama", "reasoning": {"effort": "high"}, "stop": list("abcdef"),
            "messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "x", "reasoning_content": "r"}]}
    out = sanitize_body(body, "llama")
    assert out["model"] == "llama"
    assert "reasoning" not in out and out["reasoning_effort"] == "high"
    assert out["stop"] == ["a", "b", "c", "d"]
    assert out["messages"][1] == {"role": "assistant", "content": "x", "reasoning": "r"}
    assert body["messages"][1]["reasoning_content"] == "r"  # the client's body is untouched


def _chat_flow(body: bytes, path: bytes = b"/v1/chat/completions") -> http.HTTPFlow:
    return tflow.tflow(req=tutils.treq(method=b"POST", path=path, content=body,
                                       headers=http.Headers(host="127.0.0.1:3307",
                                                            authorization="Bearer sk-client")))


@pytest.fixture()
def gateway(tmp_path):
    settings = Settings()
    gateway = Gateway(settings)
    log = FlowLog(settings)
    old = dict(os.environ)
    os.environ["GROQ_API_KEY"] = "gsk_unit0123456789abcdef"
    try:
        with taddons.context(settings, gateway, log) as tctx:
            tctx.options.mode = ["reverse:http://127.0.0.1:9@127.0.0.1:0"]
            tctx.configure(settings, log_file=str(tmp_path / "unit.log"),
                           groq_base_url="http://127.0.0.1:9/openai/v1")
            tctx.configure(log)
            yield gateway, log, tmp_path / "unit.log"
            log.done()
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_gateway_rewrites_groq_flow_and_strips_client_key(gateway) -> None:
    gw, _, _ = gateway
    flow = _chat_flow(b'{"model": "groq/llama-3.3-70b-versatile", "messages": '
                      b'[{"role": "user", "content": "hi"}]}')
    flow.request.headers["x-api-key"] = "sk-client-2"
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    asyncio.run(gw.requests.request(flow))
    assert flow.response is None
    assert flow.request.url == "http://127.0.0.1:9/openai/v1/chat/completions"
    assert "authorization" not in flow.request.headers  # not while mitmweb may publish it
    flow.intercept()  # held in mitmweb: still no key while a person looks at it
    gw.injector.update([flow])
    assert "authorization" not in flow.request.headers
    flow.resume()
    gw.injector.update([flow])  # the last step before mitmproxy sends the request
    assert flow.request.headers["authorization"] == "Bearer gsk_unit0123456789abcdef"
    gw.injector.update([flow])
    flow.response = http.Response.make(200)
    gw.replies.responseheaders(flow)
    assert flow.request.headers["authorization"] == f"Bearer {REDACTED}"
    assert "x-api-key" not in flow.request.headers
    assert json.loads(flow.request.content)["model"] == "llama-3.3-70b-versatile"


@pytest.mark.parametrize(("body", "path", "status", "fragment"), [
    (b"{not json", b"/v1/chat/completions", 400, "not valid JSON"),
    (b'{"messages": []}', b"/v1/chat/completions", 400, "'model' is required"),
    (b'{"model": "x"}', b"/v1/chat/completions", 400, "'messages' is required"),
    (b"[]", b"/v1/chat/completions", 400, "must be a JSON object"),
    (b"", b"/v1/chat/completions", 400, "body is empty"),
    (b"{}", b"/v1/embeddings", 404, "Unknown path"),
])
def test_gateway_errors(gateway, body: bytes, path: bytes, status: int, fragment: str) -> None:
    gw, log, log_path = gateway
    flow = _chat_flow(body, path)
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    asyncio.run(gw.requests.request(flow))
    assert flow.response is not None and flow.response.status_code == status
    error = json.loads(flow.response.content)["error"]
    assert fragment in error["message"]
    record = flow_record(flow)
    assert record["status"] == status and fragment in record["error"]
