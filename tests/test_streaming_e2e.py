"""gpt-oss streaming end to end: the real mitmdump with the addon, the fake ``transformers serve``
streaming one token per event with a per-token delay, and the openai SDK (or raw httpx where the
wire matters) as the client."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from fakes import FakeGroq, FakeTransformers, Scripted, token_pieces
from proxy_process import ProxyProcess

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
THOUGHT = " ".join(NUMBERS * 4)  # one token per word
LONG = (f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant<|channel|>final"
        "<|message|>The answer is four.<|return|>")
CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>"
        "commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}"
        "<|call|>")
DELAY = 0.05


def messages(marker: str = "hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": marker}]


def unique() -> str:
    return f"marker-{uuid.uuid4().hex[:12]}"


def record_for(proxy: ProxyProcess, marker: str, timeout: float = 5) -> dict[str, Any]:
    """The flow-log record of the request whose user message is ``marker`` (the session log
    also holds other tests' records, fuzzed bodies included)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in proxy.log_records():
            body = (record.get("client_request") or {}).get("body")
            if isinstance(body, dict) and body.get("messages") == messages(marker):
                return record
        assert time.monotonic() < deadline, f"no log record for {marker}"
        time.sleep(0.05)


def reasoning_of(delta: Any) -> str:
    return (delta.model_extra or {}).get("reasoning") or ""


def raw_stream(proxy: ProxyProcess, body: dict[str, Any]
               ) -> tuple[httpx.Response, list[tuple[float, bytes]], float]:
    """POST a streamed request with httpx; every network read with its arrival time."""
    started = time.monotonic()
    reads = []
    with httpx.stream("POST", f"{proxy.base_url}/chat/completions",
                      json={"model": "gpt-oss-20b", "stream": True, **body}, timeout=20) as reply:
        for data in reply.iter_raw():
            reads.append((time.monotonic() - started, data))
    return reply, reads, time.monotonic() - started


def sse_payloads(data: bytes) -> list[str]:
    return [event[6:] for event in data.decode().split("\n\n") if event.startswith("data: ")]


def test_first_delta_arrives_with_the_backends_first_token(
        client: openai.OpenAI, fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(Scripted(LONG, token_delay=DELAY))
    tokens = len(token_pieces(LONG.removesuffix("<|return|>")))
    started = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(model="gpt-oss-20b", messages=messages(),
                                                stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        arrivals.append((time.monotonic() - started, delta))
    first_chunk = arrivals[0][0]  # sent when the backend's first token arrives
    first_reasoning = next(t for t, d in arrivals if d is not None and reasoning_of(d))
    first_content = next(t for t, d in arrivals if d is not None and d.content)
    last = arrivals[-1][0]
    print(f"\nbackend: {tokens} tokens, {DELAY * 1000:.0f} ms apart; client: first chunk "
          f"{first_chunk * 1000:.0f} ms, first reasoning delta {first_reasoning * 1000:.0f} ms "
          f"(the backend's 4th token), first content {first_content * 1000:.0f} ms, "
          f"end {last * 1000:.0f} ms")
    # The first reasoning token is the backend's 4th (<|channel|> analysis <|message|> zero).
    assert first_reasoning - first_chunk < 3 * DELAY + 0.25
    assert first_reasoning < 0.15 * last
    # Deltas are spread over the generation, not released at its end.
    assert last - first_chunk > 0.8 * (tokens - 1) * DELAY
    assert first_content > 0.7 * last
    assert "".join(reasoning_of(d) for _, d in arrivals if d is not None) == THOUGHT


def test_wire_format_and_equality_with_non_stream(
        proxy: ProxyProcess, client: openai.OpenAI,
        fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(Scripted(CALL, token_delay=0.01), CALL)
    reply, reads, _ = raw_stream(proxy, {"messages": messages(), "tools": [WEATHER],
                                         "stream_options": {"include_usage": True}})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in reply.headers
    payloads = sse_payloads(b"".join(data for _, data in reads))
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks
             if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert len(calls) == 1 and len(calls[0]) == 1
    call = calls[0][0]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == (
        "tool_calls")
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(
        token_pieces(CALL))
    assert all(c["id"] == chunks[0]["id"] for c in chunks)

    whole = client.chat.completions.create(model="gpt-oss-20b", messages=messages(),
                                           tools=[WEATHER])
    message = whole.choices[0].message
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning") or "" for c in chunks
                        if c["choices"])
    assert reasoning == message.model_extra["reasoning"] == "Need the weather."
    assert message.content is None and not any(
        c["choices"][0]["delta"].get("content") for c in chunks[1:] if c["choices"])
    assert [(t.function.name, t.function.arguments) for t in message.tool_calls] == [
        (call["function"]["name"], call["function"]["arguments"])]
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.usage.model_dump(exclude_none=True) == usage["usage"]


def test_stop_string_cuts_the_stream(client: openai.OpenAI,
                                     fake_transformers: FakeTransformers) -> None:
    fake_transformers.script("<|channel|>analysis<|message|>Say STOP later.<|end|><|start|>"
                             "assistant<|channel|>final<|message|>one two STOP three<|return|>")
    chunks = list(client.chat.completions.create(model="gpt-oss-20b", messages=messages(),
                                                 stream=True, stop=["STOP"]))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "one two "
    assert "".join(reasoning_of(c.choices[0].delta) for c in chunks) == "Say STOP later."
    assert chunks[-1].choices[0].finish_reason == "stop"


def stream_until_error(client: openai.OpenAI, marker: str) -> tuple[list, Any]:
    """The chunks a streamed request delivered before the openai SDK raised, and the error."""
    received: list = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="gpt-oss-20b",
                                                    messages=messages(marker), stream=True):
            received.append(chunk)
    return received, info


def assert_partial_stream(proxy: ProxyProcess, marker: str, received: list,
                          error: str) -> None:
    """Six tokens of LONG got through before the failure: the client saw them, the log has
    them, and the log says what went wrong."""
    assert "".join(reasoning_of(c.choices[0].delta) for c in received) == "zero one two"
    record = record_for(proxy, marker)
    assert error in record["error"]
    assert record["upstream_response"]["text"] == "".join(token_pieces(LONG)[:6])
    assert record["client_response"]["message"]["reasoning"] == "zero one two"


def test_backend_error_event_mid_stream(proxy: ProxyProcess, client: openai.OpenAI,
                                        fake_transformers: FakeTransformers) -> None:
    marker = unique()
    fake_transformers.script(Scripted(LONG, token_delay=0.01, error_after=6))
    received, info = stream_until_error(client, marker)
    assert "CUDA out of memory (scripted)" in info.value.message
    assert_partial_stream(proxy, marker, received, "CUDA out of memory")


def test_upstream_reset_mid_stream_ends_with_an_error_event(
        proxy: ProxyProcess, client: openai.OpenAI,
        fake_transformers: FakeTransformers) -> None:
    """mitmproxy fires ``error`` (never the stream with b"") when the upstream resets a chunked
    body; the addon then writes the error event and the end of the body to the client."""
    fake_transformers.script(Scripted(LONG, token_delay=0.01, reset_after=6))
    reply, reads, _ = raw_stream(proxy, {"messages": messages()})
    payloads = sse_payloads(b"".join(data for _, data in reads))
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "stream_interrupted" and "peer closed connection" in error["message"]

    marker = unique()
    fake_transformers.script(Scripted(LONG, token_delay=0.01, reset_after=6))
    received, info = stream_until_error(client, marker)
    assert not isinstance(info.value, openai.APIConnectionError)
    assert "interrupted" in info.value.message
    assert_partial_stream(proxy, marker, received, "incomplete chunked read")


def disconnect_after(client: openai.OpenAI, chunks: int, marker: str = "hi") -> float:
    """Read ``chunks`` chunks of a stream, then close it; returns when it was closed."""
    stream = client.chat.completions.create(model="gpt-oss-20b", messages=messages(marker),
                                            stream=True)
    for n, _ in enumerate(stream):
        if n == chunks - 1:
            break
    stream.close()
    return time.monotonic()


def test_client_disconnect_stops_the_backend(client: openai.OpenAI,
                                             fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(Scripted(LONG, token_delay=DELAY))
    closed = disconnect_after(client, 5)
    while fake_transformers.disconnects == 0 and time.monotonic() - closed < 3:
        time.sleep(0.02)
    assert fake_transformers.disconnects == 1
    assert time.monotonic() - closed < 1, "the backend kept generating"


def test_client_disconnect_is_logged(proxy: ProxyProcess, client: openai.OpenAI,
                                     fake_transformers: FakeTransformers) -> None:
    marker = unique()
    fake_transformers.script(Scripted(LONG, token_delay=DELAY))
    disconnect_after(client, 5, marker)
    record = record_for(proxy, marker)
    assert record["error"] == "Client disconnected."
    upstream = record["upstream_response"]["text"]
    assert upstream.startswith("<|channel|>analysis<|message|>zero one two three")
    assert len(upstream) < len(LONG) / 2
    assert record["client_response"]["message"]["reasoning"].startswith("zero one two three")


def test_keepalives_while_hidden_reasoning_streams(start_proxy,
                                                   fake_transformers: FakeTransformers) -> None:
    proxy = start_proxy(options={"keepalive_seconds": "1"})
    fake_transformers.script(Scripted(
        f"<|channel|>analysis<|message|>{' '.join(NUMBERS * 2)}<|end|><|start|>assistant"
        "<|channel|>final<|message|>Done.<|return|>", token_delay=0.1))  # 1.9 s of silence
    _, reads, total = raw_stream(proxy, {"messages": messages(), "include_reasoning": False})
    data = b"".join(d for _, d in reads)
    assert data.count(b": keep-alive\n\n") >= 1
    chunks = [json.loads(p) for p in sse_payloads(data)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert not any("reasoning" in d or "reasoning_content" in d for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == "Done."
    times = [t for t, _ in reads]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert total > 1.8 and max(gaps) < 1.5, gaps


def test_flow_log_has_both_sides_of_streams(proxy: ProxyProcess, client: openai.OpenAI,
                                            fake_transformers: FakeTransformers,
                                            fake_groq: FakeGroq) -> None:
    harmony_marker, groq_marker = unique(), unique()
    fake_transformers.script(Scripted(LONG, token_delay=0.005))
    reply, reads, _ = raw_stream(proxy, {"messages": messages(harmony_marker),
                                         "stream_options": {"include_usage": True}})
    done_at = next(t for t, data in reads if b"data: [DONE]" in data)
    assert reads[-1][0] - done_at < 0.2, "the end of the body waited"
    list(client.chat.completions.create(model="llama-3.3-70b-versatile",
                                        messages=messages(groq_marker), stream=True))

    harmony = record_for(proxy, harmony_marker)
    assert harmony["route"] == "gpt-oss" and harmony["stream"] is True
    assert harmony["upstream_response"]["text"] == LONG.removesuffix("<|return|>")
    client_side = harmony["client_response"]
    assert client_side["stream"] is True and client_side["finish_reason"] == "stop"
    assert client_side["message"]["content"] == "The answer is four."
    assert client_side["message"]["reasoning"] == THOUGHT
    assert harmony["usage"]["completion_tokens"] == len(token_pieces(
        LONG.removesuffix("<|return|>")))
    assert harmony["ttft_ms"] > 0 and harmony["total_ms"] >= harmony["ttft_ms"]
    assert "error" not in harmony

    groq = record_for(proxy, groq_marker)
    assert groq["route"] == "groq" and groq["client_response"]["stream"] is True
    assert groq["client_response"]["message"]["content"] == f"groq says: {groq_marker} "
    assert groq["client_response"]["finish_reason"] == "stop"
    assert groq["usage"]["completion_tokens"] == 5
