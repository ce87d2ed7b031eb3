"""End to end against a real llama.cpp ``llama-server`` through the real proxy (BACKEND=llamacpp).

Set-up, once: ``llama-server`` built from the llama.cpp tree in PyPI's llama-cpp-python source
package (tests/llamacpp/build_server.sh, cached) and the tiny gpt-oss model of tests/realserver
converted to GGUF (cached). Servers run on free loopback ports with one slot and 2 threads:

- ``final`` / ``tool``: every reply is FINAL_SCRIPT / TOOL_SCRIPT, forced token by token by a
  grammar on the server's command line (greedy, the end token picked with a logit bias);
- ``free``: the unconstrained random model, 1024 tokens of context, with ``<|end|>`` favoured
  (``--logit-bias 200007+12``) so that its messages end and a reply reaches its last message;
  the proxy's own grammars (strict tools, json_schema) are what the measurements test.

Never asserted: the random model's free text. Skipped only when the build cannot run here (no
cmake/compiler and no apt-get) or with SKIP_LLAMACPP=1; any other set-up failure fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from harmony_groq.encoding import harmony_encoding

from anthropic_stream import check_stream
from conftest import PINNED_DATE
from llamacpp import harness
from proxy_process import ProxyProcess
from realserver.build_tiny_model import FINAL_SCRIPT, TOOL_SCRIPT
from responses_grammar import check_grammar, parse_sse
from test_messages_e2e import Claude
from test_realserver_e2e import sdk

pytestmark = pytest.mark.llamacpp

ANSWER, REASONING = "Hello from tiny.", "Think."
TOOL_REASONING, TOOL_ARGS = "Need weather.", {"city": "Paris"}
MODEL = "gpt-oss-20b"
NO_GROQ = "http://127.0.0.1:9/openai/v1"
FREE_CONTEXT = 1024
SEEDS = range(20)
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
# Bounded values (enums, short strings, numbers), so that even a random model's JSON ends.
FORECAST_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12},
                   "days": {"type": "integer"},
                   "unit": {"enum": ["celsius", "fahrenheit"]},
                   "alerts": {"type": "boolean"}},
    "required": ["city", "unit"], "additionalProperties": False}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 16},
                   "confidence": {"type": "number"},
                   "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                            "maxItems": 3}},
    "required": ["answer", "tags"], "additionalProperties": False}


def forecast_tool(strict: bool) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": "forecast", "description": "Weather forecast.", "parameters": FORECAST_SCHEMA,
        "strict": strict}}


# -- set-up ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def llama_build() -> tuple[Path, Path]:
    """``(llama-server, tiny GGUF)``, built or taken from the cache."""
    if os.environ.get("SKIP_LLAMACPP") == "1":
        pytest.skip("SKIP_LLAMACPP=1")
    missing = harness.build_prerequisites_missing()
    if missing:
        pytest.skip(f"llama-server cannot be built here: {missing}")
    try:
        binary, source = harness.llama_server_binary()
        return binary, harness.tiny_gguf(source)
    except harness.LlamaCppSetupError as exc:
        reason = str(exc)
    pytest.fail(f"cannot set up llama-server: {reason}\nFix the cause, or set SKIP_LLAMACPP=1.",
                pytrace=False)


@pytest.fixture(scope="module")
def servers(llama_build: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, harness.LlamaServer]]:
    binary, model = llama_build
    work = tmp_path_factory.mktemp("llama")
    started = {
        "final": harness.LlamaServer(binary, model, work, script=FINAL_SCRIPT),
        "tool": harness.LlamaServer(binary, model, work, script=TOOL_SCRIPT),
        "free": harness.LlamaServer(binary, model, work, context=FREE_CONTEXT,
                                    extra_args=["--logit-bias", "200007+12"]),
    }
    try:
        for server in started.values():
            server.wait_healthy()
        yield started
    finally:
        harness.stop_servers(started.values())


def llamacpp_proxy(tmp: Path, url: str) -> ProxyProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return ProxyProcess(tmp, upstream=url, options={
        "backend": "llamacpp", "transformers_url": url, "groq_base_url": NO_GROQ,
        "harmony_date": PINNED_DATE, "upstream_timeout": "120"})


@pytest.fixture(scope="module")
def proxies(servers: dict[str, harness.LlamaServer],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    started: dict[str, ProxyProcess] = {}
    try:
        for name, server in servers.items():
            started[name] = llamacpp_proxy(tmp_path_factory.mktemp(f"proxy-{name}"), server.url)
        yield started
    finally:
        for process in started.values():
            process.stop()


def ask(text: str = "Say hello.") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def token_count(script: str) -> int:
    return len(harmony_encoding().encode(script, allowed_special="all"))


def reasoning_of(message: Any) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")


# -- the scripted servers: every client API, whole and streamed ---------------------------------

def test_health_reports_the_servers_context_and_build(proxies: dict[str, ProxyProcess],
                                                      servers: dict[str, harness.LlamaServer]
                                                      ) -> None:
    props = httpx.get(f"{servers['free'].url}/props", timeout=5).json()
    health = httpx.get(f"{proxies['free'].root_url}/health", timeout=5).json()["transformers"]
    assert health["kind"] == "llamacpp" and health["reachable"] and health["problem"] is None
    assert health["context_length"] == FREE_CONTEXT
    assert health["version"] == props["build_info"]


def test_chat_whole_and_streamed(proxies: dict[str, ProxyProcess]) -> None:
    client = sdk(proxies["final"])
    whole = client.chat.completions.create(model=MODEL, messages=ask())
    assert whole.choices[0].message.content == ANSWER
    assert reasoning_of(whole.choices[0].message) == REASONING
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == token_count(FINAL_SCRIPT)
    content, reasoning, finish = "", "", None
    for chunk in client.chat.completions.create(model=MODEL, messages=ask(), stream=True):
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            reasoning += reasoning_of(chunk.choices[0].delta) or ""
            finish = chunk.choices[0].finish_reason or finish
    assert (content, reasoning, finish) == (ANSWER, REASONING, "stop")


def test_responses_whole_and_streamed(proxies: dict[str, ProxyProcess]) -> None:
    client = sdk(proxies["final"])
    whole = client.responses.create(model=MODEL, input="Say hello.")
    assert whole.output_text == ANSWER and whole.status == "completed"
    reply = httpx.post(f"{proxies['final'].base_url}/responses", timeout=60, json={
        "model": MODEL, "input": "Say hello.", "stream": True})
    final = check_grammar(parse_sse(reply.content))
    assert final["status"] == "completed"
    texts = [part["text"] for item in final["output"] if item["type"] == "message"
             for part in item["content"]]
    assert texts == [ANSWER]


def test_messages_whole_and_streamed(proxies: dict[str, ProxyProcess]) -> None:
    claude = Claude(proxies["final"])
    whole = claude.create(model=MODEL, messages=ask())
    assert [b.text for b in whole.content if b.type == "text"] == [ANSWER]
    assert whole.stop_reason == "end_turn"
    final, raw = claude.stream(model=MODEL, messages=ask())
    assert [b.text for b in final.content if b.type == "text"] == [ANSWER]
    assert final.stop_reason == "end_turn"


def test_tool_round_trip(proxies: dict[str, ProxyProcess]) -> None:
    call = sdk(proxies["tool"]).chat.completions.create(
        model=MODEL, messages=ask("Weather in Paris?"), tools=[WEATHER_TOOL])
    choice = call.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert reasoning_of(choice.message) == TOOL_REASONING
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == TOOL_ARGS
    history = [*ask("Weather in Paris?"), choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": tool_call.id, "content": "18 C, sunny"}]
    answer = sdk(proxies["final"]).chat.completions.create(model=MODEL, messages=history,
                                                           tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == ANSWER
    record = proxies["final"].last_record("18 C, sunny")
    assert "<|start|>functions.get_weather to=assistant" in record["prompt"]
    assert "18 C, sunny" in record["prompt"]


def test_max_tokens_ends_with_length_and_stop_strings_cut(proxies: dict[str, ProxyProcess]
                                                          ) -> None:
    client = sdk(proxies["final"])
    short = client.chat.completions.create(model=MODEL, messages=ask(), max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3
    cut = client.chat.completions.create(model=MODEL, messages=ask(), stop=["from"])
    assert cut.choices[0].message.content == "Hello "
    assert cut.choices[0].finish_reason == "stop"


def test_prefix_reuse_is_reported_in_usage_and_log(proxies: dict[str, ProxyProcess]) -> None:
    proxy = proxies["final"]
    messages = ask("A question whose prompt the server will keep: " + "words " * 40)
    client = sdk(proxy)
    client.chat.completions.create(model=MODEL, messages=messages)
    again = client.chat.completions.create(model=MODEL, messages=messages)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and again.usage.prompt_tokens - 2 <= cached < \
        again.usage.prompt_tokens
    record = proxy.last_record("A question whose prompt the server will keep", count=2)
    assert record["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    text = "A question whose prompt the server will keep: " + "words " * 40
    client.responses.create(model=MODEL, input=text)
    response = client.responses.create(model=MODEL, input=text)
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens >= response.usage.input_tokens - 2
    claude = Claude(proxy)
    claude.create(model=MODEL, messages=messages)
    reply = claude.create(model=MODEL, messages=messages)
    assert reply.usage.cache_read_input_tokens and reply.usage.cache_read_input_tokens > 0
    assert reply.usage.input_tokens <= 2


# -- the random server: limits and failures ------------------------------------------------

def test_prompt_longer_than_the_context_is_a_400_before_any_generation(
        proxies: dict[str, ProxyProcess]) -> None:
    proxy = proxies["free"]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(proxy).chat.completions.create(model=MODEL, messages=ask("word " * 1500))
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert str(FREE_CONTEXT) in error["message"]
    record = proxy.last_record("word word word")
    assert "upstream_request" not in record  # refused before the server was asked


LONG_SCRIPT = ("<|channel|>analysis<|message|>" + "step " * 2000 + "<|end|><|start|>assistant"
               "<|channel|>final<|message|>done<|return|>")
RAW_STREAMS = {  # client API → (path, body, headers)
    "responses": ("/v1/responses", {"model": MODEL, "input": "Say hello.", "stream": True}, {}),
    "messages": ("/v1/messages", {"model": MODEL, "max_tokens": 3000, "stream": True,
                                  "messages": ask()}, {"anthropic-version": "2023-06-01"}),
}


@pytest.fixture()
def doomed(llama_build: tuple[Path, Path], tmp_path: Path
           ) -> Iterator[tuple[harness.LlamaServer, ProxyProcess]]:
    """A server streaming a 2000-token analysis (to be killed), and a proxy in front of it."""
    binary, model = llama_build
    server = harness.LlamaServer(binary, model, tmp_path / "doomed", script=LONG_SCRIPT)
    server.wait_healthy()
    proxy = llamacpp_proxy(tmp_path / "proxy", server.url)
    yield server, proxy
    proxy.stop()
    server.stop()


def test_server_killed_mid_chat_stream_ends_with_its_error(
        doomed: tuple[harness.LlamaServer, ProxyProcess]) -> None:
    server, proxy = doomed
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        stream = sdk(proxy).chat.completions.create(
            model=MODEL, messages=ask(), stream=True, max_tokens=3000)
        for chunk in stream:
            received.append(chunk)
            if len(received) == 5:
                server.kill()
    assert not isinstance(caught.value, openai.APIConnectionError)
    assert "interrupted" in caught.value.message
    assert len(received) == 5
    assert "".join(reasoning_of(c.choices[0].delta) or "" for c in received
                   if c.choices).startswith("step step")
    assert "incomplete chunked read" in proxy.last_record("incomplete chunked read")["error"]


@pytest.mark.parametrize("api", RAW_STREAMS)
def test_server_killed_mid_stream_ends_with_the_apis_failure_event(
        doomed: tuple[harness.LlamaServer, ProxyProcess], api: str) -> None:
    server, proxy = doomed
    path, body, headers = RAW_STREAMS[api]
    raw = harness.stream_raw(proxy.root_url + path, body,
                             {"authorization": "Bearer sk-client", **headers}, b"step",
                             server.kill)
    if api == "responses":
        failed = check_grammar(parse_sse(raw))
        assert failed["status"] == "failed"
        assert "interrupted" in failed["error"]["message"]
    else:
        ended = check_stream(raw)
        assert "interrupted" in ended["error"]["message"]
        assert ended["content"][0]["thinking"].startswith("step step")


# -- constrained decoding ----------------------------------------------------------------------

def valid(arguments: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(arguments), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def forced_call_arguments(client: openai.OpenAI, strict: bool, seed: int) -> str:
    reply = client.chat.completions.create(
        model=MODEL, messages=ask("Forecast?"), tools=[forecast_tool(strict)], seed=seed,
        tool_choice={"type": "function", "function": {"name": "forecast"}}, temperature=1.0,
        max_tokens=200)
    calls = reply.choices[0].message.tool_calls or []
    return calls[0].function.arguments if calls else ""


def test_strict_tool_arguments_are_valid_for_every_seed(proxies: dict[str, ProxyProcess],
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    client = sdk(proxies["free"])
    strict = [valid(forced_call_arguments(client, True, seed), FORECAST_SCHEMA) for seed in SEEDS]
    free = [valid(forced_call_arguments(client, False, seed), FORECAST_SCHEMA)
            for seed in SEEDS[:3]]
    with capsys.disabled():
        print(f"\nllama.cpp strict tool arguments valid: {sum(strict)}/{len(strict)}; "
              f"without strict: {sum(free)}/{len(free)}")
    assert all(strict)
    assert not all(free)  # the constraint is what makes them valid
    record = proxies["free"].last_record('"strict": false')
    assert "grammar" not in record["upstream_request"]["body"]  # the non-strict ones


def test_json_schema_answers_are_valid_for_every_seed(proxies: dict[str, ProxyProcess],
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    client = sdk(proxies["free"])
    fmt = {"type": "json_schema",
           "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    outcomes = []
    for seed in SEEDS:
        reply = client.chat.completions.create(
            model=MODEL, messages=ask("Answer in JSON."), response_format=fmt,  # type: ignore
            seed=seed, temperature=1.0, max_tokens=400)
        outcomes.append((reply.choices[0].finish_reason,
                         valid(reply.choices[0].message.content or "", ANSWER_SCHEMA)))
    finished = [ok for finish, ok in outcomes if finish == "stop"]
    with capsys.disabled():
        print(f"\nllama.cpp json_schema answers valid: {sum(finished)}/{len(finished)} "
              f"finished ({len(outcomes) - len(finished)} cut by max_tokens in the random "
              "model's messages before the answer)")
    assert all(finished)
    assert len(finished) >= len(outcomes) - 2
    record = proxies["free"].last_record("Answer in JSON.")
    assert record["upstream_request"]["body"]["grammar"].startswith("root ::=")


def test_strict_tools_with_auto_choice_and_responses_text_format(
        proxies: dict[str, ProxyProcess]) -> None:
    """Without a forced call the grammar spans the reply: free messages, then a call with
    valid arguments or an answer (Responses: ``text.format``)."""
    client = sdk(proxies["free"])
    for seed in range(3):
        reply = client.chat.completions.create(
            model=MODEL, messages=ask("Forecast?"), tools=[forecast_tool(True)], seed=seed,
            temperature=1.0, max_tokens=150)
        for call in reply.choices[0].message.tool_calls or []:
            assert valid(call.function.arguments, FORECAST_SCHEMA)
    for seed in range(2):
        response = client.responses.create(
            model=MODEL, input="Answer in JSON.", temperature=1.0, max_output_tokens=300,
            text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA,
                             "strict": True}},
            extra_body={"seed": seed})
        assert response.status == "completed"
        assert valid(response.output_text, ANSWER_SCHEMA)


def test_a_schema_the_grammar_cannot_express_is_a_400(proxies: dict[str, ProxyProcess]) -> None:
    proxy = proxies["free"]
    tool = forecast_tool(True)
    tool["function"]["parameters"] = {"type": "object", "properties": {
        "city": {"type": "string", "pattern": "^(?=[A-Z])"}}}  # a look-ahead: no grammar
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(proxy).chat.completions.create(model=MODEL, messages=ask(), tools=[tool])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unsupported_schema"
    assert "'pattern'" in error["message"] and "forecast" in error["message"]
    assert "look-around" in error["message"]
    assert "upstream_request" not in proxy.last_record("^(?=[A-Z])")
