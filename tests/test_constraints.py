"""Constrained decoding: the schema → GBNF compiler, the harmony grammar's shape, and what each
backend is sent (vLLM's ``structured_outputs`` against a fake that validates the documented
request shape; transformers serve: nothing, and a log line). The real llama-server runs these
grammars in test_llamacpp_e2e.py."""

from __future__ import annotations

import json
import random
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from harmony_groq.chat_request import parse_chat_request
from harmony_groq.completion import AssembledMessage
from harmony_groq.constraints import constraint_for, llamacpp_grammar, vllm_fields
from harmony_groq.errors import ProxyError
from harmony_groq.gbnf import SchemaGrammar, UnsupportedSchema
from harmony_groq.gbnf_regex import FORMATS
from harmony_groq.parse import ContentDelta, ReasoningDelta, ToolCall
from harmony_groq.render import render_prompt
from harmony_groq.strict_check import HeldStrict, StrictCheck

from conftest import default_options
from fakes import FakeGroq, FakeTransformers
from fakes_backends import FakeVllm, structured_outputs_problem
from gbnf_sample import Grammar
from proxy_process import ProxyProcess
from strict_schemas import CHECKER, SCHEMAS

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                           "unit": {"enum": ["c", "f"]}},
          "required": ["city"], "additionalProperties": False}


def tool(name: str, strict: bool, schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": schema,
                                             "strict": strict}}


def request_of(**body: Any):  # noqa: ANN202 - (ChatRequest, HarmonyPrompt)
    request = parse_chat_request({"model": "gpt-oss-20b",
                                  "messages": [{"role": "user", "content": "hi"}], **body})
    return request, render_prompt(request, "2026-01-15", text_transport=False)


def test_nothing_is_constrained_without_strict_tools_or_a_json_schema() -> None:
    assert constraint_for(*request_of(tools=[tool("a", False)])) is None
    assert constraint_for(*request_of(response_format={"type": "json_object"})) is None
    assert constraint_for(*request_of(tools=[tool("a", True)], tool_choice="none")) is None
    forced_free = request_of(tools=[tool("a", True), tool("b", False)],
                             tool_choice={"type": "function", "function": {"name": "b"}})
    assert constraint_for(*forced_free) is None


def test_the_reply_grammar_frees_messages_and_constrains_the_last() -> None:
    constraint = constraint_for(*request_of(tools=[tool("get.weather", True), tool("b", False)]))
    assert constraint is not None
    grammar = llamacpp_grammar(constraint)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    assert rules["root"] == '( msg <[200006]> "assistant" )* ( final | call )'
    assert rules["free"] == '( [^<] | "<"+ [^<|] )* "<"*'  # text: no control token
    assert rules["final"] == '<[200005]> "final" <[200008]> free'
    assert '"get_weather" header args-' in rules["tool-chan"]  # harmony's name for it
    assert '"b" header free' in rules["tool-chan"]


def test_forced_and_required_calls_start_where_the_prefilled_header_ends() -> None:
    forced = constraint_for(*request_of(
        tools=[tool("a", True)], tool_choice={"type": "function", "function": {"name": "a"}}))
    assert forced is not None and forced.start == "args"
    assert llamacpp_grammar(forced).startswith("root ::= args-")
    assert vllm_fields(forced) == {"structured_outputs": {"json": SCHEMA}}
    required = constraint_for(*request_of(tools=[tool("a", True)], tool_choice="required"))
    assert required is not None and required.start == "name"
    assert llamacpp_grammar(required).startswith("root ::= tool-chan")


def test_gbnf_covers_the_strict_subset_and_refuses_the_rest() -> None:
    grammar = SchemaGrammar()
    recursive = {"$defs": {"node": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
        "required": ["kids"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
    root = grammar.add(recursive, "t")
    text = grammar.text({"root": root})
    assert "t-def-node-" in text and text.count("::=") > 5
    for bad, word in [({"type": "string", "pattern": "^(?!a)"}, "'pattern'.*look-around"),
                      ({"type": "string", "pattern": "(a)\\1"}, "back reference"),
                      ({"type": "string", "pattern": "a", "maxLength": 3}, "'maxLength'"),
                      ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
                      ({"type": "integer", "minimum": 3, "maximum": 2}, "'minimum'"),
                      ({"type": "integer", "multipleOf": 0}, "'multipleOf'"),
                      ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "allOf"),
                      ({"$ref": "#/$defs/missing"}, "does not name")]:
        with pytest.raises(UnsupportedSchema, match=word):
            SchemaGrammar().add(bad, "t")
    strict = constraint_for(*request_of(tools=[tool("a", True, {"type": "string",
                                                                 "pattern": "x(?=y)"})]))
    assert strict is not None
    with pytest.raises(ProxyError) as caught:
        llamacpp_grammar(strict)
    assert caught.value.status == 400 and caught.value.code == "unsupported_schema"


def test_vllm_structural_tag_matches_the_documented_shape() -> None:
    answer = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    constraint = constraint_for(*request_of(tools=[tool("a", True)], response_format=answer))
    assert constraint is not None
    fields = vllm_fields(constraint)
    assert structured_outputs_problem(fields) is None
    tag = json.loads(fields["structured_outputs"]["structural_tag"])
    begins = [s["begin"] for s in tag["structures"]]
    assert begins == ["<|channel|>commentary to=functions.a <|constrain|>json<|message|>",
                      " to=functions.a<|channel|>commentary json<|message|>",
                      "<|channel|>final<|message|>"]
    assert all(s["schema"] == SCHEMA for s in tag["structures"])
    assert structured_outputs_problem({"guided_json": SCHEMA}) is not None


# -- through the proxy -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_proxy(tmp_path_factory: pytest.TempPathFactory, vllm_server: FakeVllm,
               transformers_server: FakeTransformers, groq_server: FakeGroq):  # noqa: ANN201
    options = {**default_options(transformers_server, groq_server), "backend": "vllm",
               "transformers_url": vllm_server.url}
    process = ProxyProcess(tmp_path_factory.mktemp("vllm-constraints"), upstream=vllm_server.url,
                           options=options)
    yield process
    process.stop()


def test_vllm_gets_structured_outputs_it_accepts(vllm_proxy: ProxyProcess,
                                                 vllm_server: FakeVllm) -> None:
    vllm_server.reset_state()
    client = openai.OpenAI(base_url=vllm_proxy.base_url, api_key="sk-client", max_retries=0)
    ask = {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]}
    reply = client.chat.completions.create(**ask, tools=[tool("a", True)])  # type: ignore
    assert reply.choices[0].finish_reason in ("stop", "tool_calls", "length")
    tag = json.loads(vllm_server.bodies[-1]["structured_outputs"]["structural_tag"])
    assert tag["triggers"][0] == "<|channel|>commentary to=functions.a "
    client.responses.create(model="gpt-oss-120b", input="hi", text={"format": {
        "type": "json_schema", "name": "x", "schema": SCHEMA, "strict": True}})
    tag = json.loads(vllm_server.bodies[-1]["structured_outputs"]["structural_tag"])
    assert tag["structures"] == [{"begin": "<|channel|>final<|message|>", "schema": SCHEMA,
                                  "end": "<|return|>"}]
    client.chat.completions.create(**ask, tools=[tool("a", False)])  # type: ignore
    assert "structured_outputs" not in vllm_server.bodies[-1]


@pytest.mark.parametrize("name", SCHEMAS)
def test_vllm_gets_every_strict_keyword_as_the_client_wrote_it(
        vllm_proxy: ProxyProcess, vllm_server: FakeVllm, name: str) -> None:
    """Bounds, multipleOf, pattern and formats go to xgrammar untouched, no 400 on the way."""
    vllm_server.reset_state()
    client = openai.OpenAI(base_url=vllm_proxy.base_url, api_key="sk-client", max_retries=0)
    ask = {"model": "gpt-oss-120b", "messages": [{"role": "user", "content": "hi"}]}
    client.chat.completions.create(**ask, tools=[tool("a", True, SCHEMAS[name])],  # type: ignore
                                   tool_choice={"type": "function", "function": {"name": "a"}})
    assert vllm_server.bodies[-1]["structured_outputs"] == {"json": SCHEMAS[name]}
    client.responses.create(model="gpt-oss-120b", input="hi", text={"format": {
        "type": "json_schema", "name": "x", "schema": SCHEMAS[name], "strict": True}})
    tag = json.loads(vllm_server.bodies[-1]["structured_outputs"]["structural_tag"])
    assert [s["schema"] for s in tag["structures"]] == [SCHEMAS[name]]


def test_a_pattern_vllm_cannot_compile_is_the_clients_400(vllm_proxy: ProxyProcess,
                                                          vllm_server: FakeVllm) -> None:
    vllm_server.reset_state()
    client = openai.OpenAI(base_url=vllm_proxy.base_url, api_key="sk-client", max_retries=0)
    broken = tool("a", True, {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z"}}})
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-oss-120b", tools=[broken],  # type: ignore
                                       messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unsupported_schema"
    assert "^[A-Z" in error["message"] and vllm_server.generated == []


def test_transformers_serve_says_it_cannot_constrain(proxy: ProxyProcess,
                                                     fake_transformers: FakeTransformers
                                                     ) -> None:
    before = proxy.log_mark()
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    client.chat.completions.create(model="gpt-oss-20b", tools=[tool("a", True)],  # type: ignore
                                   messages=[{"role": "user", "content": "hi"}])
    record = proxy.log_records(wait_for=before + 1)[-1]
    assert set(record["upstream_request"]["body"]) <= {"prompt", "stream", "max_tokens",
                                                       "temperature", "top_p", "seed"}
    assert any("no constrained decoding: tool a not enforced" in line
               for line in proxy.output)


def test_a_schema_vllm_cannot_compile_is_the_clients_400(vllm_proxy: ProxyProcess,
                                                         vllm_server: FakeVllm) -> None:
    vllm_server.reset_state()
    client = openai.OpenAI(base_url=vllm_proxy.base_url, api_key="sk-client", max_retries=0)
    broken = tool("a", True, {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}})
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-oss-120b", tools=[broken],  # type: ignore
                                       messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unsupported_schema"
    assert "$ref #/$defs/missing not found" in error["message"]
    assert vllm_server.generated == []  # nothing was generated


# -- OpenAI's strict-mode keywords -------------------------------------------------------------

def schema_grammar(schema: dict[str, Any]) -> Grammar:
    grammar = SchemaGrammar()
    return Grammar(grammar.text({"root": grammar.add(schema, "t")}))


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_text_a_strict_schema_allows_is_valid(name: str) -> None:
    """Soundness without a server: random walks through the grammar all validate."""
    schema, rng = SCHEMAS[name], random.Random(name)
    grammar = schema_grammar(schema)
    texts = [grammar.sample(rng) for _ in range(400)]
    for text in texts:
        jsonschema.validate(json.loads(text), schema, format_checker=CHECKER)
    assert len(set(texts)) > 300  # the walk explores: values vary


@pytest.mark.parametrize(("low", "high"), [(1, 7), (0, 100), (-120, 3456), (-9, -3), (10, 10),
                                           (None, 5), (95, None), (None, -1000)])
def test_integer_bounds_allow_exactly_the_range(low: int | None, high: int | None) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["exclusiveMaximum"] = high + 1
    grammar = schema_grammar(schema)
    start, stop = (low if low is not None else high - 3000), (high if high is not None
                                                              else low + 3000)
    for value in range(start - 50, stop + 50):
        inside = (low is None or value >= low) and (high is None or value <= high)
        assert grammar.matches(str(value)) == inside, value
    assert not grammar.matches("01") and not grammar.matches("-0")


@pytest.mark.parametrize("schema", [
    {"type": "number", "minimum": 0.2, "maximum": 0.7},
    {"type": "number", "exclusiveMinimum": -3.25, "exclusiveMaximum": -3.2},
    {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    {"type": "number", "minimum": -1e6, "maximum": -5},
    {"type": "number", "multipleOf": 0.1, "minimum": 0, "maximum": 1},
    {"type": "integer", "multipleOf": 7},
    {"exclusiveMinimum": 0, "type": "number", "multipleOf": 0.01}])
def test_number_bounds_and_multiples_only_allow_valid_values(schema: dict[str, Any]) -> None:
    grammar, rng = schema_grammar(schema), random.Random(3)
    for _ in range(300):
        jsonschema.validate(json.loads(grammar.sample(rng)), schema)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_of_the_strict_list_validates(fmt: str) -> None:
    schema, rng = {"type": "string", "format": fmt}, random.Random(fmt)
    grammar = schema_grammar(schema)
    for _ in range(300):
        jsonschema.validate(json.loads(grammar.sample(rng)), schema, format_checker=CHECKER)


def test_a_pattern_is_written_over_the_json_text() -> None:
    """Quotes and backslashes escaped, ``<`` as \\u003c (never ``<|``), whole matches."""
    schema = {"type": "string", "pattern": '^[a"\\\\<]{2}x+$'}
    grammar, rng = schema_grammar(schema), random.Random(5)
    texts = {grammar.sample(rng) for _ in range(200)}
    assert any('\\"' in t for t in texts) and any("\\u003c" in t for t in texts)
    assert not any("<" in t for t in texts)
    for text in texts:
        jsonschema.validate(json.loads(text), schema)


# -- transformers serve: validated after generation, generated again ---------------------------

def call_script(arguments: str) -> str:
    return ("<|channel|>analysis<|message|>Fill it.<|end|><|start|>assistant<|channel|>commentary"
            f" to=functions.a <|constrain|>json<|message|>{arguments}<|call|>")


def final_script(text: str) -> str:
    return f"<|channel|>analysis<|message|>Answer.<|end|><|start|>assistant<|channel|>final" \
           f"<|message|>{text}<|return|>"


BOUNDED = {"type": "object", "properties": {
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "day": {"type": "string", "format": "date"}},
    "required": ["days", "day"], "additionalProperties": False}


def test_transformers_generates_an_invalid_strict_call_again(
        proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(call_script('{"days": 9, "day": "2026-01-02"}'),
                             call_script('{"days": 3, "day": "2026-02-30"}'),
                             call_script('{"days": 3, "day": "2026-02-03"}'))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    before = proxy.log_mark()
    reply = client.chat.completions.create(
        model="gpt-oss-20b", messages=[{"role": "user", "content": "hi"}], seed=7,
        tools=[tool("a", True, BOUNDED)])  # type: ignore[list-item]
    (call,) = reply.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"days": 3, "day": "2026-02-03"}
    assert [json.loads(r["raw"])["seed"] for r in fake_transformers.requests] == [7, 8, 9]
    record = proxy.log_records(wait_for=before + 1)[-1]
    assert record["strict_tries"] == 3


def test_transformers_strict_reply_that_stays_invalid_is_the_apis_error(
        proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(*[final_script("not JSON")] * 3)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    before = proxy.log_mark()
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model="gpt-oss-20b", input="hi", text={"format": {
            "type": "json_schema", "name": "x", "schema": BOUNDED, "strict": True}})
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "strict_schema_unmet"
    assert "3 tries" in error["message"] and "STRICT_RETRIES" in error["message"]
    record = proxy.log_records(wait_for=before + 1)[-1]
    assert record["strict_tries"] == 3 and "not JSON" in record["strict_problem"]
    fake_transformers.script(final_script('{"days": 7, "day": "2026-12-31"}'))
    reply = client.responses.create(model="gpt-oss-20b", input="hi", text={"format": {
        "type": "json_schema", "name": "x", "schema": BOUNDED, "strict": True}})
    assert json.loads(reply.output_text) == {"days": 7, "day": "2026-12-31"}
    assert proxy.log_records(wait_for=before + 2)[-1]["strict_tries"] == 1


def test_transformers_strict_stream_holds_the_call_until_it_is_valid(
        proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    """The analysis streams; the strict call goes out once the reply is over and valid, and a
    reply that stays invalid through every try ends the stream with the API's error."""
    fake_transformers.script(call_script('{"days": 3, "day": "2026-02-03"}'),
                             *[call_script('{"days": 0, "day": "2026-02-03"}')] * 3)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    ask = {"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "hi"}],
           "tools": [tool("a", True, BOUNDED)], "stream": True}
    chunks = list(client.chat.completions.create(**ask))  # type: ignore[call-overload]
    calls = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls
             or []]
    assert [json.loads(c.function.arguments) for c in calls] == [{"days": 3,
                                                                  "day": "2026-02-03"}]
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(**ask):  # type: ignore[call-overload]
            received.append(chunk)
    assert "strict schema" in caught.value.message and "3 tries" in caught.value.message
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in received)
    assert any(c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning")
               for c in received)  # the analysis was not held
    record = proxy.last_record("is less than the minimum of 1")
    assert record["strict_tries"] == 3 and "arguments of 'a'" in record["strict_problem"]
    assert [json.loads(r["raw"])["stream"] for r in fake_transformers.requests[1:]] == [
        True, False, False]  # the retries are whole completions


def test_transformers_strict_chat_stream_is_generated_again(
        proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    """An invalid held call is asked for again; the valid try's call goes out in the same
    stream, then its normal end."""
    fake_transformers.script(call_script('{"days": 9, "day": "2026-01-02"}'),
                             call_script('{"days": 4, "day": "2026-01-02"}'))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    before = proxy.log_mark()
    chunks = list(client.chat.completions.create(
        model="gpt-oss-20b", messages=[{"role": "user", "content": "hi"}], stream=True,
        seed=11, tools=[tool("a", True, BOUNDED)]))  # type: ignore[list-item]
    calls = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls
             or []]
    assert [json.loads(c.function.arguments or "") for c in calls] == [
        {"days": 4, "day": "2026-01-02"}]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert [json.loads(r["raw"])["seed"] for r in fake_transformers.requests] == [11, 12]
    record = proxy.log_records(wait_for=before + 1)[-1]
    assert record["strict_tries"] == 2 and "strict_problem" not in record
    assert record["client_response"]["message"]["tool_calls"][0]["function"]["arguments"] \
        == '{"days": 4, "day": "2026-01-02"}'


def test_transformers_strict_responses_stream_is_generated_again(
        proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(final_script("not JSON"), final_script("still not"),
                             final_script('{"days": 2, "day": "2026-05-06"}'))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    before = proxy.log_mark()
    events = list(client.responses.create(
        model="gpt-oss-20b", input="hi", stream=True, text={"format": {
            "type": "json_schema", "name": "x", "schema": BOUNDED, "strict": True}}))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert json.loads(deltas) == {"days": 2, "day": "2026-05-06"}
    assert events[-1].type == "response.completed"
    assert json.loads(events[-1].response.output_text) == {"days": 2, "day": "2026-05-06"}
    assert any(e.type == "response.reasoning_text.delta" for e in events)  # the first try's
    record = proxy.log_records(wait_for=before + 1)[-1]
    assert record["strict_tries"] == 3 and "strict_problem" not in record


def test_transformers_strict_messages_stream_is_generated_again(
        proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(call_script('{"days": 3}'),
                             call_script('{"days": 5, "day": "2026-03-04"}'))
    client = anthropic.Anthropic(base_url=proxy.root_url, api_key="sk-client", max_retries=0)
    before = proxy.log_mark()
    with client.messages.stream(
            model="gpt-oss-20b", max_tokens=200, messages=[{"role": "user", "content": "hi"}],
            tools=[{"name": "a", "input_schema": BOUNDED, "strict": True}],  # type: ignore
    ) as stream:
        message = stream.get_final_message()
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.input == {"days": 5, "day": "2026-03-04"} and message.stop_reason == "tool_use"
    record = proxy.log_records(wait_for=before + 1)[-1]
    assert record["strict_tries"] == 2


def test_a_retry_replaces_only_the_held_strict_part() -> None:
    """A free tool's call (sent with the first try) stays; the strict call and answer are the
    retry's."""
    check = StrictCheck({"a": BOUNDED}, {"type": "object"})
    held, message = HeldStrict(check, []), AssembledMessage()
    first = [ReasoningDelta("think"), ToolCall(0, "c1", "free", "{}"),
             ToolCall(1, "c2", "a", '{"days": 9}'), ContentDelta("no")]
    message.add(first)
    assert held.split(first) == first[:2]
    retry = [ReasoningDelta("again"), ToolCall(0, "c3", "a", '{"days": 1, "day": "2026-01-01"}'),
             ContentDelta("{}")]
    assert held.replace(message, retry) == retry[1:]
    assert [c.id for c in message.tool_calls] == ["c1", "c3"]
    assert message.content == ["{}"] and message.reasoning == ["think"]
