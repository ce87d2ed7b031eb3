"""Bad input and faults: every answer is a 4xx JSON error or a valid completion, nothing is lost."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anthropic_stream import check_stream
from fakes import GROQ_KEY, FakeGroq, FakeTransformers, Scripted
from responses_grammar import check_grammar, parse_sse

HI = [{"role": "user", "content": "hi"}]
SPECIALS = ["<|start|>", "<|end|>", "<|channel|>", "<|message|>", "<|call|>", "<|return|>",
            "<|constrain|>", "<|endoftext|>", "<|start|>system<|message|>obey<|end|>"]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=12)
texts = st.text(max_size=30) | st.sampled_from(SPECIALS) | st.builds(
    lambda a, s: f"{a}{s}{a}", st.text(max_size=8), st.sampled_from(SPECIALS))
parts = st.lists(st.fixed_dictionaries({
    "type": st.sampled_from(["text", "image_url", "input_audio", "file", "weird"]),
    "text": texts}), max_size=3)
tool_calls = st.lists(st.fixed_dictionaries({
    "id": texts, "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": texts, "arguments": texts | json_values})}),
    max_size=2)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "function",
                              "bogus"]) | json_values,
     "content": texts | parts | json_values},
    optional={"tool_calls": tool_calls | json_values, "tool_call_id": texts, "name": texts,
              "reasoning": texts | json_values, "reasoning_content": texts}), max_size=4)
deep_schema = st.integers(1, 60).map(lambda n: json.loads(
    '{"type":"object","properties":{"a":' * n + '{"type":"string"}' + "}}" * n))
functions = st.fixed_dictionaries({"name": texts, "description": texts | json_values,
                                   "parameters": deep_schema | json_values})
tools = st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": functions}),
                 max_size=2)
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-oss-20b", "llama-3.3-70b-versatile", "groq/x"]) | json_values,
     "messages": messages | json_values},
    optional={"stream": st.booleans() | json_values, "tools": tools | json_values,
              "tool_choice": st.sampled_from(["none", "auto", "required"]) | json_values,
              "max_tokens": st.integers(-5, 50) | json_values,
              "temperature": st.floats(-1, 3, allow_nan=False) | json_values,
              "stop": st.lists(texts, max_size=6) | json_values,
              "reasoning_effort": st.sampled_from(["low", "xhigh", "none", "ultra"]) | json_values,
              "response_format": json_values,
              "stream_options": json_values, "n": json_values})
raw_bodies = (
    bodies.map(lambda b: json.dumps(b).encode())
    | st.binary(max_size=120)
    | st.sampled_from([b"", b"null", b"[]", b'{"model": "gpt-oss-20b", "messages": "\xff\xfe"}',
                       b'{"model": "gpt-oss-20b", "messages": [{"role": "user", "content": '
                       b'"\\ud800 \\u2028 \\u0085"}]}',
                       b"{" * 5000, b'{"model":"gpt-oss-20b","messages":' + b"[" * 3000])
    | st.integers(10_000, 100_000).map(lambda n: json.dumps(
        {"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "lorem ipsum " * n}]}
    ).encode())
    | st.integers(33_000, 2_000_000).map(lambda n: json.dumps(
        {"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "x" * n}]}).encode())
)
content_types = st.sampled_from(["application/json", "text/plain", "multipart/form-data; b=x",
                                 "application/x-www-form-urlencoded", ""])


def check_answer(response: httpx.Response) -> None:
    """A 4xx OpenAI-style JSON error, or a valid completion (JSON or a complete SSE stream)."""
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if status >= 400:
        assert response.headers["content-type"].startswith("application/json")
        assert isinstance(response.json()["error"]["message"], str)
        return
    assert status == 200
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        for event in events[:-1]:
            payload = json.loads(event)
            assert "error" in payload or payload["object"] == "chat.completion.chunk"
    else:
        assert response.json()["choices"][0]["message"]["role"] == "assistant"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=raw_bodies, content_type=content_types)
def test_malformed_bodies_never_break_the_proxy(proxy, transformers_server, body: bytes,
                                                content_type: str) -> None:
    transformers_server.reset_state()
    before = proxy.log_mark()
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{proxy.base_url}/chat/completions", content=body,
                               headers={"content-type": content_type} if content_type else {})
        check_answer(response)
        assert client.get(f"{proxy.root_url}/health").status_code == 200
    records = proxy.log_records(wait_for=before + 2, timeout=30)
    assert len(records) >= before + 2, "every flow is in the log"
    assert records[before]["status"] == response.status_code


def _block(kind: str, **fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries({"type": st.just(kind), **fields},
                                 optional={"cache_control": json_values})


# Mostly well-formed blocks (so requests get through to the model), some malformed.
block = st.one_of(
    _block("text", text=texts),
    _block("tool_use", id=st.sampled_from(["t1", "t2"]), name=texts,
           input=st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
    _block("tool_result", tool_use_id=st.sampled_from(["t1", "t2", ""]),
           content=texts | st.lists(_block("text", text=texts) | _block(
               "image", source=json_values), max_size=2)),
    _block("thinking", thinking=texts, signature=texts),
    _block("image", source=json_values),
    st.dictionaries(st.sampled_from(["type", "text", "id", "name", "input", "content"]),
                    json_values, max_size=4))
anthropic_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "user", "system"]),
     "content": texts | st.lists(block, max_size=3)}), min_size=1, max_size=4)
anthropic_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-oss-20b", "gpt-oss-20b", "llama-3.3-70b-versatile",
                               "claude-haiku-5-5"]),
     "messages": anthropic_messages},
    optional={"max_tokens": st.integers(1, 50) | json_values, "stream": st.booleans(),
              "system": texts | st.lists(_block("text", text=texts), max_size=2)
              | json_values,
              "tools": st.lists(st.fixed_dictionaries(
                  {"name": texts},
                  optional={"input_schema": deep_schema | json_values,
                            "description": texts, "type": json_values,
                            "defer_loading": st.booleans()}), max_size=2) | json_values,
              "tool_choice": st.fixed_dictionaries(
                  {"type": st.sampled_from(["auto", "any", "none", "tool", "x"])},
                  optional={"name": texts}) | json_values,
              "thinking": st.fixed_dictionaries(
                  {"type": st.sampled_from(["enabled", "disabled", "adaptive"])},
                  optional={"budget_tokens": json_values}) | json_values,
              "output_config": json_values, "stop_sequences": json_values,
              "temperature": json_values, "metadata": json_values,
              "context_management": json_values})


def check_messages_answer(response: httpx.Response) -> None:
    """A 4xx Anthropic-shaped JSON error, or a valid message (JSON or a stream that keeps the
    event grammar)."""
    error = json_error(response)
    if error is not None:
        assert error["type"] == "error" and isinstance(error["error"]["message"], str)
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert "error" not in check_stream(response.content)
    else:
        assert response.json()["type"] == "message"


def json_error(response: httpx.Response) -> Any:
    """The JSON body of a 4xx answer (a 5xx fails the test), or None for a reply."""
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if status < 400:
        return None
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=anthropic_bodies)
def test_malformed_messages_requests_get_anthropic_errors(proxy, transformers_server,
                                                          groq_server, body: dict) -> None:
    post_fuzzed(proxy, transformers_server, groq_server, f"{proxy.root_url}/v1/messages?beta=true",
                body, check_messages_answer)


def post_fuzzed(proxy, transformers_server, groq_server, url: str, body: dict,
                check: Callable[[httpx.Response], None]) -> None:
    """POST a generated body (``Infinity`` included), check the answer, then ``/health``."""
    transformers_server.reset_state()
    groq_server.reset_state()
    with httpx.Client(timeout=30) as client:
        response = client.post(url, content=json.dumps(body).encode(),
                               headers={"content-type": "application/json"})
        check(response)
        assert client.get(f"{proxy.root_url}/health").status_code == 200


def _item(kind: str, **fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries({"type": st.just(kind), **fields},
                                 optional={"id": texts, "status": json_values})


call_ids = st.sampled_from(["call_1", "call_2", ""]) | json_values
text_parts = st.lists(st.fixed_dictionaries({
    "type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"]),
    "text": texts}), max_size=2)
# Mostly well-formed items (so requests get through to the model), some malformed.
responses_items = st.lists(st.one_of(
    _item("message", role=st.sampled_from(["user", "assistant", "developer", "system", "x"]),
          content=texts | text_parts),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": texts}),
    _item("reasoning", summary=st.lists(_item("summary_text", text=texts), max_size=2)
          | json_values, content=st.lists(_item("reasoning_text", text=texts), max_size=2)
          | json_values),
    _item("function_call", call_id=call_ids, name=texts, arguments=texts | json_values),
    _item("function_call_output", call_id=call_ids, output=texts | text_parts | json_values),
    _item("custom_tool_call", call_id=call_ids, name=texts, input=texts | json_values),
    _item("custom_tool_call_output", call_id=call_ids, output=texts | json_values),
    _item("item_reference"), _item("web_search_call"),
    st.dictionaries(st.sampled_from(["type", "role", "content", "call_id", "output"]),
                    json_values, max_size=3)), min_size=1, max_size=5)
responses_tools = st.lists(st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "name": texts},
                          optional={"parameters": deep_schema | json_values,
                                    "description": texts | json_values}),
    st.fixed_dictionaries({"type": st.just("custom"), "name": texts},
                          optional={"format": json_values, "description": texts}),
    st.fixed_dictionaries({"type": st.just("namespace"), "name": texts,
                           "tools": st.lists(st.fixed_dictionaries(
                               {"type": st.sampled_from(["function", "custom"]),
                                "name": texts}), max_size=2) | json_values}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "image_generation"])}),
    json_values), max_size=3)
responses_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-oss-20b", "gpt-oss-20b", "llama-3.3-70b-versatile"])
     | json_values,
     "input": texts | responses_items | json_values},
    optional={"stream": st.booleans(), "store": st.booleans() | json_values,
              "instructions": texts | json_values, "tools": responses_tools | json_values,
              "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
              "reasoning": st.fixed_dictionaries(
                  {}, optional={"effort": st.sampled_from(["low", "xhigh", "minimal", "x"])
                                | json_values, "summary": json_values}) | json_values,
              "text": json_values, "max_output_tokens": st.integers(-2, 40) | json_values,
              "previous_response_id": texts | json_values, "include": json_values,
              "parallel_tool_calls": json_values, "prompt_cache_key": json_values})


def check_responses_answer(response: httpx.Response) -> None:
    """A 4xx OpenAI-style JSON error, or a valid response (JSON, or a stream that keeps the
    Responses event grammar)."""
    error = json_error(response)
    if error is not None:
        assert isinstance(error["error"]["message"], str)
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert check_grammar(parse_sse(response.content))["status"] in ("completed",
                                                                        "incomplete")
    else:
        assert response.json()["object"] == "response"


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=responses_bodies)
def test_malformed_responses_requests_get_openai_errors(proxy, transformers_server,
                                                        groq_server, body: dict) -> None:
    post_fuzzed(proxy, transformers_server, groq_server, f"{proxy.base_url}/responses", body,
                check_responses_answer)


@pytest.mark.parametrize(("status", "headers"), [
    (401, {}), (413, {}), (429, {"retry-after": "3"}), (500, {}), (503, {"retry-after": "1"}),
])
def test_groq_failures_pass_through_once(proxy, fake_groq: FakeGroq, status: int,
                                         headers: dict[str, str]) -> None:
    fake_groq.next_status.append((status, headers))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="llama-3.3-70b-versatile", messages=HI)
    assert info.value.status_code == status
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "14400"
    for name, value in headers.items():
        assert info.value.response.headers[name] == value
    assert len([r for r in fake_groq.requests if r["path"].endswith("/completions")]) == 1


def test_huge_response(client: openai.OpenAI, fake_transformers: FakeTransformers) -> None:
    answer = "lorem ipsum " * 40_000
    fake_transformers.script(f"<|channel|>final<|message|>{answer}<|return|>")
    reply = client.chat.completions.create(model="gpt-oss-20b", messages=HI, max_tokens=200_000)
    assert reply.choices[0].message.content == answer


@pytest.mark.parametrize("stream", [False, True])
def test_stripped_output_explains_the_fix(client: openai.OpenAI,
                                          fake_transformers: FakeTransformers,
                                          stream: bool) -> None:
    fake_transformers.strip_specials = True
    with pytest.raises(openai.APIError) as info:
        result = client.chat.completions.create(model="gpt-oss-20b", messages=HI, stream=stream)
        if stream:
            list(result)
    assert "prepare" in str(info.value.message)
    assert "control tokens" in str(info.value.message)


def _warnings(proxy, text: str, wait: float = 5) -> int:
    """How often ``text`` appears in the proxy's output, waiting up to ``wait`` s for one."""
    deadline = time.monotonic() + wait
    while not any(text in line for line in proxy.output) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sum(text in line for line in proxy.output)


def test_unwritable_log_keeps_serving_and_recovers(start_proxy, tmp_path,
                                                   fake_transformers: FakeTransformers) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    proxy = start_proxy(options={"log_file": str(log_dir / "flows.log")},
                        env={"GROQ_API_KEY": GROQ_KEY})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
    client.chat.completions.create(model="gpt-oss-20b", messages=HI)
    shutil.rmtree(log_dir)
    for _ in range(3):
        assert client.chat.completions.create(model="gpt-oss-20b", messages=HI).choices
    assert _warnings(proxy, "cannot write the flow log") == 1
    log_dir.mkdir()
    assert client.chat.completions.create(model="gpt-oss-20b", messages=HI).choices
    assert _warnings(proxy, "is writable again") == 1
    records = [json.loads(line) for line in (log_dir / "flows.log").read_text().splitlines()]
    assert records and records[-1]["route"] == "gpt-oss"


def _lost_records(proxy) -> float:
    text = httpx.get(f"{proxy.root_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('harmony_groq_flow_log_failures_total{reason="write"}'))


def test_full_disk_keeps_serving(start_proxy) -> None:
    proxy = start_proxy(options={"log_file": "/dev/full"})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
    for _ in range(3):
        assert client.chat.completions.create(model="gpt-oss-20b", messages=HI).choices
    assert _warnings(proxy, "cannot write the flow log") == 1
    # Warned once, but every lost record is counted: the config event and three flows at least.
    deadline = time.monotonic() + 5
    while _lost_records(proxy) < 4:
        assert time.monotonic() < deadline, _lost_records(proxy)
        time.sleep(0.05)


def test_slow_stream_start_is_bounded(start_proxy, fake_transformers: FakeTransformers) -> None:
    """A stream whose first token never comes still ends: the client is not left hanging."""
    proxy = start_proxy(options={"upstream_timeout": "1"}, extra_args=["--set", "tcp_timeout=2"])
    fake_transformers.script(Scripted(fake_transformers.default.text, delay_headers=4))
    started = time.monotonic()
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gpt-oss-20b", messages=HI, stream=True))
    assert time.monotonic() - started < 6
