"""End to end against a real ``transformers serve`` through the real proxy and the openai SDK.

Set-up, once per session: the transformers venv (``tests/realserver/setup_env.sh``: minutes the
first time, then cached), the unprepared tiny gpt-oss model (built once per version of
``build_tiny_model.py`` into the venv), the user's ``harmony-groq-prepare`` run on
it, and scripted copies whose greedy answer is fixed by ``sequence_bias``: FINAL_SCRIPT or
TOOL_SCRIPT. Three servers (final, tool, unprepared+final) start in parallel on free loopback
ports, offline, on CPU. A set-up failure fails these tests loudly; ``SKIP_REAL_SERVER=1``
skips them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from harmony_groq.backend_check import completions_problem
from harmony_groq.encoding import harmony_encoding
from harmony_groq.prepare import HARMONY_TOKENS, MARKER, harmony_problems, is_harmony_ready

from conftest import PINNED_DATE
from proxy_process import ProxyProcess
from realserver import harness
from realserver.build_tiny_model import FINAL_SCRIPT, TOOL_SCRIPT
from responses_grammar import check_grammar, parse_sse
from test_messages_e2e import Claude

pytestmark = pytest.mark.realserver

ANSWER, REASONING = "Hello from tiny.", "Think."
TOOL_REASONING, TOOL_ARGS = "Need weather.", {"city": "Paris"}
MODEL = "gpt-oss-20b"
NO_GROQ = "http://127.0.0.1:9/openai/v1"  # never contacted: every request here is gpt-oss
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def test_scripts_say_what_the_tests_expect() -> None:
    """The expected values below are written out; this ties them to the builder's scripts."""
    assert f"<|message|>{REASONING}<|end|>" in FINAL_SCRIPT
    assert FINAL_SCRIPT.endswith(f"final<|message|>{ANSWER}<|return|>")
    assert f"<|message|>{TOOL_REASONING}<|end|>" in TOOL_SCRIPT
    assert "to=functions.get_weather" in TOOL_SCRIPT
    assert TOOL_SCRIPT.endswith(f"<|message|>{json.dumps(TOOL_ARGS, separators=(',', ':'))}"
                                "<|call|>")


def token_count(script: str) -> int:
    return len(harmony_encoding().encode(script, allowed_special="all"))


# -- set-up ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def transformers_venv() -> Path:
    if os.environ.get("SKIP_REAL_SERVER") == "1":
        pytest.skip("SKIP_REAL_SERVER=1")
    try:
        return harness.ensure_env()
    except harness.RealServerSetupError as exc:
        reason = str(exc)
    pytest.fail(f"cannot set up the real transformers server environment: {reason}\n"
                "Fix the cause, or set SKIP_REAL_SERVER=1 to skip the real-server tests.",
                pytrace=False)


@pytest.fixture(scope="session")
def base_model(transformers_venv: Path) -> Path:
    """The unprepared tiny model (as downloaded: control tokens special)."""
    return harness.cached_base_model(transformers_venv)


@pytest.fixture(scope="session")
def models(transformers_venv: Path, base_model: Path,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("models")
    prepared = harness.prepare(base_model, work / "prepared")
    return {
        "prepared": prepared,
        "final": harness.scripted_copy(transformers_venv, prepared, work / "final", "final"),
        "tool": harness.scripted_copy(transformers_venv, prepared, work / "tool", "tool"),
        "unprepared": harness.scripted_copy(transformers_venv, base_model, work / "unprepared",
                                            "final"),
    }


@pytest.fixture(scope="module")
def servers(transformers_venv: Path, models: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, harness.TransformersServer]]:
    logs = tmp_path_factory.mktemp("servers")
    started = harness.start_servers(
        transformers_venv, {name: models[name] for name in ("final", "tool", "unprepared")},
        logs, logs / "hub")
    yield started
    harness.stop_servers(started.values())


@pytest.fixture(scope="module")
def proxies(servers: dict[str, harness.TransformersServer],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProxyProcess]]:
    """One real mitmdump with the addon per server (TRANSFORMERS_URL = that server)."""
    started: dict[str, ProxyProcess] = {}
    try:
        for name, server in servers.items():
            started[name] = ProxyProcess(
                tmp_path_factory.mktemp(f"proxy-{name}"), upstream=server.url,
                options={"transformers_url": server.url, "groq_base_url": NO_GROQ,
                         "harmony_date": PINNED_DATE, "upstream_timeout": "60"})
        yield started
    finally:
        for process in started.values():
            process.stop()


def sdk(proxy: ProxyProcess) -> openai.OpenAI:
    # A hang guard: a 400-token CPU reply took over 60 s on the loaded 2-core machine.
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0,
                         timeout=180)


def next_record(proxy: ProxyProcess, before: int) -> dict:
    """The flow record written after ``before`` records (the log is written asynchronously)."""
    records = proxy.log_records(wait_for=before + 1)
    assert len(records) > before, "the flow was not logged"
    return records[before]


def reasoning_of(message: object) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")  # type: ignore[attr-defined]


def collect_stream(stream) -> dict:  # noqa: ANN001 - openai.Stream
    """Concatenate a streamed chat completion's deltas."""
    out: dict = {"content": "", "reasoning": "", "tool_calls": {}, "finish_reason": None,
                 "content_chunks": 0}
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.content:
            out["content"] += delta.content
            out["content_chunks"] += 1
        out["reasoning"] += (delta.model_extra or {}).get("reasoning_content") or ""
        for call in delta.tool_calls or []:
            slot = out["tool_calls"].setdefault(call.index, {"id": None, "name": "",
                                                             "arguments": ""})
            slot["id"] = call.id or slot["id"]
            if call.function and call.function.name:
                slot["name"] += call.function.name
            if call.function and call.function.arguments:
                slot["arguments"] += call.function.arguments
        out["finish_reason"] = choice.finish_reason or out["finish_reason"]
    return out


# -- the preparation command -------------------------------------------------------------------

def test_prepare_makes_the_real_tokenizer_keep_control_tokens(base_model: Path,
                                                              models: dict[str, Path]) -> None:
    problems = harmony_problems(base_model)
    assert len(problems) == 2 * len(HARMONY_TOKENS), problems
    prepared = models["prepared"]
    assert is_harmony_ready(prepared)
    assert (prepared / MARKER).is_file()
    weights = prepared / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (base_model / "model.safetensors")


# -- answers through the proxy -----------------------------------------------------------------

def test_non_streamed_final_answer(proxies: dict[str, ProxyProcess]) -> None:
    logged = proxies["final"].log_mark()
    response = sdk(proxies["final"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}])
    choice = response.choices[0]
    assert choice.message.content == ANSWER
    assert reasoning_of(choice.message) == REASONING
    assert choice.finish_reason == "stop"
    assert response.model == MODEL
    assert response.usage is not None
    assert response.usage.completion_tokens == token_count(FINAL_SCRIPT)
    record = next_record(proxies["final"], logged)
    assert record["upstream_response"]["text"].startswith("<|channel|>analysis<|message|>")


def test_streamed_final_answer(proxies: dict[str, ProxyProcess]) -> None:
    stream = sdk(proxies["final"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], stream=True)
    result = collect_stream(stream)
    assert result["content"] == ANSWER
    assert result["content_chunks"] > 1  # token by token, as the server streams
    assert result["reasoning"] == REASONING
    assert result["finish_reason"] == "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_api_tool_call_then_final_answer(proxies: dict[str, ProxyProcess],
                                                   stream: bool) -> None:
    """The Responses dialect over the real server: a function call, then the answer."""
    tool = {"type": "function", **WEATHER_TOOL["function"]}
    body = {"model": MODEL, "input": "Weather in Paris?", "tools": [tool], "store": False}
    if stream:
        response = httpx.post(f"{proxies['tool'].base_url}/responses", timeout=60,
                              json={**body, "stream": True})
        events = parse_sse(response.content)
        output = check_grammar(events)["output"]
        assert sum(e["type"] == "response.reasoning_text.delta" for e in events) > 1
    else:
        output = sdk(proxies["tool"]).responses.create(**body).model_dump()["output"]
    reasoning, call = output
    assert reasoning["content"][0]["text"] == TOOL_REASONING
    assert call["type"] == "function_call" and json.loads(call["arguments"]) == TOOL_ARGS
    history = [{"role": "user", "content": "Weather in Paris?"}, reasoning, call,
               {"type": "function_call_output", "call_id": call["call_id"],
                "output": '{"temp_c": 21}'}]
    final = sdk(proxies["final"]).responses.create(**{**body, "input": history})
    assert final.output_text == ANSWER and final.status == "completed"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_call_then_result_then_final_answer(proxies: dict[str, ProxyProcess],
                                                 stream: bool) -> None:
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk(proxies["tool"]).chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=stream)
    if stream:
        result = collect_stream(first)
        assert result["finish_reason"] == "tool_calls"
        assert result["reasoning"] == TOOL_REASONING
        assert len(result["tool_calls"]) == 1
        call = result["tool_calls"][0]
        call_id, name, arguments = call["id"], call["name"], call["arguments"]
    else:
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert reasoning_of(choice.message) == TOOL_REASONING
        assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
        tool_call = choice.message.tool_calls[0]
        call_id, name, arguments = tool_call.id, tool_call.function.name, \
            tool_call.function.arguments
    assert call_id and name == "get_weather" and json.loads(arguments) == TOOL_ARGS

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 21}'},
    ]
    logged = proxies["final"].log_mark()
    final = sdk(proxies["final"]).chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == ANSWER
    assert final.choices[0].finish_reason == "stop"
    prompt = next_record(proxies["final"], logged)["prompt"]
    assert "to=functions.get_weather" in prompt
    assert '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>' \
           '{"temp_c": 21}<|end|>' in prompt


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_max_tokens_truncation_finishes_with_length(proxies: dict[str, ProxyProcess],
                                                    stream: bool) -> None:
    # 5 tokens: <|channel|> analysis <|message|> Think . — cut inside the reasoning.
    response = sdk(proxies["final"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=5,
        stream=stream)
    if stream:
        result = collect_stream(response)
        assert result["finish_reason"] == "length"
        assert result["reasoning"] == REASONING
        assert result["content"] == ""
    else:
        choice = response.choices[0]
        assert choice.finish_reason == "length"
        assert reasoning_of(choice.message) == REASONING
        assert not choice.message.content
        assert response.usage is not None and response.usage.completion_tokens == 5


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_messages_tool_round_trip_and_count(proxies: dict[str, ProxyProcess],
                                                      stream: bool) -> None:
    """The anthropic SDK through the proxy to the real server: a tool call (stream grammar
    checked), its result answered, and count_tokens equal to what the server counted."""
    tool = {"name": "get_weather", "description": "Current weather in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"]}
    request = {"model": MODEL, "max_tokens": 200, "tools": [tool],
               "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    claude = Claude(proxies["tool"])
    first = claude.stream(**request)[0] if stream else claude.create(**request)
    thinking, tool_use = first.content
    assert (thinking.thinking, tool_use.name, tool_use.input) == (
        TOOL_REASONING, "get_weather", TOOL_ARGS)
    assert first.stop_reason == "tool_use"
    assert first.usage.output_tokens == token_count(TOOL_SCRIPT)
    counted = claude.client.messages.count_tokens(
        **{k: v for k, v in request.items() if k != "max_tokens"})
    assert counted.input_tokens == first.usage.input_tokens  # as the real server counted

    request["messages"] += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                      "content": '{"temp_c": 21}'}]}]
    final = Claude(proxies["final"])
    answer = final.stream(**request)[0] if stream else final.create(**request)
    assert [(b.type, getattr(b, "text", None)) for b in answer.content][-1] == ("text", ANSWER)
    assert answer.stop_reason == "end_turn"
    with pytest.raises(anthropic.BadRequestError):
        final.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:9/x.png"}}]}])


# -- the unprepared model ----------------------------------------------------------------------

def test_unprepared_model_gets_the_prepare_error(proxies: dict[str, ProxyProcess]) -> None:
    logged = proxies["unprepared"].log_mark()
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(proxies["unprepared"]).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}])
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "harmony_tokens_stripped"
    assert "prepare" in error["message"]
    upstream = next_record(proxies["unprepared"], logged)["upstream_response"]["text"]
    assert upstream.startswith("analysis") and "<|channel|>" not in upstream


def test_unprepared_model_streamed_ends_with_the_prepare_error(
        proxies: dict[str, ProxyProcess]) -> None:
    stream = sdk(proxies["unprepared"]).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], stream=True)
    with pytest.raises(openai.APIError) as caught:
        collect_stream(stream)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "harmony_tokens_stripped"
    assert "prepare" in error["message"]


# -- the server check behind /health -----------------------------------------------------------

def test_the_version_probe_tells_present_from_missing_routes(
        servers: dict[str, harness.TransformersServer]) -> None:
    """backend_check's premise, on the real server: GET on the POST-only /v1/completions is
    405, a route the server lacks is 404 (as /v1/completions is before 5.6)."""
    url = servers["final"].url
    present = httpx.get(f"{url}/v1/completions", timeout=10, trust_env=False).status_code
    missing = httpx.get(f"{url}/v1/no-such-route", timeout=10, trust_env=False).status_code
    assert (present, missing) == (405, 404)
    assert completions_problem(present) is None
    assert completions_problem(missing) is not None


def test_proxy_health_reaches_the_real_server(proxies: dict[str, ProxyProcess]) -> None:
    body = httpx.get(f"{proxies['final'].root_url}/health", timeout=10, trust_env=False).json()
    assert body["transformers"]["reachable"] is True
    assert body["transformers"]["health_status"] == 200


# -- ./run.sh serve: the user's one command ----------------------------------------------------

def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_proxy(process: subprocess.Popen, url: str, log: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"./run.sh serve exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            response = httpx.get(url, timeout=2, trust_env=False)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"./run.sh serve: proxy not up after {timeout} s:\n{log.read_text()[-4000:]}")


def test_run_sh_serve_prepares_serves_proxies_and_stops_both(
        transformers_venv: Path, base_model: Path, tmp_path: Path) -> None:
    # What a user has: a downloaded, unprepared model folder (here scripted to answer ANSWER).
    user_model = harness.scripted_copy(transformers_venv, base_model, tmp_path / "gpt-oss-tiny",
                                       "final")
    server_port, proxy_port = harness.free_port(), harness.free_port()
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    env = {k: v for k, v in harness.server_env(tmp_path / "hub").items()
           if k not in ("GROQ_API_KEY", "PROXY_API_KEY", "TRANSFORMERS_MODEL")}
    env.update(TRANSFORMERS_URL=f"http://127.0.0.1:{server_port}", HOST="127.0.0.1",
               PORT=str(proxy_port), TRANSFORMERS_BIN=str(transformers_venv / "bin" /
                                                          "transformers"),
               GROQ_BASE_URL=NO_GROQ, HARMONY_DATE=PINNED_DATE)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(harness.ROOT / "run.sh"), "serve", str(user_model), "--device", "cpu", "--",
             "--set", f"confdir={confdir}", "--set", f"log_file={tmp_path / 'flows.log'}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            start_new_session=True)
    try:
        health = wait_for_proxy(process, f"http://127.0.0.1:{proxy_port}/health", log, 300)
        assert health["transformers"]["reachable"] is True
        prepared = tmp_path / "gpt-oss-tiny-harmony"
        assert is_harmony_ready(prepared) and not is_harmony_ready(user_model)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="x",
                               max_retries=0, timeout=60)
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello."}])
        assert response.choices[0].message.content == ANSWER

        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 143, log.read_text()[-4000:]
        assert not port_open(server_port), "transformers serve still listens"
        assert not port_open(proxy_port), "the proxy still listens"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
