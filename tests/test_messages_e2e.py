"""Anthropic Messages end to end: the anthropic SDK → real mitmdump with the addon → fake
``transformers serve`` or fake Groq.

Each test checks both sides: what the model server or Groq received and what the client
parsed; every streamed body the SDK read is checked against the event grammar
(``anthropic_stream.check_stream``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from harmony_groq.encoding import harmony_encoding

from anthropic_stream import RecordingTransport, check_stream, frames
from fakes import DEFAULT_ANSWER, GROQ_KEY, FakeGroq, FakeTransformers, Scripted
from proxy_process import ProxyProcess
from test_render import GEN, call, developer, result, system, user

CLIENT_KEY = "sk-ant-client-key-should-not-leak-42"
BASH = {"name": "Bash", "description": "Run a shell command.", "input_schema": {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "properties": {"command": {"type": "string"}}, "required": ["command"],
    "additionalProperties": False}}
READ = {"name": "Read", "description": "Read a file.", "input_schema": {
    "type": "object", "properties": {"file_path": {"type": "string"}},
    "required": ["file_path"]}}
TOOLS_DEV = (
    "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
    "// Run a shell command.\ntype Bash = (_: {\ncommand: string,\n}) => any;\n\n"
    "} // namespace functions<|end|>")
THOUGHT_ANSWER = ("<|channel|>analysis<|message|>Simple arithmetic.<|end|><|start|>assistant"
                  "<|channel|>final<|message|>2 + 2 = 4.<|return|>")
BASH_CALL = ("<|channel|>analysis<|message|>Print the file.<|end|><|start|>assistant"
             "<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>"
             '{"command":"cat hello.txt"}<|call|>')


class Claude:
    """The anthropic SDK pointed at the proxy; keeps every raw response body it read."""

    def __init__(self, proxy: ProxyProcess, api_key: str = CLIENT_KEY) -> None:
        self.transport = RecordingTransport()
        self.client = anthropic.Anthropic(
            base_url=proxy.root_url, api_key=api_key, max_retries=0, timeout=20,
            http_client=httpx2.Client(transport=self.transport))

    def create(self, **kwargs: Any) -> Any:
        kwargs.setdefault("max_tokens", 1024)
        return self.client.messages.create(**kwargs)

    def stream(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """The SDK's final message and the checked raw stream's message."""
        kwargs.setdefault("max_tokens", 1024)
        with self.client.messages.stream(**kwargs) as stream:
            final = stream.get_final_message()
        return final, check_stream(self.transport.last())


@pytest.fixture()
def claude(proxy: ProxyProcess) -> Iterator[Claude]:
    wrapper = Claude(proxy)
    yield wrapper
    wrapper.client.close()


def blocks(message: Any) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in message.content]


def tokens(text: str) -> int:
    return len(harmony_encoding().encode(text, allowed_special="all"))


@pytest.mark.parametrize("stream", [False, True])
def test_plain_answer_with_thinking(claude: Claude, fake_transformers: FakeTransformers,
                                    stream: bool) -> None:
    fake_transformers.script(THOUGHT_ANSWER)
    request = {
        "model": "gpt-oss-20b",
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.abc;"},
                   {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "What is 2 + 2?"},
                     {"role": "system", "content": [{"type": "text", "text": "Today is Friday."}]}],
        "output_config": {"effort": "high"}, "thinking": {"type": "adaptive"},
        "extra_body": {"context_management": {"edits": [{"type": "clear_thinking_20251015",
                                                         "keep": "all"}]}},
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
    }
    if stream:
        message, raw = claude.stream(**request)
        assert {k: raw[k] for k in ("stop_reason", "usage")} == {
            "stop_reason": "end_turn", "usage": message.usage.model_dump(exclude_none=True)}
        assert raw["content"] == blocks(message)
    else:
        message = claude.create(**request)
    assert blocks(message) == [
        {"type": "thinking", "thinking": "Simple arithmetic.",
         "signature": blocks(message)[0]["signature"]},
        {"type": "text", "text": "2 + 2 = 4."}]
    assert blocks(message)[0]["signature"]
    assert (message.stop_reason, message.stop_sequence, message.model, message.role) == (
        "end_turn", None, "gpt-oss-20b", "assistant")
    prompt = system("high") + developer("# Instructions\n\nBe terse.\n\nToday is Friday.") \
        + user("What is 2 + 2?") + GEN
    assert fake_transformers.prompts == [prompt]
    assert message.usage.input_tokens == tokens(prompt)
    assert message.usage.output_tokens == tokens(THOUGHT_ANSWER.removesuffix("<|return|>"))


@pytest.mark.parametrize("stream", [False, True])
def test_bash_round_trip(claude: Claude, fake_transformers: FakeTransformers,
                         stream: bool) -> None:
    """The model asks for a tool, the client sends the turn back as the SDK gives it (thinking
    and signature included) with the result; the prompt pairs call and result."""
    fake_transformers.script(BASH_CALL, "<|channel|>final<|message|>It says hello.<|return|>")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Print hello.txt"}]
    send = claude.stream if stream else claude.create
    first = send(model="gpt-oss-20b", messages=messages, tools=[BASH])
    first = first[0] if stream else first
    assert first.stop_reason == "tool_use"
    thinking, tool_use = blocks(first)
    assert thinking["thinking"] == "Print the file."
    assert (tool_use["type"], tool_use["name"], tool_use["input"]) == (
        "tool_use", "Bash", {"command": "cat hello.txt"})
    messages += [{"role": "assistant", "content": blocks(first)},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": tool_use["id"],
                      "content": [{"type": "text", "text": "hello"}],
                      "cache_control": {"type": "ephemeral"}}]}]
    second = send(model="gpt-oss-20b", messages=messages, tools=[BASH])
    second = second[0] if stream else second
    assert (blocks(second), second.stop_reason) == (
        [{"type": "text", "text": "It says hello."}], "end_turn")
    start = system(tools=True) + TOOLS_DEV + user("Print hello.txt") + GEN
    assert fake_transformers.prompts == [
        start, start + "<|channel|>analysis<|message|>Print the file.<|end|>"
        + call("Bash", '{"command":"cat hello.txt"}') + result("Bash", "hello") + GEN]


def test_results_pair_with_calls_by_id_in_any_order(claude: Claude,
                                                    fake_transformers: FakeTransformers) -> None:
    """Claude Code returns parallel results in completion order; images in a tool result
    (its Read of a PNG) become a placeholder, so the session goes on."""
    fake_transformers.script("<|channel|>final<|message|>Both done.<|return|>")
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                       "data": "iVBORw0KGgo="}}
    answer = claude.create(model="gpt-oss-20b", tools=[BASH, READ], messages=[
        {"role": "user", "content": "Look at both."},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Read",
             "input": {"file_path": "a.png"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [png]},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.png",
             "is_error": False},
            {"type": "text", "text": "Go on."}]}])
    assert blocks(answer) == [{"type": "text", "text": "Both done."}]
    (prompt,) = fake_transformers.prompts
    assert prompt.endswith(
        call("Bash", '{"command":"ls"}') + result("Bash", "a.png")
        + call("Read", '{"file_path":"a.png"}')
        + result("Read", "[image/png of about 9 bytes omitted: the model cannot see images]")
        + user("Go on.") + GEN)


def test_user_image_is_refused_for_gpt_oss(claude: Claude,
                                           fake_transformers: FakeTransformers) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.create(model="gpt-oss-20b", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}]}])
    error = caught.value.body
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[1]: gpt-oss is text-only" in error["error"]["message"]
    assert fake_transformers.prompts == []


def test_tool_choice_effort_stop_and_max_tokens(claude: Claude,
                                                fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(
        '<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>{"command":"ls"}'
        "<|call|>",
        "<|channel|>final<|message|>one two STOP three<|return|>",
        "<|channel|>final<|message|>" + "word " * 50 + "<|return|>")
    forced = claude.create(model="gpt-oss-20b", tools=[BASH],
                           tool_choice={"type": "tool", "name": "Bash"},
                           thinking={"type": "enabled", "budget_tokens": 2000},
                           messages=[{"role": "user", "content": "list"}])
    assert forced.stop_reason == "tool_use"
    assert fake_transformers.prompts[0].endswith(
        "<|start|>assistant<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>")
    assert "Reasoning: low" in fake_transformers.prompts[0]
    stopped = claude.create(model="gpt-oss-20b", stop_sequences=["STOP"],
                            messages=[{"role": "user", "content": "count"}])
    assert (blocks(stopped), stopped.stop_reason, stopped.stop_sequence) == (
        [{"type": "text", "text": "one two "}], "stop_sequence", "STOP")
    cut = claude.create(model="gpt-oss-20b", max_tokens=10,
                        messages=[{"role": "user", "content": "talk"}])
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 10
    assert json.loads(fake_transformers.requests[-1]["raw"])["max_tokens"] == 10


def test_count_tokens_is_the_prompt_the_model_gets(claude: Claude,
                                                   fake_transformers: FakeTransformers) -> None:
    request = {"model": "gpt-oss-20b", "system": "Be terse.", "tools": [BASH],
               "messages": [{"role": "user", "content": "Print hello.txt"}]}
    counted = claude.client.messages.count_tokens(**request)
    claude.create(**request)
    assert counted.input_tokens == tokens(fake_transformers.prompts[-1])
    # For a Groq model, an estimate: the same o200k count of the same conversation, with user
    # images as placeholders (for gpt-oss they are a 400).
    groq = {**request, "model": "llama-3.3-70b-versatile"}
    assert claude.client.messages.count_tokens(**groq).input_tokens == counted.input_tokens
    seeing = [{"role": "user", "content": [
        {"type": "text", "text": "Print hello.txt"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}}]}]
    estimate = claude.client.messages.count_tokens(**{**groq, "messages": seeing})
    assert estimate.input_tokens > counted.input_tokens
    with pytest.raises(anthropic.BadRequestError):
        claude.client.messages.count_tokens(**{**request, "messages": seeing})


@pytest.mark.parametrize("stream", [False, True])
def test_groq_route(claude: Claude, fake_groq: FakeGroq, stream: bool) -> None:
    long_name = "mcp__filesystem_server__" + "read_a_very_long_file_name_" * 2
    tool = {"name": long_name, "description": "MCP tool.", "input_schema": {
        "type": "object", "properties": {"reason": {"type": "string"}}}}
    request = {"model": "llama-3.3-70b-versatile", "system": "Be terse.", "tools": [tool],
               "tool_choice": {"type": "any"}, "output_config": {"effort": "high"},
               "messages": [{"role": "user", "content": "hi"}]}
    message = claude.stream(**request)[0] if stream else claude.create(**request)
    ((_, tool_use),) = [(b["type"], b) for b in blocks(message)]
    assert (tool_use["name"], tool_use["input"], message.stop_reason) == (
        long_name, {"reason": "required"}, "tool_use")
    sent = fake_groq.requests[-1]
    body = json.loads(sent["raw"])
    (groq_tool,) = body["tools"]
    assert len(groq_tool["function"]["name"]) == 64 and body["tool_choice"] == "required"
    assert body["messages"] == [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": "hi"}]
    assert "reasoning_effort" not in body  # llama would answer 400
    headers = {name.lower(): value for name, value in sent["headers"].items()}
    assert headers["authorization"] == f"Bearer {GROQ_KEY}" and "x-api-key" not in headers
    assert CLIENT_KEY not in json.dumps(sent["headers"])
    assert (body.get("stream_options") == {"include_usage": True}) is stream


@pytest.mark.parametrize("stream", [False, True])
def test_groq_reasoning_model_text(claude: Claude, fake_groq: FakeGroq, stream: bool) -> None:
    request = {"model": "groq/openai/gpt-oss-20b", "output_config": {"effort": "max"},
               "messages": [{"role": "user", "content": "hi there"}]}
    message = claude.stream(**request)[0] if stream else claude.create(**request)
    assert [(b["type"], b.get("thinking") or b.get("text")) for b in blocks(message)] == [
        ("thinking", "Thinking it over."), ("text", "groq says: hi there" + " " * stream)]
    assert (message.model, message.stop_reason, message.usage.input_tokens) == (
        "groq/openai/gpt-oss-20b", "end_turn", 12)
    body = json.loads(fake_groq.requests[-1]["raw"])
    assert (body["model"], body["reasoning_effort"]) == ("openai/gpt-oss-20b", "high")


def test_groq_rate_limit_keeps_status_and_retry_after(claude: Claude,
                                                      fake_groq: FakeGroq) -> None:
    fake_groq.next_status.append((429, {"retry-after": "7"}))
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.create(model="llama-3.3-70b-versatile",
                      messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "scripted 429"}}


def test_backend_error_mid_stream_is_an_error_event(claude: Claude,
                                                    fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(Scripted(THOUGHT_ANSWER, error_after=4))
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.stream(model="gpt-oss-20b", messages=[{"role": "user", "content": "hi"}])
    assert "CUDA out of memory" in str(caught.value)
    ended = check_stream(claude.transport.last())
    assert ended["error"]["type"] == "api_error"
    assert ended["content"][0]["type"] == "thinking"


def test_pings_while_a_long_prompt_is_prefilled(start_proxy,
                                                fake_transformers: FakeTransformers) -> None:
    """The model server sends nothing until its first token; the client gets message_start
    and pings meanwhile instead of silence."""
    proxy = start_proxy({"keepalive_seconds": "1"})
    fake_transformers.script(Scripted(DEFAULT_ANSWER, prefill=3))
    arrivals: list[tuple[float, bytes]] = []
    with httpx.stream("POST", f"{proxy.root_url}/v1/messages", timeout=20, json={
            "model": "gpt-oss-20b", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}) as response:
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    raw = b"".join(chunk for _, chunk in arrivals)
    assert check_stream(raw)["content"][1] == {"type": "text", "text": "Hello!"}
    kinds = [kind for kind, _ in frames(raw)]
    first_block = kinds.index("content_block_start")
    assert kinds[0] == "message_start" and "ping" in kinds[1:first_block]
    started = next(at for at, chunk in arrivals if b"message_start" in chunk)
    first_token = next(at for at, chunk in arrivals if b"content_block_start" in chunk)
    assert first_token - started > 1


def test_claude_names_need_the_map(claude: Claude, fake_groq: FakeGroq,
                                   start_proxy, fake_transformers: FakeTransformers) -> None:
    """Unmapped, a Claude alias is a 400 naming the setting (Claude Code prints a 400's
    message at once); mapped, it is served by the proxy model."""
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.create(model="claude-haiku-5-5", messages=[{"role": "user", "content": "hi"}])
    assert "CLAUDE_MODEL_MAP" in caught.value.message
    assert fake_groq.requests == []
    proxy = start_proxy({"claude_model_map": "claude-*haiku*=gpt-oss-20b,claude-*=groq/x"})
    mapped = Claude(proxy)
    answer = mapped.create(model="claude-haiku-5-5", messages=[{"role": "user", "content": "hi"}])
    assert (answer.model, blocks(answer)[-1]["text"]) == ("gpt-oss-20b", "Hello!")
    assert len(fake_transformers.prompts) == 1


def test_errors_in_anthropic_shape_with_statuses_for_claude_code(
        proxy: ProxyProcess, start_proxy, fake_transformers: FakeTransformers) -> None:
    url = f"{proxy.root_url}/v1/messages?beta=true"
    bad = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert bad.json()["type"] == "error"
    wrong_role = httpx.post(url, json={"model": "gpt-oss-20b", "max_tokens": 5,
                                       "messages": [{"role": "tool", "content": "x"}]})
    assert wrong_role.status_code == 400 and "messages[0]" in wrong_role.json()["error"][
        "message"]
    method = httpx.get(url)
    assert (method.status_code, method.json()["error"]["type"]) == (405,
                                                                    "invalid_request_error")
    keyed = start_proxy(env={"PROXY_API_KEY": "right-key"})
    for headers in ({"x-api-key": "right-key"}, {"authorization": "Bearer right-key"}):
        fine = httpx.post(f"{keyed.root_url}/v1/messages", headers=headers, json={
            "model": "gpt-oss-20b", "max_tokens": 5, "messages": [{"role": "user",
                                                                   "content": "hi"}]})
        assert fine.status_code == 200, fine.text
    # A wrong key: 401 with x-should-retry false, which Claude Code honours (fails at once).
    wrong = httpx.post(f"{keyed.root_url}/v1/messages", headers={"x-api-key": "wrong"},
                       json={"model": "gpt-oss-20b", "messages": []})
    assert (wrong.status_code, wrong.json()["error"]["type"],
            wrong.headers["x-should-retry"]) == (401, "authentication_error", "false")
    # No Groq key: a fault no retry fixes is a 400 (a 5xx spins Claude Code for minutes).
    no_groq = httpx.post(f"{proxy.root_url}/v1/messages", json={
        "model": "llama-3.3-70b-versatile", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]})
    assert no_groq.status_code == 200  # the session proxy has a key; the one below has none
    keyless = start_proxy()
    missing = httpx.post(f"{keyless.root_url}/v1/messages", json={
        "model": "llama-3.3-70b-versatile", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]})
    assert (missing.status_code, missing.json()["error"]["type"]) == (
        400, "invalid_request_error")
    assert "GROQ_API_KEY" in missing.json()["error"]["message"]
    # The model server down: transient, so a 5xx Claude Code retries with backoff.
    down = start_proxy({"transformers_url": "http://127.0.0.1:9"})
    for stream in (False, True):
        gone = httpx.post(f"{down.root_url}/v1/messages", json={
            "model": "gpt-oss-20b", "max_tokens": 5, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]})
        assert (gone.status_code, gone.json()["error"]["type"]) == (503, "overloaded_error")


def test_models_in_anthropic_shape_when_asked(claude: Claude, proxy: ProxyProcess,
                                              fake_groq: FakeGroq) -> None:
    page = claude.client.models.list()
    ids = [model.id for model in page.data]
    assert ids == ["gpt-oss-20b", "gpt-oss-120b", "llama-3.3-70b-versatile",
                   "groq/openai/gpt-oss-20b"]
    assert page.data[2].created_at.year == 2024 and page.data[0].type == "model"
    openai_shape = httpx.get(f"{proxy.base_url}/models").json()
    assert openai_shape["object"] == "list" and openai_shape["data"][0]["object"] == "model"


def test_flow_log_and_view(proxy: ProxyProcess, claude: Claude,
                           fake_transformers: FakeTransformers) -> None:
    before = proxy.log_mark()
    claude.stream(model="gpt-oss-20b", messages=[{"role": "user", "content": "hi"}])
    record = proxy.log_records(wait_for=before + 1)[-1]
    assert (record["dialect"], record["route"], record["status"]) == ("messages", "gpt-oss",
                                                                      200)
    assert record["path"] == "/v1/messages"
    assert record["prompt"] == fake_transformers.prompts[-1]
    assert record["client_response"]["message"] == {
        "role": "assistant", "content": "Hello!", "thinking": "User says hi."}
    assert record["usage"]["prompt_tokens"] == tokens(record["prompt"])
    assert CLIENT_KEY not in json.dumps(record)
