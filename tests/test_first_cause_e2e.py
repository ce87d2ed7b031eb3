"""First cause wins: the two races between a stream's end and its client hanging up, made
deterministic and checked in the flow log and the metrics, for every dialect and both routes.

The fake upstream sends its last event (the reply's end, or an error event) and then holds the
body open (``hold``) until the proxy drops the connection: mitmproxy cannot see the stream end
before the client, which closes as soon as it has read the terminal event, has gone. So the
client's disconnect always reaches the proxy after the stream's outcome, never by luck.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeGroq, FakeTransformers, Scripted
from proxy_process import ProxyProcess

LLAMA = "llama-3.3-70b-versatile"
ANSWER = ("<|channel|>analysis<|message|>Short.<|end|><|start|>assistant<|channel|>final"
          "<|message|>Done here.<|return|>")
LONG = ("<|channel|>analysis<|message|>" + " ".join(["step"] * 20) + "<|end|><|start|>assistant"
        "<|channel|>final<|message|>never reached<|return|>")
# Per dialect: path, body, the event that ends a reply, the event that ends a failed one.
DIALECTS: dict[str, tuple[str, Any, bytes, bytes]] = {
    "chat": ("/v1/chat/completions",
             lambda model, text: {"model": model, "stream": True,
                                  "messages": [{"role": "user", "content": text}]},
             b"data: [DONE]", b"data: [DONE]"),
    "responses": ("/v1/responses",
                  lambda model, text: {"model": model, "stream": True, "input": text},
                  b"event: response.completed", b"event: response.failed"),
    "messages": ("/v1/messages",
                 lambda model, text: {"model": model, "stream": True, "max_tokens": 512,
                                      "messages": [{"role": "user", "content": text}]},
                 b"event: message_stop", b"event: error"),
}


def read_until(proxy: ProxyProcess, dialect: str, model: str, marker: str, end: bytes) -> bytes:
    """Stream a request, read until ``end`` arrived, then hang up at once (as the sync openai
    SDK does); the bytes read."""
    path, body, _, _ = DIALECTS[dialect]
    received = b""
    with httpx.Client(timeout=20) as http, http.stream(
            "POST", proxy.root_url + path, json=body(model, marker),
            headers={"anthropic-version": "2023-06-01"}) as reply:
        assert reply.status_code == 200
        for data in reply.iter_raw():
            received += data
            if end in received:
                break
    return received


def record_for(proxy: ProxyProcess, marker: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in proxy.log_records():
            if marker in json.dumps((record.get("client_request") or {}).get("body")):
                return record
        time.sleep(0.05)
    raise AssertionError(f"no log record for {marker}")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(proxy: ProxyProcess) -> Samples:
    text = httpx.get(proxy.root_url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def changed(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much the samples called ``name`` whose labels include ``labels`` grew."""
    return sum(value - before.get(key, 0) for key, value in after.items()
               if key[0] == name and labels.items() <= dict(key[1]).items())


def counters(proxy: ProxyProcess, before: Samples, route: str) -> dict[str, float]:
    after = scrape(proxy)
    return {"interrupted": changed(before, after, "harmony_groq_errors_total",
                                   code="stream_interrupted"),
            "errors": changed(before, after, "harmony_groq_errors_total"),
            "aborted": changed(before, after, "harmony_groq_streams_aborted_total", route=route),
            "ok": changed(before, after, "harmony_groq_requests_total", route=route,
                          status="200")}


def wait_counted(proxy: ProxyProcess, before: Samples, route: str) -> dict[str, float]:
    """The counters once the flow was counted (the client may scrape before the proxy saw it
    leave)."""
    deadline = time.monotonic() + 10
    while (counts := counters(proxy, before, route))["ok"] < 1:
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)
    return counts


def marker() -> str:
    return f"first-cause-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_gpt_oss_reply_then_client_hangs_up_is_a_success(
        proxy: ProxyProcess, fake_transformers: FakeTransformers, dialect: str) -> None:
    fake_transformers.script(Scripted(ANSWER, hold=True))
    text, before = marker(), scrape(proxy)
    received = read_until(proxy, dialect, "gpt-oss-20b", text, DIALECTS[dialect][2])
    assert b" here" in received
    record = record_for(proxy, text)
    assert "error" not in record, record.get("error")
    assert record["client_disconnected"] is True
    assert record["client_disconnected_at"] >= record["started"]
    assert record["status"] == 200 and record["usage"]
    assert wait_counted(proxy, before, "gpt-oss") == {
        "interrupted": 0, "errors": 0, "aborted": 0, "ok": 1}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_gpt_oss_backend_error_stays_the_error_when_the_client_hangs_up(
        proxy: ProxyProcess, fake_transformers: FakeTransformers, dialect: str) -> None:
    """The flaky ``test_backend_error_event_mid_stream`` made certain: the client leaves on the
    error event while the backend still holds the body open."""
    fake_transformers.script(Scripted(LONG, error_after=8, hold=True))
    text, before = marker(), scrape(proxy)
    received = read_until(proxy, dialect, "gpt-oss-20b", text, DIALECTS[dialect][3])
    assert b"CUDA out of memory" in received
    record = record_for(proxy, text)
    assert "CUDA out of memory (scripted)" in record["error"]
    assert record["client_disconnected"] is True
    assert wait_counted(proxy, before, "gpt-oss") == {
        "interrupted": 0, "errors": 1, "aborted": 1, "ok": 1}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_groq_reply_then_client_hangs_up_is_a_success(
        proxy: ProxyProcess, fake_groq: FakeGroq, dialect: str) -> None:
    fake_groq.hold = True
    text, before = marker(), scrape(proxy)
    received = read_until(proxy, dialect, LLAMA, text, DIALECTS[dialect][2])
    assert text.encode() in received
    record = record_for(proxy, text)
    assert "error" not in record, record.get("error")
    assert record["client_disconnected"] is True
    assert wait_counted(proxy, before, "groq") == {
        "interrupted": 0, "errors": 0, "aborted": 0, "ok": 1}


@pytest.mark.parametrize("dialect", ["chat", "messages"])
def test_groq_stream_error_stays_the_error_when_the_client_hangs_up(
        proxy: ProxyProcess, fake_groq: FakeGroq, dialect: str) -> None:
    """Groq stops a stream early with ``x_groq.error``; chat clients get it as Groq sent it,
    the translated dialects as their error event. (Groq's own Responses endpoint has no
    documented mid-stream error.)"""
    fake_groq.stream_error, fake_groq.hold = "Service Unavailable (scripted)", True
    text, before = marker(), scrape(proxy)
    end = b'"error": "Service Unavailable' if dialect == "chat" else DIALECTS[dialect][3]
    received = read_until(proxy, dialect, LLAMA, text, end)
    assert b"Service Unavailable (scripted)" in received
    record = record_for(proxy, text)
    assert "Service Unavailable (scripted)" in str(record["error"])
    assert record["client_disconnected"] is True
    assert wait_counted(proxy, before, "groq") == {
        "interrupted": 0, "errors": 1, "aborted": 1, "ok": 1}


def test_groq_responses_stream_direct_counts_tokens_and_ttft_and_its_end(
        proxy: ProxyProcess, fake_groq: FakeGroq) -> None:
    """``store: false`` goes to Groq's own Responses endpoint and its stream is relayed as it
    is; the relay still reads it: usage and time to first token reach the metrics, and a
    client leaving after ``response.completed`` is a success."""
    fake_groq.hold = True
    text, before = marker(), scrape(proxy)
    received = b""
    with httpx.Client(timeout=20) as http, http.stream(
            "POST", proxy.root_url + "/v1/responses",
            json={"model": LLAMA, "stream": True, "store": False, "input": text}) as reply:
        for data in reply.iter_raw():
            received += data
            if b"event: response.completed" in received:
                break
    assert text.encode() in received
    record = record_for(proxy, text)
    assert record["upstream_request"]["url"].endswith("/openai/v1/responses")
    assert "error" not in record and record["client_disconnected"] is True
    assert record["usage"]["input_tokens"] == 11 and record["ttft_ms"] > 0
    assert record["client_response"]["message"]["content"] == f"groq responses says: {text}"
    counts = wait_counted(proxy, before, "groq")
    assert counts == {"interrupted": 0, "errors": 0, "aborted": 0, "ok": 1}
    after = scrape(proxy)
    assert changed(before, after, "harmony_groq_tokens_total", model=LLAMA, kind="prompt") == 11
    assert changed(before, after, "harmony_groq_tokens_total", model=LLAMA,
                   kind="completion") == 6
    assert changed(before, after, "harmony_groq_time_to_first_token_seconds_count",
                   route="groq", model=LLAMA) == 1
