"""An upstream that fails before its response head never gets the client mitmproxy's HTML page.

Each failure mode is a real loopback server that fails that way (fakes_failing.py): it accepts
and closes, resets, answers an unreadable head, never answers, fails the TLS handshake, or has
a host name that never resolves. Through the real mitmdump, for both routes (a gpt-oss model
server, Groq), every API whole and streamed: the openai and anthropic SDKs raise their typed
status errors with the API's JSON error body, the flow log names the first cause and /metrics
counts it. A model server that closed a kept-alive connection just as the proxy reused it
(``IdleClosingRelay``) costs a retry on a fresh connection, never a client-visible error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from fakes_failing import UNRESOLVABLE_URL, FailingServer, IdleClosingRelay
from test_first_cause_e2e import changed, record_for, scrape

from conftest import PINNED_DATE
from fakes import GROQ_KEY, FakeTransformers
from proxy_process import ProxyProcess

LLAMA = "llama-3.3-70b-versatile"
ROUTES = {"gpt-oss": "gpt-oss-20b", "groq": LLAMA}
MODES = ("close", "reset", "garbage", "silent", "tls", "dns")
# mode → (status, OpenAI error.code, the causes the flow log may name)
EXPECTED: dict[str, tuple[int, str, set[str]]] = {
    "close": (502, "upstream_error", {"closed"}),
    "reset": (502, "upstream_error", {"closed", "reset"}),  # mitmproxy reads a reset as a close
    "garbage": (502, "upstream_error", {"bad_headers"}),
    "silent": (504, "upstream_timeout", {"timeout"}),
    "tls": (502, "upstream_error", {"tls"}),
    "dns": (503, "upstream_unavailable", {"dns"}),
}
ANTHROPIC_TYPES = {502: "api_error", 503: "overloaded_error", 504: "api_error"}
API_PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
             "messages": "/v1/messages"}
API_BODIES: dict[str, dict[str, Any]] = {
    "chat": {"messages": [{"role": "user", "content": "hi"}]},
    "responses": {"input": "hi"},
    "messages": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}}


@pytest.fixture(scope="module", params=MODES)
def failing(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            transformers_server: FakeTransformers) -> Iterator[tuple[str, FailingServer | None,
                                                                     ProxyProcess]]:
    """One failing upstream of the mode, and a proxy sending both routes to it."""
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"failing-{mode}")
    server = None if mode == "dns" else FailingServer(mode, tmp)
    url = UNRESOLVABLE_URL if server is None else server.url
    proxy = ProxyProcess(tmp, upstream=transformers_server.url, options={
        "transformers_url": url, "groq_base_url": url + "/openai/v1",
        "harmony_date": PINNED_DATE, "upstream_timeout": "1"}, env={"GROQ_API_KEY": GROQ_KEY})
    yield mode, server, proxy
    proxy.stop()
    if server is not None:
        server.close()


def call(proxy: ProxyProcess, api: str, model: str, stream: bool, text: str) -> Any:
    """One request through the SDK of ``api``; returns what it returned (read to the end)."""
    if api == "messages":
        client = anthropic.Anthropic(base_url=proxy.root_url, api_key="x", max_retries=0,
                                     timeout=20)
        result: Any = client.messages.create(
            model=model, max_tokens=64, stream=stream,
            messages=[{"role": "user", "content": text}])
    else:
        oai = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
        if api == "chat":
            result = oai.chat.completions.create(
                model=model, stream=stream, messages=[{"role": "user", "content": text}])
        else:
            result = oai.responses.create(model=model, stream=stream, input=text)
    return list(result) if stream else result


def metric_grew(proxy: ProxyProcess, before: dict, name: str, **labels: str) -> float:
    deadline = time.monotonic() + 10
    while (grown := changed(before, scrape(proxy), name, **labels)) < 1:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return grown


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
@pytest.mark.parametrize("route", ROUTES)
def test_failure_before_the_head_is_the_apis_json_error(
        failing: tuple[str, FailingServer | None, ProxyProcess], route: str, api: str,
        stream: bool) -> None:
    mode, server, proxy = failing
    status, code, causes = EXPECTED[mode]
    text = f"failing-{uuid.uuid4().hex[:10]}"
    posts_before = server.posts() if server is not None else 0
    before = scrape(proxy)
    sdk_error = anthropic.APIStatusError if api == "messages" else openai.APIStatusError
    with pytest.raises(sdk_error) as info:
        call(proxy, api, ROUTES[route], stream, text)
    response = info.value.response
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    if api == "messages":
        assert body["type"] == "error"
        assert body["error"]["type"] == ANTHROPIC_TYPES[status]
    else:
        assert body["error"]["code"] == code
    upstream = "Groq" if route == "groq" else "gpt-oss model server"
    assert upstream in body["error"]["message"]

    record = record_for(proxy, text)
    assert record["status"] == status and record["route"] == route
    assert record["upstream_failure"]["cause"] in causes, record["upstream_failure"]
    assert record["error"] == body["error"]["message"]
    cause = record["upstream_failure"]["cause"]
    assert metric_grew(proxy, before, "harmony_groq_upstream_failures_total", route=route,
                       cause=cause) == 1
    if mode in ("close", "reset") and route == "gpt-oss":
        # closed before answering: once more on a fresh connection, which fails the same way
        assert record["upstream_retry"]["outcome"] == "failed", record
        assert server is not None and server.posts() - posts_before == 2
        assert metric_grew(proxy, before, "harmony_groq_upstream_retries_total",
                           route=route, outcome="failed") == 1
    else:
        assert "upstream_retry" not in record


def test_never_an_html_page_from_raw_http(
        failing: tuple[str, FailingServer | None, ProxyProcess]) -> None:
    """What a client that reads bodies itself (Codex: ``unexpected status 502 …: <html>``)
    gets: JSON, with the connection closed after it, on both routes and every API."""
    _, _, proxy = failing
    with httpx.Client(timeout=20) as client:
        for model in ROUTES.values():
            for api, body in API_BODIES.items():
                for stream in (False, True):
                    reply = client.post(proxy.root_url + API_PATHS[api],
                                        json={"model": model, "stream": stream, **body},
                                        headers={"anthropic-version": "2023-06-01"})
                    assert reply.headers["content-type"] == "application/json", reply.text
                    assert "<html" not in reply.text
                    assert reply.json()["error"]["message"]


@pytest.fixture()
def idle_closing(fake_transformers: FakeTransformers, tmp_path: Path
                 ) -> Iterator[tuple[IdleClosingRelay, ProxyProcess]]:
    relay = IdleClosingRelay(int(fake_transformers.url.rsplit(":", 1)[1]), idle=0.5)
    proxy = ProxyProcess(tmp_path, upstream=fake_transformers.url, options={
        "transformers_url": relay.url, "harmony_date": PINNED_DATE, "upstream_timeout": "5"})
    yield relay, proxy
    proxy.stop()
    relay.close()


STREAM_ENDS = {"chat": b"data: [DONE]", "responses": b"event: response.completed",
               "messages": b"event: message_stop"}
STREAM_ERRORS = {"chat": b'"error"', "responses": b"response.failed", "messages": b"event: error"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_keep_alive_race_costs_a_retry_not_an_error(
        idle_closing: tuple[IdleClosingRelay, ProxyProcess], api: str, stream: bool) -> None:
    """Requests timed to reach the model server just as it closes an idle kept-alive
    connection (uvicorn's 5 s, here 0.5 s): every one is answered. Streams are read whole by
    one httpx client, which keeps its connection (so mitmproxy keeps its own to the model
    server, as it does for Codex); the SDKs' whole replies go on the addon's pool."""
    relay, proxy = idle_closing
    before = scrape(proxy)
    with httpx.Client(timeout=20) as raw:
        for turn in range(4):
            if turn:
                time.sleep(relay.idle + 0.2)  # idle past the server's timeout, inside the race
            if stream:
                reply = raw.post(proxy.root_url + API_PATHS[api], json={
                    "model": "gpt-oss-20b", "stream": True, **API_BODIES[api]},
                    headers={"anthropic-version": "2023-06-01"})
                assert reply.status_code == 200, reply.text
                assert STREAM_ENDS[api] in reply.content and b"Hello" in reply.content
                assert STREAM_ERRORS[api] not in reply.content, reply.text
                continue
            result = call(proxy, api, "gpt-oss-20b", False, f"race {turn}")
            text = result.content[-1].text if api == "messages" else (
                result.output_text if api == "responses" else result.choices[0].message.content)
            assert text == "Hello!"
    # The race did happen, and was met. A retried stream's reply closes its connection, so
    # the next one starts afresh; the health probes may meet the pool's idle connections first.
    raced = relay.dropped_posts()
    assert raced == 2 if stream else raced >= 1, relay.dropped
    after = scrape(proxy)
    assert changed(before, after, "harmony_groq_upstream_retries_total", outcome="ok") == raced
    assert changed(before, after, "harmony_groq_upstream_retries_total",
                   outcome="failed") == 0
    assert changed(before, after, "harmony_groq_errors_total") == 0
    retried = [r for r in proxy.log_records() if r.get("upstream_retry")]
    assert len(retried) == raced, retried
    # The health probes met the race too, and it never took the model server out.
    assert not any(" is out: " in line for line in proxy.output), proxy.output
    for record in retried:
        assert (record["upstream_retry"]["cause"], record["upstream_retry"]["outcome"],
                record["status"], record["upstream_failure"]["cause"]) == (
            "closed", "ok", 200, "closed"), record
        assert "error" not in record, record["error"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_fake_server_raising_in_a_rule_gives_the_apis_error(
        proxy: ProxyProcess, fake_transformers: FakeTransformers, stream: bool) -> None:
    """Issue #28's note: the suite's fake model server raised inside a test rule and closed
    the connection, and Codex (the Responses API, streamed) showed an HTML 502. Now it is the
    Responses API's JSON error after one retry."""
    def rule(prompt: str) -> str:
        raise RuntimeError("a test rule failed")

    fake_transformers.respond(rule)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.APIStatusError) as info:
        result = client.responses.create(model="gpt-oss-20b", input="hi", stream=stream)
        if stream:
            list(result)
    assert info.value.status_code == 502
    assert info.value.response.headers["content-type"] == "application/json"
    assert info.value.body["code"] == "upstream_error"
