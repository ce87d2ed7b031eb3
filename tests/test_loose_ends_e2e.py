"""Small things a client sees, each through the real mitmdump with the real clients: Anthropic's
``message_start`` usage and matched stop sequence, ``max_tokens`` required on ``/v1/messages``
and clamped to a Groq model's limit, the dialect label of the local endpoints, and vLLM's
context length measured once vLLM is up."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from fakes_backends import FakeVllm
from proxy_process import ProxyProcess

LLAMA = "llama-3.3-70b-versatile"  # max_completion_tokens 32768 in Groq's list (fakes.py)
COUNTING = ("<|channel|>analysis<|message|>Count.<|end|><|start|>assistant<|channel|>final"
            "<|message|>one two three four<|return|>")


def anthropic_client(proxy: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.root_url, api_key="sk-ant-client-key-0123456789",
                               max_retries=0, timeout=20)


def test_message_start_reports_the_gpt_oss_prompt_size(proxy: ProxyProcess) -> None:
    """Claude Code shows the context in use from ``message_start``; the prompt's size is known
    once it is rendered, before the first token."""
    client = anthropic_client(proxy)
    messages = [{"role": "user", "content": "How long is this prompt?"}]
    counted = client.messages.count_tokens(model="gpt-oss-20b", messages=messages).input_tokens
    with client.messages.stream(model="gpt-oss-20b", max_tokens=256,
                                messages=messages) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage.input_tokens == counted > 0
    assert final.usage.input_tokens == counted


@pytest.mark.parametrize("stream", [False, True])
def test_the_stop_sequence_that_matched_is_reported(
        proxy: ProxyProcess, fake_transformers: FakeTransformers, stream: bool) -> None:
    fake_transformers.script(COUNTING)
    client = anthropic_client(proxy)
    kwargs = {"model": "gpt-oss-20b", "max_tokens": 256, "stop_sequences": ["seven", "three",
                                                                            "four"],
              "messages": [{"role": "user", "content": "Count to four."}]}
    if stream:
        with client.messages.stream(**kwargs) as events:
            reply = events.get_final_message()
    else:
        reply = client.messages.create(**kwargs)
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", "three")
    assert "".join(b.text for b in reply.content if b.type == "text") == "one two "


@pytest.mark.parametrize("model", ["gpt-oss-20b", LLAMA])
def test_messages_without_max_tokens_are_refused_as_anthropic_does(
        proxy: ProxyProcess, fake_groq: FakeGroq, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{proxy.root_url}/v1/messages", json=body,
                       headers={"anthropic-version": "2023-06-01"}, timeout=10)
    assert reply.status_code == 400
    assert reply.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "max_tokens: Field required"}}
    assert not [r for r in fake_groq.requests if r["path"].endswith("/chat/completions")]
    # count_tokens takes the same body without max_tokens, as Anthropic's does.
    counted = httpx.post(f"{proxy.root_url}/v1/messages/count_tokens", json=body, timeout=10)
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


def groq_list_cached(proxy: ProxyProcess) -> None:
    """The model list the proxy fetches at start-up (and keeps fresh in the background) is in
    its cache once ``/v1/models`` has answered from it."""
    assert httpx.get(f"{proxy.base_url}/models", timeout=10).status_code == 200


def test_max_tokens_is_clamped_to_the_groq_models_limit(
        proxy: ProxyProcess, client: openai.OpenAI, fake_groq: FakeGroq) -> None:
    groq_list_cached(proxy)
    reply = client.chat.completions.create(model=LLAMA, max_tokens=100_000,
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "groq says: hi"
    assert fake_groq_body(fake_groq)["max_tokens"] == 32768
    # Claude Code's continuation after a max_tokens stop asks for 128000.
    message = anthropic_client(proxy).messages.create(
        model=LLAMA, max_tokens=128_000, messages=[{"role": "user", "content": "go on"}])
    assert message.content[0].text == "groq says: go on"
    assert fake_groq_body(fake_groq)["max_tokens"] == 32768
    # Groq's own Responses endpoint (store: false), and a limit under the model's untouched.
    client.responses.create(model=LLAMA, input="hi", store=False, max_output_tokens=99_999)
    assert fake_groq_body(fake_groq)["max_output_tokens"] == 32768
    client.chat.completions.create(model=LLAMA, max_tokens=500,
                                   messages=[{"role": "user", "content": "hi"}])
    assert fake_groq_body(fake_groq)["max_tokens"] == 500


def fake_groq_body(fake_groq: FakeGroq) -> dict:
    return json.loads(next(r for r in reversed(fake_groq.requests)
                           if r["path"] != "/openai/v1/models")["raw"])


def requests_by_dialect(proxy: ProxyProcess) -> dict[str, float]:
    text = httpx.get(f"{proxy.root_url}/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "harmony_groq_requests_total" and sample.labels["route"] == "local":
                key = sample.labels["dialect"]
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def test_local_endpoints_are_labelled_with_the_asking_clients_dialect(
        proxy: ProxyProcess) -> None:
    before = requests_by_dialect(proxy)
    anthropic_client(proxy).models.list()  # Claude Code's model discovery
    assert httpx.get(f"{proxy.base_url}/models", params={"client_version": "0.98.0"},
                     timeout=10).json()["models"]  # Codex's catalog
    openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0).models.list()
    httpx.get(f"{proxy.root_url}/health", timeout=10)
    after = requests_by_dialect(proxy)
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    # "none": /health, and the scrape before this one (a scrape counts once it is answered).
    assert grown == {"messages": 1, "responses": 1, "chat": 1, "none": 2}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_vllm_context_length_is_measured_once_vllm_is_up(
        start_proxy: Callable[..., ProxyProcess]) -> None:
    """vLLM down at the proxy's start: no ``max_model_len`` then; once vLLM answers, the next
    request measures it and asks for the rest of the context (vLLM's own default is 16)."""
    port = free_port()
    proxy = start_proxy(options={"backend": "vllm", "transformers_url": f"http://127.0.0.1:{port}"},
                        env={"GROQ_API_KEY": GROQ_KEY})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0, timeout=20)
    hello = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.APIStatusError) as down:
        client.chat.completions.create(model="gpt-oss-20b", messages=hello)
    assert down.value.status_code in (502, 503, 504)
    vllm = FakeVllm(port)
    try:
        client.chat.completions.create(model="gpt-oss-20b", messages=hello)
        assert vllm.bodies[-1]["max_tokens"] == vllm.max_model_len - len(vllm.prompts[-1])
        described = httpx.get(f"{proxy.root_url}/health", timeout=5).json()["transformers"]
        assert described["context_length"] == vllm.max_model_len
    finally:
        vllm.close()


def test_groq_clamp_needs_no_list(start_proxy: Callable[..., ProxyProcess],
                                  fake_groq: FakeGroq) -> None:
    """Groq's model list unavailable: requests go on unclamped (Groq says what is wrong)."""
    fake_groq.models_status = 500
    proxy = start_proxy(env={"GROQ_API_KEY": GROQ_KEY})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=LLAMA, max_tokens=100_000,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "must be less than or equal to `32768`" in refused.value.message


def test_a_groq_chat_body_taken_as_it_is_goes_on_as_the_clients_bytes(
        proxy: ProxyProcess, fake_groq: FakeGroq) -> None:
    """Not parsed and written again when nothing changes (the Groq route's hot path), and
    logged once; a body that needs sanitising is written again without what Groq rejects."""
    marker = f"caf\\u00e9 {time.monotonic_ns()}"
    raw = (b'{"model": "llama-3.3-70b-versatile",\n  "messages": [{"role": "user", '
           b'"content": "' + marker.encode() + b'"}], "max_tokens": 64}')
    text = json.loads(raw)["messages"][0]["content"]
    reply = httpx.post(f"{proxy.base_url}/chat/completions", content=raw,
                       headers={"content-type": "application/json"}, timeout=10)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == (
        f"groq says: {text}")
    assert fake_groq.requests[-1]["raw"] == raw
    record = logged(proxy, text, 64)
    assert record["upstream_request"]["body"] == "<see client_request>"
    assert record["client_request"]["body"] == json.loads(raw)
    changed = raw.replace(b'"max_tokens": 64', b'"cache_control": {"type": "ephemeral"}')
    assert httpx.post(f"{proxy.base_url}/chat/completions", content=changed,
                      headers={"content-type": "application/json"}, timeout=10).status_code == 200
    sent = {"model": LLAMA, "messages": [{"role": "user", "content": text}]}
    assert json.loads(fake_groq.requests[-1]["raw"]) == sent
    assert logged(proxy, text, None)["upstream_request"]["body"] == sent


def logged(proxy: ProxyProcess, text: str, max_tokens: int | None) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in proxy.log_records():
            body = (record.get("client_request") or {}).get("body")
            # The session's log also holds other tests' records, fuzzed bodies included.
            if isinstance(body, dict) and body.get("messages") == [
                    {"role": "user", "content": text}] and body.get("max_tokens") == max_tokens:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no record for {text}")


@pytest.mark.parametrize("stream", [False, True])
def test_groq_cached_tokens_reach_every_dialects_usage(
        proxy: ProxyProcess, client: openai.OpenAI, fake_groq: FakeGroq, stream: bool) -> None:
    """Groq's prompt caching (``usage.prompt_tokens_details.cached_tokens``) in the usage of a
    Messages or Responses client served by a Groq model, as the local servers' cache hits are."""
    fake_groq.cached_tokens = 8  # of the fake's 12 prompt tokens
    messages = anthropic_client(proxy).messages
    if stream:
        with messages.stream(model=LLAMA, max_tokens=64,
                             messages=[{"role": "user", "content": "hi"}]) as events:
            usage = events.get_final_message().usage
    else:
        usage = messages.create(model=LLAMA, max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (4, 8)
    # Responses with store (not Groq's own endpoint): translated from Groq's chat reply.
    marker = f"cached {stream} {time.monotonic_ns()}"
    if stream:
        with client.responses.stream(model=LLAMA, input=marker) as events:
            reply = events.get_final_response()
    else:
        reply = client.responses.create(model=LLAMA, input=marker)
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.input_tokens_details.cached_tokens) == (12, 8)
    record = proxy.last_record(marker)
    assert record["usage"]["prompt_tokens_details"] == {"cached_tokens": 8}
