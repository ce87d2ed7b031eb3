"""The Messages dialect in-process: request → chat form (and the harmony prompt it renders),
the reply writer whole and streamed (grammar, equality with the whole reply, every split
point), errors and statuses, Groq-safe tool names, the model map and the model list."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mitmproxy import exceptions

from harmony_groq.backends import TransformersBackend
from harmony_groq.chat_request import parse_chat_request
from harmony_groq.dialects.messages import MessagesDialect, anthropic_models
from harmony_groq.dialects.messages_reply import PING, MessagesReply, error_body, error_status
from harmony_groq.dialects.messages_request import chat_body, resolve_model
from harmony_groq.errors import ProxyError
from harmony_groq.groq import groq_tool_names
from harmony_groq.render import render_prompt
from harmony_groq.settings import build_config
from harmony_groq.translate import HarmonyExchange, translate_completion

from anthropic_stream import check_stream, frames
from fakes import token_pieces
from test_proxy_units import _values
from test_streaming import CASES, DATE, Run, backend_stream, boundary_splits, whole_output

MAP = (("claude-*haiku*", "gpt-oss-20b"), ("claude-*", "groq/llama-3.3-70b-versatile"))
CONFIG = build_config(_values(claude_model_map="claude-*haiku*=gpt-oss-20b,"
                              "claude-*=groq/llama-3.3-70b-versatile"), {})
DIALECT = MessagesDialect()
TOOL = {"name": "Bash", "description": "Run.", "input_schema": {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "properties": {"command": {"type": "string"}}, "required": ["command"]}}


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-oss-20b", "max_tokens": 100, "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def messages_of(request: dict[str, Any], images: str = "refuse") -> list[dict[str, Any]]:
    return chat_body(request, "gpt-oss-20b", images)["messages"]  # type: ignore[arg-type]


def error_of(request: dict[str, Any]) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        DIALECT.conversation(request, CONFIG)
    assert caught.value.status == 400
    return caught.value


# -- request → chat form ------------------------------------------------------------------------

def test_system_blocks_billing_line_and_system_messages_merge_in_order() -> None:
    request = body(user("hi"), {"role": "system", "content": "env: linux"},
                   system=[{"type": "text", "text": "x-anthropic-billing-header: cc=1;"},
                           {"type": "text", "text": "Be terse.",
                            "cache_control": {"type": "ephemeral"}}])
    assert messages_of(request) == [
        {"role": "system", "content": "Be terse.\n\nenv: linux"},
        {"role": "user", "content": "hi"}]
    assert messages_of(body(user("hi"), system="Plain.")) == [
        {"role": "system", "content": "Plain."}, {"role": "user", "content": "hi"}]
    assert "system[0] must be a text block" in error_of(
        body(user("hi"), system=[{"type": "image"}])).message


def test_turns_tool_results_thinking_and_calls() -> None:
    request = body(
        user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        assistant([{"type": "thinking", "thinking": "plan", "signature": "foreign"},
                   {"type": "redacted_thinking", "data": "x"},
                   {"type": "text", "text": "Running."},
                   {"type": "tool_use", "id": "t1", "name": "Bash",
                    "input": {"command": "ls -l", "note": "é"}}]),
        user([{"type": "tool_result", "tool_use_id": "t1", "content": [
                  {"type": "text", "text": "x"}, {"type": "text", "text": "y"},
                  {"type": "tool_reference", "tool_name": "Z"}]},
              {"type": "text", "text": "and?"}]))
    assert messages_of(request) == [
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "Running.", "reasoning": "plan", "tool_calls": [
            {"id": "t1", "type": "function", "function": {
                "name": "Bash", "arguments": '{"command":"ls -l","note":"é"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "x\ny\n[tool_reference block omitted]"},
        {"role": "user", "content": "and?"}]


def test_images_refused_passed_or_described_and_placeholders_in_tool_results() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                         "data": "A" * 400}}
    request = body(user([{"type": "text", "text": "see"}, image]))
    error = error_of(request)
    assert (error.param, error.code) == ("messages[0].content[1]", "unsupported_content_type")
    assert messages_of(request, "pass")[0]["content"][1] == {
        "type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "A" * 400}}
    placeholder = "[image/jpeg of about 300 bytes omitted: the model cannot see images]"
    assert messages_of(request, "placeholder") == [{"role": "user",
                                                    "content": f"see\n{placeholder}"}]
    in_result = body(assistant([{"type": "tool_use", "id": "t", "name": "Read", "input": {}}]),
                     user([{"type": "tool_result", "tool_use_id": "t", "content": [image]}]))
    assert messages_of(in_result)[-1] == {"role": "tool", "tool_call_id": "t",
                                          "content": placeholder}


@pytest.mark.parametrize(("request_body", "message"), [
    (body(user([{"type": "document", "source": {}}])), "type 'document' is not supported"),
    (body(assistant([{"type": "server_tool_use"}])), "needs an 'id' and a 'name'"),
    (body(assistant([{"type": "web_search_tool_result", "tool_use_id": "srvtoolu_x"}])),
     "must follow its server_tool_use"),
    (body(assistant([{"type": "mystery_block"}])), "not supported in an assistant message"),
    (body(user([{"type": "tool_result"}])), "needs a 'tool_use_id'"),
    (body(user([{"text": "no type"}])), "must be an object with a 'type'"),
    (body(user({"type": "text"})), "must be a string or an array of blocks"),
    (body(user([{"type": "text", "text": 5}])), "needs a string 'text'"),
    (body(assistant([{"type": "tool_use", "name": "x"}])), "needs an 'id' and a 'name'"),
    (body({"role": "tool", "content": "x"}), "'role' is user, assistant or system"),
    (body(), "'messages' is required"),
    ({"messages": [user("hi")]}, "'model' is required"),
    (body(user("hi"), tools=[{"name": "computer", "type": "computer_20250124"}]),
     "server tool 'computer_20250124'"),
    (body(user("hi"), tools=[{"name": "web_search", "type": "web_search_20250305",
                              "allowed_domains": ["a.com"], "blocked_domains": ["b.com"]}]),
     "cannot both be set"),
    (body(user("hi"), tools={"name": "x"}), "'tools' must be an array"),
    (body(user("hi"), tools=[TOOL], tool_choice={"type": "tool", "name": "Nope"}),
     "names a tool that is not in 'tools'"),
    (body(user("hi"), tools=[TOOL], tool_choice="auto"), "an object with a 'type'"),
    (body(user("hi"), output_config={"effort": "extreme"}), "output_config.effort"),
    (body(user("hi"), stop_sequences="END"), "'stop_sequences' must be an array"),
    (body(user("hi"), max_tokens="lots"), "'max_tokens' must be an integer"),
])
def test_bad_requests_are_clear_400s(request_body: dict[str, Any], message: str) -> None:
    assert message in error_of(request_body).message


def test_tools_choice_effort_and_unknown_fields() -> None:
    deferred = {"name": "Later", "input_schema": {"type": "object"}, "defer_loading": True}
    no_schema = {"name": "Ping", "cache_control": {"type": "ephemeral"}}
    request = body(user("hi"), tools=[TOOL, deferred, no_schema],
                   tool_choice={"type": "any", "disable_parallel_tool_use": True},
                   thinking={"type": "adaptive", "display": "omitted"},
                   output_config={"effort": "xhigh"}, context_management={"edits": []},
                   metadata={"user_id": "{}"}, stop_sequences=["END"], temperature=0.2)
    chat = chat_body(request, "gpt-oss-20b", "refuse")
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "Bash", "description": "Run.", "parameters": {
            "type": "object", "properties": {"command": {"type": "string"}},
            "required": ["command"]}}},
        {"type": "function", "function": {"name": "Ping", "description": "", "parameters": {
            "type": "object", "properties": {}}}}]
    parsed = DIALECT.conversation(request, CONFIG).chat
    assert (parsed.tool_choice, parsed.parallel_tool_calls, parsed.reasoning_effort,
            parsed.stop, parsed.temperature, parsed.max_tokens) == (
        "required", False, "high", ("END",), 0.2, 100)
    named = DIALECT.conversation(body(user("hi"), tools=[TOOL], tool_choice={
        "type": "tool", "name": "Bash"}), CONFIG).chat
    assert (named.tool_choice, named.forced_tool) == ("named", "Bash")
    none = DIALECT.conversation(body(user("hi"), tools=[TOOL], tool_choice={"type": "none"}),
                                CONFIG).chat
    assert none.tool_choice == "none"


@pytest.mark.parametrize(("fields", "effort"), [
    ({}, "medium"), ({"thinking": {"type": "adaptive"}}, "medium"),
    ({"thinking": {"type": "disabled"}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
    ({"thinking": {"type": "enabled", "budget_tokens": 8000}}, "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 32000}}, "high"),
    ({"thinking": {"type": "enabled", "budget_tokens": 32000},
      "output_config": {"effort": "low"}}, "low"),
    ({"output_config": {"effort": "max"}}, "high"),
])
def test_reasoning_effort(fields: dict[str, Any], effort: str) -> None:
    assert DIALECT.conversation(body(user("hi"), **fields), CONFIG).chat.reasoning_effort == effort


def test_renders_as_the_equivalent_chat_request() -> None:
    """The harmony prompt of a Messages conversation is the prompt of its chat twin: the
    dialect adds nothing the chat rules do not already cover."""
    messages_request = body(
        user("Print it"),
        assistant([{"type": "thinking", "thinking": "Use Bash.", "signature": "s"},
                   {"type": "tool_use", "id": "t1", "name": "Bash",
                    "input": {"command": "cat a"}},
                   {"type": "tool_use", "id": "t2", "name": "Bash",
                    "input": {"command": "cat b"}}]),
        user([{"type": "tool_result", "tool_use_id": "t2", "content": "B"},
              {"type": "tool_result", "tool_use_id": "t1", "content": "A"}]),
        system="Be terse.", tools=[TOOL])
    chat_request = {"model": "gpt-oss-20b", "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Print it"},
        {"role": "assistant", "content": None, "reasoning": "Use Bash.", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "Bash", "arguments": '{"command":"cat a"}'}},
            {"id": "t2", "type": "function",
             "function": {"name": "Bash", "arguments": '{"command":"cat b"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "A"},
        {"role": "tool", "tool_call_id": "t2", "content": "B"}],
        "tools": [{"type": "function", "function": {
            "name": "Bash", "description": "Run.", "parameters": TOOL["input_schema"]}}]}
    ours = render_prompt(DIALECT.conversation(messages_request, CONFIG).chat, DATE).text
    assert ours == render_prompt(parse_chat_request(chat_request), DATE).text
    assert ours.index("cat a") < ours.index(">A<") < ours.index("cat b") < ours.index(">B<")


def test_claude_names_map_by_the_first_matching_pattern() -> None:
    assert resolve_model("claude-haiku-5-5", MAP) == "gpt-oss-20b"
    assert resolve_model("Claude-Opus-5", MAP) == "groq/llama-3.3-70b-versatile"
    assert resolve_model("llama-3.3-70b-versatile", MAP) == "llama-3.3-70b-versatile"
    with pytest.raises(ProxyError) as caught:
        resolve_model("claude-sonnet-5", ())
    assert caught.value.code == "model_not_mapped" and "CLAUDE_MODEL_MAP" in caught.value.message
    assert DIALECT.model(body(user("hi"), model="claude-haiku-4-5"), CONFIG) == "gpt-oss-20b"


def test_claude_model_map_setting_is_validated() -> None:
    assert build_config(_values(), {}).claude_model_map == ()
    with pytest.raises(exceptions.OptionsError, match="entry 'claude-x' is not PATTERN=MODEL"):
        build_config(_values(claude_model_map="claude-*=a, claude-x"), {})


# -- the reply -----------------------------------------------------------------------------------

def exchange_for(chat_fields: dict[str, Any], show_thinking: bool = True) -> HarmonyExchange:
    request = parse_chat_request({"model": "gpt-oss-20b", "stream": True,
                                  "messages": [{"role": "user", "content": "Hi"}],
                                  **chat_fields})
    backend = TransformersBackend()
    return HarmonyExchange(request, render_prompt(request, DATE, backend.text_transport),
                           backend, MessagesReply("gpt-oss-20b", request.stop, show_thinking))


def streamed(exchange: HarmonyExchange, *chunks: bytes) -> dict[str, Any]:
    return check_stream(Run(exchange).feed(*chunks).raw)


def whole(exchange: HarmonyExchange, text: str, finish: str) -> dict[str, Any]:
    return translate_completion(exchange, whole_output(text, finish)).body


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message less its id and the random tool ids."""
    blocks = [{**b, "id": "toolu_x"} if b["type"] == "tool_use" else b
              for b in message["content"]]
    return {**message, "id": "msg_x", "content": blocks}


@pytest.mark.parametrize(("text", "finish", "fields"),
                         [pytest.param(*case[1:4], id=case[0]) for case in CASES])
def test_stream_follows_the_grammar_and_adds_up_to_the_whole_reply(
        text: str, finish: str, fields: dict[str, Any]) -> None:
    exchange = exchange_for(fields)
    message = streamed(exchange, *backend_stream(text, finish))
    reference = whole(exchange_for(fields), text, finish)
    if exchange.request.stop and message["stop_reason"] == "stop_sequence":
        # Cut by a stop string, the stream ends at once and counts the tokens it saw.
        message["usage"] = reference["usage"]
    assert comparable(message) == comparable(reference)


def test_reply_blocks_stop_reasons_and_usage() -> None:
    call = ("<|channel|>analysis<|message|>Run it.<|end|><|start|>assistant<|channel|>"
            'commentary to=functions.Bash <|constrain|>json<|message|>{"command": "ls"}<|call|>')
    fields = {"tools": [{"type": "function", "function": {"name": "Bash"}}]}
    reply = whole(exchange_for(fields), call, "stop")
    thinking, tool_use = reply["content"]
    assert thinking == {"type": "thinking", "thinking": "Run it.",
                        "signature": thinking["signature"]} and len(thinking["signature"]) == 64
    assert (tool_use["name"], tool_use["input"], reply["stop_reason"]) == (
        "Bash", {"command": "ls"}, "tool_use")
    assert reply["usage"] == {"input_tokens": 70, "output_tokens": len(token_pieces(call)),
                              "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert reply["id"].startswith("msg_") and reply["type"] == "message"
    # The stream sends the model's own argument bytes as the one input_json_delta.
    raw = Run(exchange_for(fields)).feed(*backend_stream(call)).raw
    assert (b'"partial_json":"{\\"command\\": \\"ls\\"}"') in raw
    cut = whole(exchange_for({}), "<|channel|>final<|message|>Long", "length")
    assert cut["stop_reason"] == "max_tokens"
    stopped = whole(exchange_for({"stop": ["ng", "Lo"]}), "<|channel|>final<|message|>Long",
                    "stop")  # of several, the one that matched first in the text
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", "Lo")
    assert stopped["content"] == []


def test_arguments_that_are_no_object_become_an_empty_input() -> None:
    text = ('<|channel|>commentary to=functions.Bash <|constrain|>json<|message|>["ls"]'
            "<|call|>")
    fields = {"tools": [{"type": "function", "function": {"name": "Bash"}}]}
    assert whole(exchange_for(fields), text, "stop")["content"][0]["input"] == {}
    assert streamed(exchange_for(fields), *backend_stream(text))["content"][0]["input"] == {}


def test_thinking_disabled_hides_thinking_blocks() -> None:
    text = "<|channel|>analysis<|message|>secret<|end|><|start|>assistant<|channel|>final" \
           "<|message|>Shown."
    for message in (streamed(exchange_for({}, False), *backend_stream(text)),
                    whole(exchange_for({}, False), text, "stop")):
        assert message["content"] == [{"type": "text", "text": "Shown."}]
    conversation = DIALECT.conversation(body(user("hi"), thinking={"type": "disabled"}), CONFIG)
    assert conversation.reply.keys == ()


def test_every_split_point_gives_the_same_stream() -> None:
    text = ("<|channel|>analysis<|message|>Weather é.<|end|><|start|>assistant<|channel|>"
            'commentary to=functions.Bash <|constrain|>json<|message|>{"command":"ls"}<|call|>')
    fields = {"tools": [{"type": "function", "function": {"name": "Bash"}}]}
    data = b"".join(backend_stream(text))

    def normalized(*chunks: bytes) -> list[tuple[str, dict[str, Any]]]:
        exchange = exchange_for(fields)
        exchange.reply.message_id = "msg_x"
        raw = Run(exchange).feed(*chunks).raw
        check_stream(raw)
        return [(kind, {**data, "content_block": {**data["content_block"], "id": "x"}}
                 if data.get("content_block", {}).get("type") == "tool_use" else data)
                for kind, data in frames(raw)]

    expected = normalized(data)
    assert [kind for kind, _ in expected].count("content_block_start") == 2
    for i in boundary_splits(data):
        assert normalized(data[:i], data[i:]) == expected, i


def test_failure_mid_stream_is_an_error_event() -> None:
    exchange = exchange_for({})
    run = Run(exchange).feed(*backend_stream("<|channel|>final<|message|>Hello there")[:5],
                             b'data: {"error": "CUDA out of memory"}\n\n')
    ended = check_stream(run.raw)
    assert ended["error"] == {"type": "api_error",
                              "message": "The model server failed: CUDA out of memory"}
    assert ended["content"][0]["type"] == "text"
    assert exchange.reply.keepalive() == PING and frames(PING) == [("ping", {"type": "ping"})]


@pytest.mark.parametrize(("status", "code", "answered", "kind"), [
    (400, None, 400, "invalid_request_error"), (401, "invalid_api_key", 401,
                                                 "authentication_error"),
    (404, None, 404, "not_found_error"), (405, None, 405, "invalid_request_error"),
    (413, None, 413, "request_too_large"), (429, None, 429, "rate_limit_error"),
    (500, None, 500, "api_error"), (502, "upstream_error", 502, "api_error"),
    (503, "upstream_unavailable", 503, "overloaded_error"), (504, None, 504, "api_error"),
    (529, None, 529, "overloaded_error"),
    (503, "groq_key_missing", 400, "invalid_request_error"),
    (502, "harmony_tokens_stripped", 400, "invalid_request_error"),
])
def test_error_shape_and_status(status: int, code: str | None, answered: int,
                                kind: str) -> None:
    error = ProxyError(status, "what went wrong", code=code)
    assert error_status(error) == DIALECT.error_status(error) == answered
    assert error_body(error) == DIALECT.error_body(error) == {
        "type": "error", "error": {"type": kind, "message": "what went wrong"}}


# -- Groq ---------------------------------------------------------------------------------------

def test_groq_call_is_a_clean_chat_request() -> None:
    long = "mcp__server__" + "x" * 70
    request = body(user([{"type": "text", "text": "hi"},
                         {"type": "image", "source": {"type": "url", "url": "https://i/x.png"}}]),
                   assistant([{"type": "thinking", "thinking": "t", "signature": "s"},
                              {"type": "tool_use", "id": "c1", "name": long, "input": {}}]),
                   user([{"type": "tool_result", "tool_use_id": "c1", "content": "ok"}]),
                   model="claude-opus-5", tools=[{"name": long}, {"name": "a.b"}],
                   tool_choice={"type": "tool", "name": long}, stream=True,
                   stop_sequences=["1", "2", "3", "4", "5"], output_config={"effort": "high"})
    call = DIALECT.groq_call(request, "llama-3.3-70b-versatile", CONFIG)
    sent = call.body
    assert call.path == "/chat/completions" and sent["model"] == "llama-3.3-70b-versatile"
    short = next(safe for safe, name in call.tool_names.items() if name == long)
    assert len(short) == 64 and call.tool_names["a_b"] == "a.b"
    assert [t["function"]["name"] for t in sent["tools"]] == [short, "a_b"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": short}}
    assert sent["messages"][1] == {"role": "assistant", "content": "", "reasoning": "t",
                                   "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": short, "arguments": "{}"}}]}
    assert sent["messages"][0]["content"][1] == {"type": "image_url",
                                                 "image_url": {"url": "https://i/x.png"}}
    assert sent["stop"] == ["1", "2", "3", "4"] and "reasoning_effort" not in sent
    assert sent["stream_options"] == {"include_usage": True}
    assert call.reply.model == "groq/llama-3.3-70b-versatile"  # what claude-opus-5 maps to


def test_groq_tool_names_only_rename_what_groq_cannot_take() -> None:
    chat = {"messages": [], "tools": [{"type": "function", "function": {"name": "ok-name_1"}}]}
    assert groq_tool_names(chat) == (chat, {})
    clash = {"messages": [], "tools": [{"type": "function", "function": {"name": "a_b"}},
                                       {"type": "function", "function": {"name": "a.b"}}]}
    renamed, names = groq_tool_names(clash)
    safe = renamed["tools"][1]["function"]["name"]
    assert renamed["tools"][0]["function"]["name"] == "a_b" and safe.startswith("a_b_")
    assert names == {safe: "a.b"} and clash["tools"][1]["function"]["name"] == "a.b"


def test_anthropic_model_list() -> None:
    listing = anthropic_models([{"id": "gpt-oss-20b", "created": 0},
                                {"id": "llama", "created": 1733447754}])
    assert listing == {"data": [
        {"type": "model", "id": "gpt-oss-20b", "display_name": "gpt-oss-20b",
         "created_at": "1970-01-01T00:00:00Z"},
        {"type": "model", "id": "llama", "display_name": "llama",
         "created_at": "2024-12-06T01:15:54Z"}],
        "has_more": False, "first_id": "gpt-oss-20b", "last_id": "llama"}
    assert json.dumps(anthropic_models([])) == (
        '{"data": [], "has_more": false, "first_id": null, "last_id": null}')
