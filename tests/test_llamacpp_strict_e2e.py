"""Strict schemas on the real llama-server: every keyword of OpenAI's strict-mode list (numeric
bounds, exclusive bounds, multipleOf, pattern, each format, array lengths), json_schema
answers and strict tool calls, whole and streamed, Chat Completions and Responses, many seeds of
the random tiny model at temperature 1.0.

What is measured: every completed answer and every tool call's arguments validate (jsonschema
with its format checker); a reply that did not complete is one cut at the token limit
(``length`` / ``incomplete``), never a ``stop`` without the answer. At least three completed
per schema. Set-up as in test_llamacpp_e2e.py (the build and GGUF are cached).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from llamacpp import harness
from proxy_process import ProxyProcess
from strict_schemas import CHECKER, SCHEMAS
from test_llamacpp_e2e import llama_build, llamacpp_proxy  # noqa: F401 - the set-up fixture

pytestmark = pytest.mark.llamacpp

MODEL = "gpt-oss-20b"
SEEDS = range(4)
MAX_TOKENS = 300


@pytest.fixture(scope="module")
def proxy(llama_build: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory  # noqa: F811
          ) -> Iterator[ProxyProcess]:
    """The random model (``<|end|>`` favoured so that its messages end) behind the proxy."""
    binary, model = llama_build
    work = tmp_path_factory.mktemp("llama-strict")
    server = harness.LlamaServer(binary, model, work, context=1024,
                                 extra_args=["--logit-bias", "200007+12"])
    try:
        server.wait_healthy()
        process = llamacpp_proxy(work / "proxy", server.url)
        yield process
        process.stop()
    finally:
        server.stop()


def problem(text: str, schema: dict[str, Any]) -> str | None:
    try:
        jsonschema.validate(json.loads(text), schema, format_checker=CHECKER)
    except (ValueError, jsonschema.ValidationError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def chat_answer(client: openai.OpenAI, schema: dict[str, Any], seed: int, stream: bool
                ) -> tuple[str, str]:
    """``(finish_reason, content)``."""
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                  "strict": True}}
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Answer in JSON."}],
           "response_format": fmt, "seed": seed, "temperature": 1.0, "max_tokens": MAX_TOKENS}
    if not stream:
        reply = client.chat.completions.create(**ask)  # type: ignore[call-overload]
        return reply.choices[0].finish_reason, reply.choices[0].message.content or ""
    content, finish = "", ""
    for chunk in client.chat.completions.create(**ask, stream=True):  # type: ignore
        if chunk.choices:
            content += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return finish, content


def final_response(client: openai.OpenAI, ask: dict[str, Any], stream: bool) -> Any:
    """The Responses API's response, whole or the streamed one's last event's."""
    if not stream:
        return client.responses.create(**ask)
    response = None
    for event in client.responses.create(**ask, stream=True):
        if event.type in ("response.completed", "response.incomplete"):
            response = event.response
    assert response is not None
    return response


def responses_answer(client: openai.OpenAI, schema: dict[str, Any], seed: int, stream: bool
                     ) -> tuple[str, str]:
    """``(status, output_text)``."""
    ask = {"model": MODEL, "input": "Answer in JSON.", "temperature": 1.0,
           "max_output_tokens": MAX_TOKENS, "extra_body": {"seed": seed},
           "text": {"format": {"type": "json_schema", "name": "out", "schema": schema,
                               "strict": True}}}
    response = final_response(client, ask, stream)
    return response.status or "", response.output_text


def chat_call(client: openai.OpenAI, schema: dict[str, Any], seed: int, stream: bool
              ) -> tuple[str, str]:
    """``(finish_reason, arguments)`` of a forced strict call."""
    tool = {"type": "function", "function": {"name": "fill", "parameters": schema,
                                             "strict": True}}
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Fill it."}],
           "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "fill"}},
           "seed": seed, "temperature": 1.0, "max_tokens": MAX_TOKENS}
    if not stream:
        reply = client.chat.completions.create(**ask)  # type: ignore[call-overload]
        calls = reply.choices[0].message.tool_calls or []
        return reply.choices[0].finish_reason, calls[0].function.arguments if calls else ""
    arguments, finish = "", ""
    for chunk in client.chat.completions.create(**ask, stream=True):  # type: ignore
        if chunk.choices:
            for call in chunk.choices[0].delta.tool_calls or []:
                arguments += (call.function.arguments or "") if call.function else ""
            finish = chunk.choices[0].finish_reason or finish
    return finish, arguments


def responses_call(client: openai.OpenAI, schema: dict[str, Any], seed: int, stream: bool
                   ) -> tuple[str, str]:
    """``(status, arguments)`` of a forced strict call on the Responses API."""
    ask = {"model": MODEL, "input": "Fill it.", "temperature": 1.0,
           "max_output_tokens": MAX_TOKENS, "extra_body": {"seed": seed},
           "tools": [{"type": "function", "name": "fill", "parameters": schema,
                      "strict": True}],
           "tool_choice": {"type": "function", "name": "fill"}}
    response = final_response(client, ask, stream)
    calls = [item for item in response.output if item.type == "function_call"]
    return response.status or "", calls[0].arguments if calls else ""


COMPLETE = {"stop", "tool_calls", "completed"}
CUT = {"length", "incomplete"}
KINDS = {"answer": (chat_answer, responses_answer), "call": (chat_call, responses_call)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", SCHEMAS)
def test_every_completed_reply_is_valid(proxy: ProxyProcess, name: str, kind: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    schema = SCHEMAS[name]
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0,
                           timeout=400)  # a loaded 2-core machine: ~2 tokens/s under a grammar
    chat, responses = KINDS[kind]
    completed, cut, invalid = 0, 0, []
    for seed in SEEDS:
        ask = chat if seed % 2 == 0 else responses
        finish, text = ask(client, schema, seed, stream=seed % 4 >= 2)
        if finish in CUT:
            cut += 1
            continue
        assert finish in COMPLETE, (seed, finish, text)
        completed += 1
        why = problem(text, schema)
        if why is not None:
            invalid.append((seed, finish, text[:300], why))
    with capsys.disabled():
        print(f"\nllama.cpp strict {kind} {name}: {completed - len(invalid)}/{completed} "
              f"completed valid, {cut} cut at the token limit")
    assert invalid == []
    assert completed >= 3
