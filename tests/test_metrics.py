"""Prometheus metrics: the pure pieces, the addon on built flows, and a scrape of the real proxy
after a mixed run of gpt-oss and Groq requests, streamed and whole, with errors."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils
from prometheus_client.parser import text_string_to_metric_families

from harmony_groq.flowlog import FlowLogWriter
from harmony_groq.metrics import (
    MAX_MODELS,
    OTHER,
    LabelCap,
    Metrics,
    MetricsEndpoint,
    error_code,
    repair_kind,
)
from harmony_groq.records import META
from harmony_groq.settings import Settings

from fakes import GROQ_KEY, RATE_HEADERS, FakeGroq, FakeTransformers, Scripted
from proxy_process import ProxyProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROXY_KEY = "proxy-key-for-the-metrics-test-0123"
HI = [{"role": "user", "content": "hi"}]
LONG = "<|channel|>analysis<|message|>zero one two three four five six<|end|>"


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def series(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples called ``name`` keyed by the values of ``labels``, zeros left out."""
    return {tuple(dict(key)[label] for label in labels): value
            for (sample, key), value in samples.items() if sample == name and value}


def finished(record: dict[str, Any], status: int | None = 200, body: Any = None,
             headers: dict[str, str] | None = None, error: str | None = None) -> http.HTTPFlow:
    """A flow as the hooks leave it: its record, the response (if any), the error (if any)."""
    flow = tflow.tflow()
    if status is not None:
        content = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        flow.response = http.Response.make(status, content, {"content-type": "application/json",
                                                             **(headers or {})})
    if error is not None:
        flow.error = mflow.Error(error)
    flow.metadata[META] = {"id": flow.id, **record}
    return flow


def counted(*flows: http.HTTPFlow) -> Samples:
    metrics = Metrics(Settings())
    for flow in flows:
        (metrics.error if flow.error else metrics.response)(flow)
    return parse(metrics.scrape("", True)[0].decode())


# -- pure pieces --------------------------------------------------------------------------------

def test_label_cap_keeps_known_values_then_learns_up_to_its_limit() -> None:
    cap = LabelCap(2, known=frozenset({"gpt-oss-20b"}))
    assert cap.label("unproven", learn=False) == OTHER
    assert [cap.label(v) for v in ("a", "b", "c", "a", "gpt-oss-20b")] == [
        "a", "b", OTHER, "a", "gpt-oss-20b"]
    assert cap.label("unproven", learn=False) == OTHER


@pytest.mark.parametrize(("repair", "kind"), [
    ("missing <|end|> before <|start|>", "missing <|end|> before <|start|>"),
    ("call to undeclared function 'get_weather' passed on", "call to undeclared function"),
    ("message written as 'user' shown as reasoning", "message written as"),
    ("token dropped: unexpected token 200012", "token dropped"),
    ("tool-call arguments are not valid JSON; passed on as generated",
     "tool-call arguments are not valid JSON; passed on as generated"),
])
def test_repair_kind_drops_the_variable_part(repair: str, kind: str) -> None:
    assert repair_kind(repair) == kind


@pytest.mark.parametrize(("flow", "code"), [
    (finished({}, 429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}),
     "rate_limit_exceeded"),
    (finished({}, 400, {"error": {"message": "bad", "type": "invalid_request_error",
                                  "code": None}}), "invalid_request_error"),
    (finished({}, 502, b"<html>Bad Gateway</html>", {"content-type": "text/html"}), "http_502"),
    (finished({"stream_summary": {"error": None}}, 200, error="peer closed connection"),
     "stream_interrupted"),
    (finished({}, None, error="connection refused"), "no_response"),
    (finished({"stream_summary": {"error": "The model server failed: OOM"}}), "stream_error"),
    (finished({"stream_summary": {"error": {"message": "x", "code": "service_unavailable"}}}),
     "service_unavailable"),
    (finished({"stream_summary": {"error": None}}), None),
    (finished({}), None),
    # First cause wins: the backend's error event, then the client hanging up on it.
    (finished({"stream_summary": {"error": "The model server failed: OOM"}}, 200,
              error="Client disconnected."), "stream_error"),
    # The client hung up after the stream's last event: no failure.
    (finished({"stream_summary": {"error": None}, "ended_before_error": True}, 200,
              error="Client disconnected."), None),
    (finished({"stream_summary": {"error": "The stream was interrupted: Client disconnected.",
                                  "interrupted": True}}, 200, error="Client disconnected."),
     "stream_interrupted"),
])
def test_error_code(flow: http.HTTPFlow, code: str | None) -> None:
    assert error_code(flow, flow.metadata[META].get("stream_summary")) == code


# -- the Metrics addon on built flows ---------------------------------------------------------

def test_client_chosen_model_names_stay_bounded() -> None:
    """A name gets a series only once an upstream answered 200 for it, and only MAX_MODELS
    such names: a client sending a new name per request cannot grow the scrape."""
    failing = [finished({"route": "groq", "model": f"made-up-{n}"}, 404) for n in range(200)]
    working = [finished({"route": "groq", "model": f"real-{n}"}) for n in range(MAX_MODELS + 5)]
    samples = counted(*failing, *working)
    requests = series(samples, "harmony_groq_requests_total", "model", "status")
    assert requests == {(OTHER, "404"): 200, (OTHER, "200"): 5,
                        **{(f"real-{n}", "200"): 1 for n in range(MAX_MODELS)}}


def test_a_configured_model_keeps_its_label_when_it_fails() -> None:
    settings = Settings()
    metrics = Metrics(settings)
    with taddons.context(settings, metrics) as tctx:
        tctx.options.mode = ["reverse:http://127.0.0.1:9@127.0.0.1:0"]
        tctx.configure(settings, harmony_model_ids="gpt-oss-120b")
        tctx.configure(metrics)
        metrics.response(finished({"route": "gpt-oss", "model": "gpt-oss-120b"}, 503))
        metrics.response(finished({"route": "gpt-oss", "model": "gpt-oss-20b"}, 503))
    requests = series(parse(metrics.scrape("", True)[0].decode()), "harmony_groq_requests_total",
                      "model")
    assert requests == {("gpt-oss-120b",): 1, (OTHER,): 1}


def test_counts_read_from_the_records() -> None:
    usage = {"prompt_tokens": 90, "completion_tokens": 20,
             "completion_tokens_details": {"reasoning_tokens": 7}}
    whole = finished({"route": "gpt-oss", "model": "gpt-oss-20b", "dialect": "responses",
                      "repairs": ["token dropped: x", "token dropped: y"],
                      "restored_reasoning": 2}, body={"usage": usage})
    stream = finished({"route": "gpt-oss", "model": "gpt-oss-20b", "stream": True,
                       "dialect": "chat",
                       "restored_reasoning": ["messages[1]: restored", "messages[3]: restored"],
                       "stream_summary": {"usage": usage, "error": None, "first_token_at": 0,
                                          "repairs": ["missing <|end|> before <|start|>"]}})
    groq = finished({"route": "groq", "model": "llama", "dialect": "chat"}, 429,
                    {"error": {"code": "rate_limit_exceeded"}},
                    {"x-ratelimit-remaining-requests": "41", "x-ratelimit-remaining-tokens": "n/a"})
    samples = counted(whole, stream, groq)
    assert series(samples, "harmony_groq_requests_total", "dialect", "route", "status") == {
        ("responses", "gpt-oss", "200"): 1, ("chat", "gpt-oss", "200"): 1,
        ("chat", "groq", "429"): 1}
    assert series(samples, "harmony_groq_tokens_total", "model", "kind") == {
        ("gpt-oss-20b", "prompt"): 180, ("gpt-oss-20b", "completion"): 40,
        ("gpt-oss-20b", "reasoning"): 14}
    assert series(samples, "harmony_groq_parser_repairs_total", "kind") == {
        ("token dropped",): 2, ("missing <|end|> before <|start|>",): 1}
    assert series(samples, "harmony_groq_reasoning_restored_total", "dialect") == {
        ("responses",): 2, ("chat",): 2}
    assert series(samples, "harmony_groq_errors_total", "code") == {("rate_limit_exceeded",): 1}
    # A stream without a first token has no time to first token; the whole reply has one.
    assert series(samples, "harmony_groq_time_to_first_token_seconds_count", "model") == {
        ("gpt-oss-20b",): 1}
    assert series(samples, "harmony_groq_groq_ratelimit_remaining", "limit") == {
        ("requests",): 41}


def test_flow_log_write_failures_reach_the_hook(tmp_path: Path) -> None:
    failures: list[str] = []
    writer = FlowLogWriter(str(tmp_path / "missing-dir" / "flows.log"), 1 << 20, 1, (),
                           failures.append)
    writer.write({"event": "flow"})
    writer.write({"event": "flow"})
    writer.close()
    assert failures == ["write", "write"]


def _metrics_flow(method: bytes = b"GET", key: str | None = None) -> http.HTTPFlow:
    headers = http.Headers(host="127.0.0.1:3307")
    if key:
        headers["authorization"] = f"Bearer {key}"
    flow = tflow.tflow(req=tutils.treq(method=method, path=b"/metrics", headers=headers,
                                       content=b""))
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    return flow


def test_endpoint_reports_the_model_server_and_checks_the_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "PROXY_API_KEY", PROXY_KEY)
    settings = Settings()
    metrics = Metrics(settings)

    async def down() -> dict[str, Any]:
        return {"transformers": {"reachable": False}}

    endpoint = MetricsEndpoint(settings, metrics, down)
    with taddons.context(settings, metrics, endpoint) as tctx:
        tctx.options.mode = ["reverse:http://127.0.0.1:9@127.0.0.1:0"]
        tctx.configure(settings)
        answered = []
        for flow in (_metrics_flow(key=PROXY_KEY), _metrics_flow(), _metrics_flow(b"POST",
                                                                                  PROXY_KEY)):
            asyncio.run(endpoint.request(flow))
            answered.append(flow)
    ok, unauthorized, post = answered
    assert ok.response.status_code == 200
    assert parse(ok.response.text)[("harmony_groq_model_server_up", frozenset())] == 0
    assert unauthorized.response.status_code == 401
    assert unauthorized.response.json()["error"]["code"] == "invalid_api_key"
    assert post.response.status_code == 405 and post.response.headers["allow"] == "GET"
    assert all(flow.metadata[META]["route"] == "local" for flow in answered)


# -- end to end through the real mitmdump ------------------------------------------------------

def scrape(proxy: ProxyProcess, path: str = "/metrics") -> Samples:
    response = httpx.get(proxy.root_url + path, timeout=10,
                         headers={"authorization": f"Bearer {PROXY_KEY}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def delta(before: Samples, after: Samples) -> Samples:
    return {key: value - before.get(key, 0) for key, value in after.items()}


def mixed_run(client: openai.OpenAI, proxy: ProxyProcess, fake_transformers: FakeTransformers,
              fake_groq: FakeGroq) -> dict[str, int]:
    """Streamed and whole requests on both routes, then failures; returns the gpt-oss usage
    the client was told (the Groq fake always says 12 prompt, 5 completion tokens)."""
    told = {"prompt": 0, "completion": 0, "reasoning": 0}

    def add(usage: Any) -> None:
        told["prompt"] += usage.prompt_tokens
        told["completion"] += usage.completion_tokens
        told["reasoning"] += usage.completion_tokens_details.reasoning_tokens

    add(client.chat.completions.create(model="gpt-oss-20b", messages=HI).usage)
    chunks = list(client.chat.completions.create(model="gpt-oss-20b", messages=HI, stream=True,
                                                 stream_options={"include_usage": True}))
    add(chunks[-1].usage)
    fake_transformers.script("Musing.<|channel|>final<|message|>Fine.<|return|>")
    add(client.chat.completions.create(model="gpt-oss-20b", messages=HI).usage)
    client.chat.completions.create(model="llama-3.3-70b-versatile", messages=HI)
    list(client.chat.completions.create(model="groq/openai/gpt-oss-20b", messages=HI,
                                        stream=True))
    # Failures: an error event and a reset mid-stream, Groq's 429 for a model it served and
    # for one never seen, a bad request, no key for /metrics, the wrong method for it.
    fake_transformers.script(Scripted(LONG, error_after=3), Scripted(LONG, reset_after=3))
    for _ in range(2):
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="gpt-oss-20b", messages=HI, stream=True))
    fake_groq.next_status.extend([(429, {"retry-after": "1"})] * 2)
    for model in ("llama-3.3-70b-versatile", "no-such-model"):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=model, messages=HI)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-oss-20b", messages=[])
    assert httpx.get(f"{proxy.root_url}/metrics").status_code == 401
    assert httpx.post(f"{proxy.root_url}/v1/metrics",
                      headers={"authorization": f"Bearer {PROXY_KEY}"}).status_code == 405
    return told


def test_scrape_after_a_mixed_run(start_proxy: Callable[..., ProxyProcess],
                                  fake_transformers: FakeTransformers,
                                  fake_groq: FakeGroq) -> None:
    proxy = start_proxy(env={"GROQ_API_KEY": GROQ_KEY, "PROXY_API_KEY": PROXY_KEY})
    client = openai.OpenAI(base_url=proxy.base_url, api_key=PROXY_KEY, max_retries=0, timeout=20)
    assert httpx.get(f"{proxy.root_url}/health").status_code == 200  # needs no key
    before = scrape(proxy)
    told = mixed_run(client, proxy, fake_transformers, fake_groq)
    after = scrape(proxy, "/v1/metrics")
    changed = delta(before, after)

    llama, prefixed = "llama-3.3-70b-versatile", "groq/openai/gpt-oss-20b"
    assert series(changed, "harmony_groq_requests_total", "dialect", "route", "model",
                  "status") == {
        ("chat", "gpt-oss", "gpt-oss-20b", "200"): 5, ("chat", "groq", llama, "200"): 1,
        ("chat", "groq", prefixed, "200"): 1, ("chat", "groq", llama, "429"): 1,
        ("chat", "groq", OTHER, "429"): 1, ("chat", "local", "", "400"): 1,
        # /metrics itself (no key, POST, the first scrape) belongs to no client API
        ("none", "local", "", "401"): 1, ("none", "local", "", "405"): 1,
        ("none", "local", "", "200"): 1}
    assert series(changed, "harmony_groq_errors_total", "code") == {
        ("stream_error",): 1, ("stream_interrupted",): 1, ("rate_limit_exceeded",): 2,
        ("invalid_request_error",): 1, ("invalid_api_key",): 1, ("method_not_allowed",): 1}
    assert series(changed, "harmony_groq_streams_aborted_total", "route") == {("gpt-oss",): 2}
    assert told["reasoning"] > 0
    assert series(changed, "harmony_groq_tokens_total", "model", "kind") == {
        **{("gpt-oss-20b", kind): n for kind, n in told.items()},
        (llama, "prompt"): 12, (llama, "completion"): 5,
        (prefixed, "prompt"): 12, (prefixed, "completion"): 5}
    assert series(changed, "harmony_groq_parser_repairs_total", "kind") == {
        ("message without <|message|> kept as text",): 1,
        ("missing <|start|>assistant before <|channel|>",): 1}
    assert series(changed, "harmony_groq_request_duration_seconds_count", "route", "model") == {
        ("gpt-oss", "gpt-oss-20b"): 5, ("groq", llama): 2, ("groq", prefixed): 1,
        ("groq", OTHER): 1, ("local", ""): 4}
    assert series(changed, "harmony_groq_time_to_first_token_seconds_count", "route",
                  "model") == {("gpt-oss", "gpt-oss-20b"): 5, ("groq", llama): 1,
                               ("groq", prefixed): 1}
    assert series(after, "harmony_groq_groq_ratelimit_remaining", "limit") == {
        ("requests",): float(RATE_HEADERS["x-ratelimit-remaining-requests"]),
        ("tokens",): float(RATE_HEADERS["x-ratelimit-remaining-tokens"])}
    assert after[("harmony_groq_model_server_up", frozenset())] == 1
    # Only this addon's registry, without _created twins of every series.
    assert not any(name.startswith(("python_", "process_")) or name.endswith("_created")
                   for name, _ in after)
    # The proxy answered /metrics itself; the flow log has it as a local flow like /health.
    scraped = [r for r in proxy.log_records(wait_for=proxy.log_mark())
               if r["path"].endswith("/metrics")]
    assert {(r["route"], r["status"]) for r in scraped} >= {("local", 200), ("local", 401)}
    printed = "".join(proxy.output)
    assert "Addon error" not in printed and "Traceback" not in printed  # no hook failed


def test_dialects_counted_with_their_tokens(start_proxy, fake_transformers: FakeTransformers,
                                            fake_groq: FakeGroq) -> None:
    """Responses requests are counted under their dialect, their tokens from the usage the
    client was told, whichever shape it has (gateway-written, or Groq's own)."""
    proxy = start_proxy(env={"GROQ_API_KEY": GROQ_KEY, "PROXY_API_KEY": PROXY_KEY})
    client = openai.OpenAI(base_url=proxy.base_url, api_key=PROXY_KEY, max_retries=0)
    before = scrape(proxy)
    whole = client.responses.create(model="gpt-oss-20b", input="hi", store=False)
    groq = client.responses.create(model="llama-3.3-70b-versatile", input="hi", store=False)
    after = delta(before, scrape(proxy))
    requests = series(after, "harmony_groq_requests_total", "dialect", "route", "status")
    assert {k: v for k, v in requests.items() if k[1] != "local"} == {
        ("responses", "gpt-oss", "200"): 1, ("responses", "groq", "200"): 1}
    tokens = series(after, "harmony_groq_tokens_total", "model", "kind")
    assert tokens[("gpt-oss-20b", "prompt")] == whole.usage.input_tokens
    assert tokens[("gpt-oss-20b", "completion")] == whole.usage.output_tokens
    assert tokens[("llama-3.3-70b-versatile", "completion")] == groq.usage.output_tokens
