"""The Responses API end to end: the openai SDK and httpx → real mitmdump → fake
``transformers serve`` (gpt-oss) or fake Groq. Each test checks the prompt the model server got
and what the client parsed; every stream is checked against the event grammar."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from proxy_process import ProxyProcess
from responses_grammar import check_grammar, parse_sse

THINK_AND_ANSWER = ("<|channel|>analysis<|message|>Simple arithmetic.<|end|><|start|>assistant"
                    "<|channel|>final<|message|>2 + 2 = 4.<|return|>")
SHELL = {"type": "function", "name": "exec_command", "description": "Run a shell command.",
         "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                        "required": ["cmd"]}}
APPLY_PATCH = {"type": "custom", "name": "apply_patch",
               "description": "Use the apply_patch tool to edit files.",
               "format": {"type": "grammar", "syntax": "lark",
                          "definition": 'start: "*** Begin Patch" LF "*** End Patch"'}}
NAMESPACE = {"type": "namespace", "name": "mcp__files__", "description": "File server.",
             "tools": [{"type": "function", "name": "read", "description": "Read a file.",
                        "parameters": {"type": "object",
                                       "properties": {"path": {"type": "string"}}}}]}
CALL_SHELL = ("<|channel|>analysis<|message|>List the files first.<|end|><|start|>assistant"
              "<|channel|>commentary to=functions.exec_command <|constrain|>json<|message|>"
              '{"cmd":"ls"}<|call|>')
PATCH = "*** Begin Patch\n*** Add File: a.txt\n+hello \"world\"\n*** End Patch\n"


def raw_stream(proxy: ProxyProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{proxy.base_url}/responses", json={**body, "stream": True},
                          headers={"authorization": "Bearer sk-client"}, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.content)


def last_prompt(fake: FakeTransformers) -> str:
    return fake.prompts[-1]


@pytest.mark.parametrize("stream", [False, True])
def test_plain_answer_with_reasoning(client: openai.OpenAI, proxy: ProxyProcess,
                                     fake_transformers: FakeTransformers, stream: bool) -> None:
    fake_transformers.script(THINK_AND_ANSWER)
    body = {"model": "gpt-oss-20b", "instructions": "Be terse.", "input": "What is 2 + 2?",
            "reasoning": {"effort": "high", "summary": "auto"}, "store": False,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "abc",
            "service_tier": "auto", "metadata": {"session": "1"}}
    if stream:
        final = check_grammar(raw_stream(proxy, body))
    else:
        final = client.responses.create(**body).model_dump()
    assert final["status"] == "completed" and final["id"].startswith("resp_")
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Simple arithmetic."}]
    assert message["type"] == "message" and message["content"][0]["text"] == "2 + 2 = 4."
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    prompt = last_prompt(fake_transformers)
    assert "Reasoning: high" in prompt
    assert "<|start|>developer<|message|># Instructions\n\nBe terse.<|end|>" in prompt
    assert prompt.endswith("<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant")


def test_sdk_stream_helper(client: openai.OpenAI, fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(THINK_AND_ANSWER)
    with client.responses.stream(model="gpt-oss-20b", input="What is 2 + 2?") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "2 + 2 = 4." == final.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_round_trip(client: openai.OpenAI, proxy: ProxyProcess,
                                  fake_transformers: FakeTransformers, stream: bool) -> None:
    fake_transformers.script(CALL_SHELL, "<|channel|>final<|message|>Two files.<|return|>")
    body = {"model": "gpt-oss-20b", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                          "text": "What is here?"}]}],
        "tools": [SHELL, {"type": "web_search"}], "tool_choice": "auto",
        "parallel_tool_calls": False, "store": False}
    final = check_grammar(raw_stream(proxy, body)) if stream else (
        client.responses.create(**body).model_dump())
    reasoning, call = final["output"]
    assert call["type"] == "function_call" and call["name"] == "exec_command"
    assert call["arguments"] == '{"cmd":"ls"}' and call["call_id"].startswith("call_")
    assert "namespace functions" in last_prompt(fake_transformers)
    assert "web_search" not in last_prompt(fake_transformers)
    # Codex's next turn: the whole history, reasoning echoed with its content.
    history = body["input"] + [
        {"type": "reasoning", "summary": [], "content": reasoning["content"],
         "encrypted_content": None},
        {"type": "function_call", "name": "exec_command", "arguments": call["arguments"],
         "call_id": call["call_id"]},
        {"type": "function_call_output", "call_id": call["call_id"],
         "output": [{"type": "input_text", "text": "a.txt\nb.txt"}]}]
    second = client.responses.create(**{**body, "input": history})
    assert second.output_text == "Two files."
    assert last_prompt(fake_transformers).endswith(
        "<|start|>assistant<|channel|>analysis<|message|>List the files first.<|end|>"
        "<|start|>assistant to=functions.exec_command<|channel|>commentary json<|message|>"
        '{"cmd":"ls"}<|call|><|start|>functions.exec_command to=assistant<|channel|>commentary'
        "<|message|>a.txt\nb.txt<|end|><|start|>assistant")


def test_reasoning_dropped_once_the_chain_closed(client: openai.OpenAI,
                                                 fake_transformers: FakeTransformers) -> None:
    history = [
        {"role": "user", "content": "first"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "OLD THOUGHT"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "first answer"}]},
        {"role": "user", "content": "second"}]
    client.responses.create(model="gpt-oss-20b", input=history, store=False)
    prompt = last_prompt(fake_transformers)
    assert "OLD THOUGHT" not in prompt and "first answer" in prompt


def test_custom_and_namespace_tools(client: openai.OpenAI, proxy: ProxyProcess,
                                    fake_transformers: FakeTransformers) -> None:
    patch_args = json.dumps({"input": PATCH})
    fake_transformers.script(
        "<|channel|>commentary to=functions.apply_patch <|constrain|>json<|message|>"
        f"{patch_args}<|call|>",
        "<|channel|>commentary to=functions.mcp__files____read <|constrain|>json<|message|>"
        '{"path":"a.txt"}<|call|>')
    body = {"model": "gpt-oss-20b", "input": "Edit.", "tools": [APPLY_PATCH, NAMESPACE],
            "store": False}
    final = check_grammar(raw_stream(proxy, body))
    (patch,) = final["output"]
    assert patch["type"] == "custom_tool_call" and patch["name"] == "apply_patch"
    assert patch["input"] == PATCH  # the raw text, never JSON-wrapped
    prompt = last_prompt(fake_transformers)
    assert "type apply_patch = (_: {\n// The raw text input" in prompt
    assert "*** Begin Patch" in prompt  # the grammar travels in the description
    assert "type mcp__files____read" in prompt
    read = client.responses.create(**body).output[0]
    assert (read.type, read.name, read.model_dump()["namespace"]) == (
        "function_call", "read", "mcp__files__")
    # Both come back as history: rendered as the function calls the model made.
    client.responses.create(**{**body, "input": [
        {"role": "user", "content": "Edit."},
        {"type": "custom_tool_call", "call_id": patch["call_id"], "name": "apply_patch",
         "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": patch["call_id"], "output": "Done!"},
        {"type": "function_call", "call_id": read.call_id, "name": "read",
         "namespace": "mcp__files__", "arguments": '{"path":"a.txt"}'},
        {"type": "function_call_output", "call_id": read.call_id, "output": "hello"}]})
    prompt = last_prompt(fake_transformers)
    assert (f"to=functions.apply_patch<|channel|>commentary json<|message|>{patch_args}<|call|>"
            "<|start|>functions.apply_patch to=assistant<|channel|>commentary<|message|>Done!"
            in prompt)
    assert "<|start|>functions.mcp__files____read to=assistant<|channel|>commentary" in prompt


def test_store_chain_get_and_delete(client: openai.OpenAI, proxy: ProxyProcess,
                                    fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(THINK_AND_ANSWER, "<|channel|>final<|message|>Eight.<|return|>")
    first = client.responses.create(model="gpt-oss-20b", input="What is 2 + 2?")
    second = client.responses.create(model="gpt-oss-20b", input="Double it.",
                                     previous_response_id=first.id)
    assert second.output_text == "Eight." and second.previous_response_id == first.id
    prompt = last_prompt(fake_transformers)
    assert ("<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant<|channel|>final"
            "<|message|>2 + 2 = 4.<|end|><|start|>user<|message|>Double it.<|end|>") in prompt
    assert client.responses.retrieve(first.id).output_text == "2 + 2 = 4."
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="gpt-oss-20b", input="again",
                                previous_response_id=first.id)
    assert error.value.body["param"] == "previous_response_id"
    unstored = client.responses.create(model="gpt-oss-20b", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_max_output_tokens_is_incomplete(client: openai.OpenAI, proxy: ProxyProcess,
                                         fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(THINK_AND_ANSWER)
    whole = client.responses.create(model="gpt-oss-20b", input="hi", max_output_tokens=3,
                                    store=False)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == (
        "max_output_tokens")
    fake_transformers.script(THINK_AND_ANSWER)
    events = raw_stream(proxy, {"model": "gpt-oss-20b", "input": "hi", "max_output_tokens": 3})
    assert events[-1]["type"] == "response.incomplete"
    assert check_grammar(events)["status"] == "incomplete"


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({"input": "hi"}, "model", "'model' is required"),
    ({"model": "gpt-oss-20b"}, "input", "'input' is required"),
    ({"model": "gpt-oss-20b", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]},
     "input[0]", "text-only"),
    ({"model": "gpt-oss-20b", "input": [{"type": "function_call_output", "call_id": "call_x",
                                         "output": "1"}]}, "input[0]", "call_x"),
    ({"model": "gpt-oss-20b", "input": [{"type": "item_reference", "id": "msg_1"}]},
     "input[0]", "item references"),
    ({"model": "gpt-oss-20b", "input": [{"type": "bogus"}]}, "input[0]", "bogus"),
    ({"model": "gpt-oss-20b", "input": "hi", "reasoning": {"effort": "extreme"}},
     "reasoning_effort", "extreme"),
    ({"model": "gpt-oss-20b", "input": "hi", "previous_response_id": "resp_nope"},
     "previous_response_id", "resp_nope"),
])
def test_bad_requests(proxy: ProxyProcess, body: dict[str, Any], param: str,
                      fragment: str) -> None:
    response = httpx.post(f"{proxy.base_url}/responses", json=body, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_response_item_methods(proxy: ProxyProcess) -> None:
    response = httpx.put(f"{proxy.base_url}/responses/resp_1", timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "GET, DELETE"
    assert httpx.get(f"{proxy.base_url}/responses/resp_unknown",
                     timeout=10).json()["error"]["code"] == "response_not_found"


def test_backend_failure_mid_stream_is_response_failed(proxy: ProxyProcess,
                                                       fake_transformers: FakeTransformers
                                                       ) -> None:
    from fakes import Scripted
    fake_transformers.script(Scripted(THINK_AND_ANSWER, error_after=4))
    events = raw_stream(proxy, {"model": "gpt-oss-20b", "input": "hi"})
    final = check_grammar(events)
    assert final["status"] == "failed" and "CUDA out of memory" in final["error"]["message"]


def test_codex_model_catalog(proxy: ProxyProcess) -> None:
    catalog = httpx.get(f"{proxy.base_url}/models?client_version=0.171.0", timeout=10).json()
    slugs = {m["slug"]: m for m in catalog["models"]}
    assert set(slugs) == {"gpt-oss-20b", "gpt-oss-120b"}
    assert slugs["gpt-oss-20b"]["apply_patch_tool_type"] == "freeform"
    assert slugs["gpt-oss-20b"]["context_window"] == 131072
    plain = httpx.get(f"{proxy.base_url}/models", timeout=10).json()
    assert plain["object"] == "list"


# -- Groq ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_groq_responses_passthrough_sanitised(proxy: ProxyProcess, fake_groq: FakeGroq,
                                              stream: bool) -> None:
    body = {"model": "llama-3.3-70b-versatile", "store": False, "stream": stream,
            "instructions": "Be brief.", "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "k", "reasoning": {"effort": "xhigh", "summary": "auto"},
            "text": {"verbosity": "low"}, "tools": [SHELL, {"type": "image_generation"}],
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
                      {"type": "message", "role": "assistant",
                       "content": [{"type": "output_text", "text": "hi"}]},
                      {"role": "user", "content": "again"}]}
    response = httpx.post(f"{proxy.base_url}/responses", json=body, timeout=10,
                          headers={"authorization": "Bearer sk-client"})
    assert response.status_code == 200, response.text
    final = parse_sse(response.content)[-1]["response"] if stream else response.json()
    assert final["output"][0]["content"][0]["text"] == "groq responses says: again"
    sent = fake_groq.requests[-1]
    assert sent["path"] == "/openai/v1/responses"
    assert sent["headers"]["authorization"] == f"Bearer {GROQ_KEY}"
    upstream = json.loads(sent["raw"])
    assert upstream["reasoning"] == {"effort": "high"}
    assert not {"include", "prompt_cache_key", "text"} & set(upstream)
    assert [t["type"] for t in upstream["tools"]] == ["function"]


@pytest.mark.parametrize("stream", [False, True])
def test_groq_through_chat_when_responses_cannot_take_it(
        client: openai.OpenAI, proxy: ProxyProcess, fake_groq: FakeGroq, stream: bool) -> None:
    body = {"model": "llama-3.3-70b-versatile", "tools": [APPLY_PATCH],
            "input": [{"type": "reasoning", "summary": [], "content": [
                {"type": "reasoning_text", "text": "thought"}]},
                {"role": "user", "content": 'call apply_patch {"input":"*** Begin Patch"}'}]}
    if stream:
        final = check_grammar(raw_stream(proxy, body))
    else:
        final = client.responses.create(**body).model_dump()
    (call,) = final["output"]
    assert call == {**call, "type": "custom_tool_call", "name": "apply_patch",
                    "input": "*** Begin Patch"}
    upstream = json.loads(fake_groq.requests[-1]["raw"])
    assert fake_groq.requests[-1]["path"] == "/openai/v1/chat/completions"
    assert upstream["tools"][0]["function"]["name"] == "apply_patch"
    assert "reasoning" not in json.dumps(upstream["messages"])
    # Stored (the default): the next turn chains by id through the chat route too.
    second = client.responses.create(model="llama-3.3-70b-versatile", input="thanks",
                                     previous_response_id=final["id"])
    assert second.output_text == "groq says: thanks"


def test_groq_errors_pass_through(client: openai.OpenAI, fake_groq: FakeGroq) -> None:
    fake_groq.next_status.append((429, {"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as error:
        client.responses.create(model="llama-3.3-70b-versatile", input="hi", store=False)
    assert error.value.response.headers["retry-after"] == "7"
    fake_groq.next_status.append((429, {"retry-after": "9"}))
    with pytest.raises(openai.RateLimitError) as error:
        client.responses.create(model="llama-3.3-70b-versatile", input="hi")  # via chat
    assert error.value.response.headers["retry-after"] == "9"
    assert error.value.body["code"] == "rate_limit_exceeded"


def test_created_at_once_and_heartbeats_while_prefilling(
        start_proxy, fake_transformers: FakeTransformers) -> None:
    """Codex gives up after 300 s without an event; a long prefill sends none upstream."""
    from fakes import Scripted
    proxy = start_proxy({"keepalive_seconds": "1"})
    fake_transformers.script(Scripted(THINK_AND_ANSWER, prefill=2.6))
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    with httpx.stream("POST", f"{proxy.base_url}/responses", timeout=20, json={
            "model": "gpt-oss-20b", "input": "hi", "stream": True}) as response:
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    events = parse_sse(b"".join(chunk for _, chunk in arrivals))
    check_grammar(events)
    first_token = next(n for n, e in enumerate(events) if e["type"].endswith(".delta"))
    heartbeats = [e for e in events[2:first_token] if e["type"] == "response.in_progress"]
    assert len(heartbeats) >= 2, [e["type"] for e in events]
    created_at = next(t for t, chunk in arrivals if b"response.created" in chunk)
    assert created_at < 1.0  # long before the 2.6 s prefill ended


def test_reasoning_restored_for_a_function_call_without_its_reasoning_item(
        client: openai.OpenAI, proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    """A Responses client that drops the reasoning item gets the prompt of one that keeps it."""
    body = {"model": "gpt-oss-20b", "tools": [SHELL], "store": False}
    prompts = []
    for keep_reasoning in (True, False):
        fake_transformers.script(CALL_SHELL, "<|channel|>final<|message|>Done.<|return|>")
        first = client.responses.create(**body, input="What is here?")
        reasoning, call = (item.model_dump(exclude_none=True) for item in first.output)
        history = [{"role": "user", "content": "What is here?"},
                   *([reasoning] if keep_reasoning else []), call,
                   {"type": "function_call_output", "call_id": call["call_id"], "output": "a"}]
        client.responses.create(**body, input=history)
        prompts.append(last_prompt(fake_transformers))
    assert prompts[0] == prompts[1] and "List the files first." in prompts[1]
    assert proxy.last_record("restored_reasoning")["restored_reasoning"]


def test_groq_refusing_the_server_key_is_not_the_clients_fault(client: openai.OpenAI,
                                                               fake_groq: FakeGroq) -> None:
    """A translated reply: Groq's 401 means the proxy's GROQ_API_KEY, so the client gets a
    502 naming it, not a 401 that would make it ask its user for a new key."""
    fake_groq.next_status.append((401, {}))
    with pytest.raises(openai.InternalServerError) as error:
        client.responses.create(model="llama-3.3-70b-versatile", input="hi")  # via chat
    assert error.value.status_code == 502
    assert error.value.body["code"] == "groq_key_rejected"
    assert "GROQ_API_KEY" in error.value.body["message"]


def test_images_go_to_groq_vision_models_and_not_to_gpt_oss(
        client: openai.OpenAI, proxy: ProxyProcess, fake_groq: FakeGroq) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    content = [{"type": "input_text", "text": "What is this?"},
               {"type": "input_image", "image_url": image}]
    client.responses.create(model="meta-llama/llama-4-scout-17b-16e-instruct", store=False,
                            input=[{"role": "user", "content": content}])
    sent = json.loads(fake_groq.requests[-1]["raw"])
    assert fake_groq.requests[-1]["path"] == "/openai/v1/chat/completions"
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": image}}]}]
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model="gpt-oss-20b", input=[{"role": "user",
                                                              "content": content}])
    assert error.value.body["code"] == "unsupported_content_type"
