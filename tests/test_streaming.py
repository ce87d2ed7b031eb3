"""The stream translator fed backend SSE: chunk sequence, equality with the non-streamed
translation (``translate.translate_completion``), failures, keep-alives and split-anywhere framing.

The backend streams are built the way ``transformers serve`` sends them (one event per token,
compact JSON, no ``[DONE]``, a last event with ``finish_reason`` and ``usage``) and two are real
recordings (``data/transformers_streams.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.test import taddons, tflow

from harmony_groq.backends import BackendOutput, TransformersBackend, make_backend
from harmony_groq.chat_request import parse_chat_request
from harmony_groq.dialects.chat import ChatReply
from harmony_groq.encoding import harmony_encoding
from harmony_groq.render import render_prompt
from harmony_groq.sse import DONE, KEEPALIVE, SSEFramer
from harmony_groq.streaming import HarmonyStreamTranslator, StreamResult, send_last_chunk
from harmony_groq.translate import HarmonyExchange, translate_completion

from fakes import token_pieces

RECORDED = json.loads((Path(__file__).parent / "data" / "transformers_streams.json").read_text())
DATE = "2026-01-15"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
DOTTED = {"type": "function", "function": {"name": "web.search", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}}}}
REASONING_KEYS = {"both": ("reasoning", "reasoning_content"), "reasoning": ("reasoning",),
                  "reasoning_content": ("reasoning_content",), "none": ()}


# -- helpers ---------------------------------------------------------------------------------

def make_exchange(reasoning_field: str = "both", **body: Any) -> HarmonyExchange:
    request = parse_chat_request({
        "model": "gpt-oss-20b", "messages": [{"role": "user", "content": "Hi"}],
        "stream": True, **body})
    backend = TransformersBackend()
    return HarmonyExchange(request, render_prompt(request, DATE, backend.text_transport), backend,
                           ChatReply.for_request(request, reasoning_field))


def backend_event(text: str, finish: str | None = None, usage: dict | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "text": text}
    if finish:
        choice = {"finish_reason": finish, **choice}
    event: dict[str, Any] = {"id": "req-1", "choices": [choice], "created": 1795500459,
                             "model": "/models/gpt-oss@main", "object": "text_completion"}
    if usage:
        event["usage"] = usage
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def backend_stream(text: str, finish: str = "stop", prompt_tokens: int = 70) -> list[bytes]:
    """``transformers serve``'s SSE for ``text``: one event per token, then finish + usage."""
    pieces = token_pieces(text)
    usage = {"completion_tokens": len(pieces), "prompt_tokens": prompt_tokens,
             "total_tokens": prompt_tokens + len(pieces)}
    return [backend_event(p) for p in pieces] + [backend_event("", finish, usage)]


def whole_output(text: str, finish: str = "stop", prompt_tokens: int = 70) -> BackendOutput:
    return BackendOutput(text=text, finish_reason=finish, prompt_tokens=prompt_tokens,
                         completion_tokens=len(token_pieces(text)))


class Run:
    """One translator fed network chunks, as mitmproxy calls it (``b""`` once at the end)."""

    def __init__(self, exchange: HarmonyExchange, keepalive_seconds: float = 3600,
                 clock: Any = None) -> None:
        self.results: list[StreamResult] = []
        extra = {"clock": clock} if clock else {}
        self.translator = HarmonyStreamTranslator(exchange, keepalive_seconds,
                                                  self.results.append, **extra)
        self.outputs: list[list[bytes]] = []

    def feed(self, *chunks: bytes, end: bool = True) -> Run:
        for chunk in chunks:
            self.outputs.append(self.translator(chunk))
        if end:
            self.outputs.append(self.translator(b""))
        return self

    @property
    def raw(self) -> bytes:
        return b"".join(b"".join(out) for out in self.outputs)

    @property
    def payloads(self) -> list[str]:
        framer = SSEFramer()
        payloads = framer.feed(self.raw)
        assert framer.pending() == b""
        return payloads

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads if p != "[DONE]"]

    @property
    def result(self) -> StreamResult:
        assert len(self.results) == 1, "on_done must be called exactly once"
        return self.results[0]


def check_sequence(run: Run, exchange: HarmonyExchange) -> list[dict[str, Any]]:
    """The OpenAI chunk grammar: role chunk, one-kind deltas, finish chunk, [usage], [DONE]."""
    payloads = run.payloads
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    chunks = run.chunks
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert (chunk["id"], chunk["model"], chunk["created"]) == (
            exchange.reply.completion_id, "gpt-oss-20b", chunks[0]["created"])
    body = chunks
    if exchange.request.include_usage:
        *body, usage_chunk = chunks
        assert usage_chunk["choices"] == [] and set(usage_chunk["usage"]) == {
            "prompt_tokens", "completion_tokens", "total_tokens", "completion_tokens_details"}
    first, *middle, last = body
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "logprobs": None, "finish_reason": None}]
    assert last["choices"][0]["delta"] == {}
    assert last["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    keys = exchange.reply.keys
    call_indexes = []
    for chunk in middle:
        (choice,) = chunk["choices"]
        assert choice["finish_reason"] is None and choice["index"] == 0
        delta = choice["delta"]
        if "tool_calls" in delta:
            assert set(delta) == {"tool_calls"}
            (call,) = delta["tool_calls"]
            assert set(call) == {"index", "id", "type", "function"}
            assert call["id"].startswith("call_") and len(call["id"]) == 29
            assert call["type"] == "function" and set(call["function"]) == {"name", "arguments"}
            call_indexes.append(call["index"])
        elif "content" in delta:
            assert set(delta) == {"content"}, "content never shares a chunk"
        else:
            assert keys and set(delta) == set(keys), "reasoning only in the configured fields"
            assert len({delta[k] for k in keys}) == 1
    assert call_indexes == list(range(len(call_indexes))), "one complete delta per call"
    return chunks


def assemble(chunks: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """What an OpenAI client accumulates from the deltas."""
    content = ""
    reasoning = {k: "" for k in keys}
    calls: list[dict[str, Any]] = []
    finish = None
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for key in keys:
                reasoning[key] += delta.get(key) or ""
            for call in delta.get("tool_calls") or []:
                calls.append({"id": call["id"], "type": call["type"],
                              "function": call["function"]})
            finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"role": "assistant", "content": None if calls and not content
                               else content}
    message.update({k: v for k, v in reasoning.items() if v})
    if calls:
        message["tool_calls"] = calls
    return {"message": message, "finish_reason": finish}


def without_ids(message: dict[str, Any]) -> dict[str, Any]:
    calls = [{**c, "id": "call_x"} for c in message.get("tool_calls") or []]
    return {**message, **({"tool_calls": calls} if calls else {})}


def assert_matches_non_stream(run: Run, exchange: HarmonyExchange, output: BackendOutput
                              ) -> dict[str, Any]:
    chunks = check_sequence(run, exchange)
    streamed = assemble(chunks, exchange.reply.keys)
    translated = translate_completion(exchange, output)
    choice = translated.body["choices"][0]
    assert without_ids(streamed["message"]) == without_ids(choice["message"])
    assert streamed["finish_reason"] == choice["finish_reason"]
    assert run.result.repairs == translated.repairs
    usage = run.result.usage
    if exchange.request.include_usage:
        assert chunks[-1]["usage"] == usage
    if run.translator.decoder.stopped:
        # Cut by a stop string: the stream ends at once, so it counts what it saw.
        assert usage["prompt_tokens"] == len(exchange.prompt.token_ids)
        assert 0 < usage["completion_tokens"] <= output.completion_tokens
    else:
        assert usage == translated.body["usage"]
    return choice


# -- the completion table ----------------------------------------------------------------------

A = "<|channel|>analysis<|message|>"
F = "<|end|><|start|>assistant<|channel|>final<|message|>"
CALL = ("<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather "
        "<|constrain|>json<|message|>")

# (id, generated text, backend finish_reason, request fields, expected client message excerpt)
CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("reasoning+final", f"{A}User says hi.{F}Hello!", "stop", {},
     {"content": "Hello!", "reasoning": "User says hi."}),
    ("final only", "<|channel|>final<|message|>Just this.", "stop", {}, {"content": "Just this."}),
    ("return token kept by backend", f"{A}x{F}Done.<|return|>", "stop", {}, {"content": "Done."}),
    ("two analysis + two finals joined by newline",
     f"{A}a{F.replace('final', 'analysis')}b{F}x{F}y", "stop", {},
     {"content": "x\ny", "reasoning": "a\nb"}),
    ("preamble then final", "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant"
     "<|channel|>final<|message|>Done.", "stop", {}, {"content": "Checking.\nDone."}),
    ("unicode split across tokens", f"{A}héllo 日本語{F}Grüße 🎉 ok", "stop", {},
     {"content": "Grüße 🎉 ok"}),
    ("tool call", f"{A}Need weather.{CALL}{{\"city\":\"Paris\"}}<|call|>", "stop",
     {"tools": [WEATHER]}, {"tool_calls": [("get_weather", '{"city":"Paris"}')]}),
    ("tool call, recipient in role header",
     f"{A}Need.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json"
     "<|message|>{\"city\": \"Oslo\"}<|call|>", "stop", {"tools": [WEATHER]},
     {"tool_calls": [("get_weather", '{"city": "Oslo"}')]}),
    ("tool name mapped back", f"{A}Search.<|end|><|start|>assistant<|channel|>commentary "
     "to=functions.web_search <|constrain|>json<|message|>{\"q\":\"x\"}<|call|>", "stop",
     {"tools": [DOTTED]}, {"tool_calls": [("web.search", '{"q":"x"}')]}),
    ("two calls", f"{A}Both.{CALL}{{\"city\":\"A\"}}<|call|><|start|>assistant<|channel|>"
     "commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"B\"}<|call|>",
     "stop", {"tools": [WEATHER]},
     {"tool_calls": [("get_weather", '{"city":"A"}'), ("get_weather", '{"city":"B"}')]}),
    ("parallel_tool_calls false keeps one", f"{A}Both.{CALL}{{\"city\":\"A\"}}<|call|>"
     "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
     "<|message|>{\"city\":\"B\"}<|call|>", "stop",
     {"tools": [WEATHER], "parallel_tool_calls": False},
     {"tool_calls": [("get_weather", '{"city":"A"}')]}),
    ("tool_choice none drops the call", f"{A}Hmm.{CALL}{{\"city\":\"A\"}}<|call|>", "stop",
     {"tools": [WEATHER], "tool_choice": "none"}, {"content": "", "tool_calls": None}),
    ("trailing junk after arguments", f"{A}x{CALL}{{\"city\":\"Rome\"}} trailing}}<|call|>",
     "stop", {"tools": [WEATHER]}, {"tool_calls": [("get_weather", '{"city":"Rome"}')]}),
    ("empty arguments", f"{A}x{CALL}<|call|>", "stop", {"tools": [WEATHER]},
     {"tool_calls": [("get_weather", "{}")]}),
    ("undeclared functions.X still a call", f"{A}x<|end|><|start|>assistant<|channel|>"
     "commentary to=functions.nope <|constrain|>json<|message|>{}<|call|>", "stop",
     {"tools": [WEATHER]}, {"tool_calls": [("nope", "{}")]}),
    ("builtin recipient shown as reasoning", f"{A}x<|end|><|start|>assistant<|channel|>"
     "analysis to=python<|message|>print(1)<|call|>", "stop", {}, {"reasoning": "x\nprint(1)"}),
    ("refusal without any header", "I cannot help with that.", "stop", {},
     {"content": "I cannot help with that."}),
    ("missing end before channel", f"{A}Think<|channel|>final<|message|>Answer", "stop", {},
     {"content": "Answer", "reasoning": "Think"}),
    ("text between messages", f"{A}Think.<|end|>Stray words<|start|>assistant<|channel|>final"
     "<|message|>ok", "stop", {}, {"content": "ok", "reasoning": "Think.\nStray words"}),
    ("garbage after channel name", "<|channel|>final extra words<|message|>Hi", "stop", {},
     {"reasoning": "Hi"}),
    ("stray message token in content", f"{A}a<|message|>b{F}c", "stop", {},
     {"content": "c", "reasoning": "ab"}),
    ("stop string cuts final text", f"{A}Count END here.{F}one two END three", "stop",
     {"stop": ["END"]}, {"content": "one two ", "reasoning": "Count END here."}),
    ("stop string split across tokens", f"{A}x{F}alpha ##ST OP## omega", "stop",
     {"stop": ["##ST OP##"]}, {"content": "alpha "}),
    ("partial stop string at the end is flushed", f"{A}x{F}Hello EN", "stop",
     {"stop": ["END"]}, {"content": "Hello EN"}),
    ("max_tokens in reasoning", f"{A}Still thinking about", "length", {},
     {"content": "", "reasoning": "Still thinking about"}),
    ("max_tokens cuts a call", f"{A}x{CALL}{{\"city\":", "length", {"tools": [WEATHER]},
     {"tool_calls": None}),
    ("endoftext ends generation", f"{A}x{F}Bye.<|endoftext|>junk after", "stop", {},
     {"content": "Bye."}),
    ("reasoning hidden by include_reasoning", f"{A}secret{F}Shown.", "stop",
     {"include_reasoning": False}, {"content": "Shown.", "reasoning": None}),
    ("usage chunk", f"{A}x{F}y", "stop", {"stream_options": {"include_usage": True}},
     {"content": "y"}),
]


@pytest.mark.parametrize(("text", "finish", "body", "expect"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_stream_concatenates_to_the_non_streamed_message(text: str, finish: str, body: dict,
                                                          expect: dict) -> None:
    exchange = make_exchange(**body)
    run = Run(exchange).feed(*backend_stream(text, finish))
    choice = assert_matches_non_stream(run, exchange, whole_output(text, finish))
    message = choice["message"]
    for key, value in expect.items():
        if key == "tool_calls":
            calls = message.get("tool_calls")
            assert (value is None and calls is None) or [
                (c["function"]["name"], c["function"]["arguments"]) for c in calls] == value
        elif key == "reasoning":
            assert message.get("reasoning") == value
            assert message.get("reasoning_content") == value
        else:
            assert message[key] == value
    assert run.result.error is None
    upstream = "".join(run.result.upstream_text)
    if run.translator.decoder.stopped:  # the stream ends at the stop string
        assert text.startswith(upstream) and len(upstream) < len(text)
    else:
        assert upstream == "".join(token_pieces(text))


@pytest.mark.parametrize("field", list(REASONING_KEYS))
def test_reasoning_field_setting(field: str) -> None:
    exchange = make_exchange(reasoning_field=field)
    text = f"{A}Because.{F}Yes."
    run = Run(exchange).feed(*backend_stream(text))
    assert_matches_non_stream(run, exchange, whole_output(text))
    reasoning_chunks = [c["choices"][0]["delta"] for c in run.chunks[1:-1]
                        if "content" not in c["choices"][0]["delta"]]
    assert {tuple(sorted(d)) for d in reasoning_chunks} == (
        {tuple(sorted(REASONING_KEYS[field]))} if field != "none" else set())


def test_every_token_is_forwarded_as_it_arrives() -> None:
    """Each backend event is translated on arrival: a delta per text token, none held back."""
    exchange = make_exchange()
    events = backend_stream(f"{A}one two three{F}four five")
    run = Run(exchange).feed(*events)
    texts = []
    for out in run.outputs[:-1]:
        deltas = [json.loads(e[6:])["choices"][0]["delta"] for e in out if e.startswith(b"data: {")]
        texts.append("".join(d.get("content") or d.get("reasoning") or "" for d in deltas))
    pieces = token_pieces(f"{A}one two three{F}four five")
    visible = [p if "<|" not in p and p not in ("analysis", "assistant", "final") else ""
               for p in pieces]
    assert texts[:len(pieces)] == visible


def test_tool_call_delta_has_a_stable_id_and_one_chunk() -> None:
    exchange = make_exchange(tools=[WEATHER])
    text = f"{A}x{CALL}{{\"city\":\"Paris\"}}<|call|>"
    events = backend_stream(text)
    run = Run(exchange).feed(*events)
    call_event = len(token_pieces(text)) - 1  # the <|call|> token ends the message
    assert [n for n, out in enumerate(run.outputs) if any(b'"tool_calls": [' in e for e in out)
            ] == [call_event]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in run.chunks
             if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert len(calls) == 1
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert run.result.message.tool_calls[0].id == calls[0]["id"]
    assert run.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("kind", ["vllm", "llamacpp"])
def test_id_streams_concatenate_to_the_non_streamed_message(kind: str) -> None:
    """Servers that send token ids (vLLM, llama.cpp) go through the same translator."""
    request = parse_chat_request({"model": "gpt-oss-20b", "messages": [{"role": "user",
                                  "content": "Hi"}], "stream": True, "tools": [WEATHER]})
    backend = make_backend(kind)
    exchange = HarmonyExchange(request, render_prompt(request, DATE, backend.text_transport),
                               backend, ChatReply.for_request(request, "both"))
    encoding = harmony_encoding()
    ids = encoding.encode(f"{A}Need it.{CALL}{{\"city\":\"Oslo\"}}", allowed_special="all")
    ids.append(200012)  # <|call|>, a stop token both servers return as an id
    hidden = {200007, 200012} if kind == "llamacpp" else set()  # no text without -sp
    pieces = ["" if i in hidden else encoding.decode([i]) for i in ids]
    usage = {"prompt_tokens": 90, "completion_tokens": len(ids), "total_tokens": 90 + len(ids)}
    if kind == "vllm":
        events = [{"choices": [{"index": 0, "text": p, "token_ids": [i], "finish_reason": None}],
                   "usage": usage} for p, i in zip(pieces, ids, strict=True)]
        events[-1]["choices"][0]["finish_reason"] = "stop"
        events.append({"choices": [], "usage": usage})
        whole = {"choices": [{"index": 0, "text": "".join(pieces), "token_ids": ids,
                              "finish_reason": "stop"}], "usage": usage}
    else:
        events = [{"content": p, "tokens": [i], "stop": False} for p, i in
                  zip(pieces, ids, strict=True)]
        events.append({"content": "", "tokens": [], "stop": True, "stop_type": "eos",
                       "tokens_evaluated": 90, "tokens_predicted": len(ids)})
        whole = {"content": "".join(pieces), "tokens": ids, "stop": True, "stop_type": "eos",
                 "tokens_evaluated": 90, "tokens_predicted": len(ids)}
    stream = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    run = Run(exchange).feed(*stream, *([b"data: [DONE]\n\n"] if kind == "vllm" else []))
    choice = assert_matches_non_stream(run, exchange, backend.read_response(whole))
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"]["arguments"] for c in choice["message"]["tool_calls"]] == [
        '{"city":"Oslo"}']
    # The log's upstream text shows control tokens even where the server sent only their ids.
    assert "".join(run.result.upstream_text) == encoding.decode(ids)


# -- recorded transformers serve streams -------------------------------------------------------

def recorded(name: str) -> tuple[HarmonyExchange, list[bytes], BackendOutput]:
    case = RECORDED[name]
    request = parse_chat_request(case["request"])
    backend = TransformersBackend()
    exchange = HarmonyExchange(request, render_prompt(request, DATE, backend.text_transport),
                               backend, ChatReply.for_request(request, "both"))
    pieces = [p.encode() for p in case["network_pieces"]]
    return exchange, pieces, backend.read_response(case["completion"])


@pytest.mark.parametrize("name", ["final", "tool"])
def test_recorded_stream_matches_recorded_completion(name: str) -> None:
    exchange, pieces, whole = recorded(name)
    run = Run(exchange).feed(*pieces)
    choice = assert_matches_non_stream(run, exchange, whole)
    assert choice["finish_reason"] == {"final": "stop", "tool": "tool_calls"}[name]
    assert run.result.usage["completion_tokens"] == whole.completion_tokens
    assert "".join(run.result.upstream_text) == whole.text


def normalized(run: Run) -> list[str]:
    """Payloads with the random tool-call ids and the creation time blanked."""
    out = []
    for payload in run.payloads:
        out.append(payload if payload == "[DONE]" else json.dumps(without_ids_chunk(
            json.loads(payload))))
    return out


def without_ids_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    chunk["created"] = 0
    for choice in chunk.get("choices") or []:
        for call in choice["delta"].get("tool_calls") or []:
            call["id"] = "call_x"
    return chunk


def boundary_splits(data: bytes, reach: int = 2) -> list[int]:
    """Split points within ``reach`` bytes of every blank line and line break."""
    points = set()
    for i in range(len(data)):
        if data[i:i + 1] in (b"\n", b"\r"):
            points.update(range(i - reach, i + reach + 2))
    return sorted(p for p in points if 0 < p < len(data))


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_framer_every_split_point_of_recorded_stream(newline: bytes) -> None:
    _, pieces, _ = recorded("tool")
    data = b"".join(pieces).replace(b"\n", newline)
    expected = SSEFramer().feed(data)
    assert len(expected) == 26
    for i in range(1, len(data)):
        framer = SSEFramer()
        assert framer.feed(data[:i]) + framer.feed(data[i:]) == expected, i
        assert framer.pending() == b""


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_translator_any_split_of_recorded_stream(newline: bytes) -> None:
    exchange, pieces, _ = recorded("tool")
    data = b"".join(pieces).replace(b"\n", newline)
    expected = normalized(Run(exchange).feed(*pieces))
    assert normalized(Run(exchange).feed(data)) == expected
    assert normalized(Run(exchange).feed(*(data[i:i + 1] for i in range(len(data))))) == expected
    for i in boundary_splits(data):
        assert normalized(Run(exchange).feed(data[:i], data[i:])) == expected, i


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4568), max_size=12, unique=True))
def test_translator_random_multi_splits(cuts: list[int]) -> None:
    exchange, pieces, _ = recorded("tool")
    data = b"".join(pieces)
    bounds = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    assert normalized(Run(exchange).feed(*chunks)) == normalized(Run(exchange).feed(*pieces))


def test_framer_fields_comments_and_multiline_data() -> None:
    framer = SSEFramer()
    stream = (b": comment\n\nevent: x\nid: 7\ndata: {\"a\":\ndata: 1}\n\nretry: 5\n\n"
              b"data:no-space\r\n\r\ndata: tail")
    assert framer.feed(stream) == ['{"a":\n1}', "no-space"]
    assert framer.pending() == b"data: tail"
    assert framer.feed(b"\r") == [] and framer.feed(b"\n\r\n") == ["tail"]


# -- failures ---------------------------------------------------------------------------------

def error_of(run: Run) -> dict[str, Any]:
    payloads = run.payloads
    assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1
    last = json.loads(payloads[-2])
    assert set(last) == {"error"} and set(last["error"]) == {"message", "type", "param", "code"}
    return last["error"]


def test_backend_error_event_mid_stream() -> None:
    exchange = make_exchange()
    events = backend_stream(f"{A}Thinking hard{F}never")[:5]
    run = Run(exchange).feed(*events, b'data: {"error": "CUDA out of memory"}\n\n',
                             *backend_stream("ignored"))
    error = error_of(run)
    assert error["code"] == "upstream_error" and "CUDA out of memory" in error["message"]
    sent = assemble(run.chunks[:-1], exchange.reply.keys)["message"]
    assert sent["reasoning"] == "Thinking hard"
    assert run.result.error == error["message"] and run.result.finish_reason is None
    assert run.outputs[-1] == []  # nothing after the error, even at the end of the body


def test_backend_ends_without_finish_event() -> None:
    run = Run(make_exchange()).feed(*backend_stream(f"{A}cut{F}short")[:-1])
    assert error_of(run)["code"] == "upstream_incomplete"


def test_unreadable_backend_event() -> None:
    run = Run(make_exchange()).feed(backend_event("<|channel|>"), b"data: {not json\n\n")
    error = error_of(run)
    assert error["code"] == "upstream_error" and "{not json" in error["message"]


def test_stripped_control_tokens_explained() -> None:
    """Stock transformers serve strips <|channel|> etc.: the stream says how to fix it."""
    pieces = ["analysis", "User", " asks", ".", "assistant", "final", "4"]
    run = Run(make_exchange()).feed(*(backend_event(p) for p in pieces),
                                    backend_event("", "stop"))
    error = error_of(run)
    assert error["code"] == "harmony_tokens_stripped" and "prepare" in error["message"]
    assert run.result.error == error["message"]


def test_done_from_backend_tolerated_and_data_after_end_ignored() -> None:
    exchange = make_exchange()
    events = backend_stream(f"{A}a{F}b")
    run = Run(exchange).feed(*events, b"data: [DONE]\n\n", backend_event("late"))
    assert_matches_non_stream(run, exchange, whole_output(f"{A}a{F}b"))
    assert run.outputs[-2:] == [[], []]


def test_abort_ends_an_open_stream_once() -> None:
    exchange = make_exchange()
    run = Run(exchange).feed(*backend_stream(f"{A}partial thought{F}x")[:4], end=False)
    tail = run.translator.abort("Client disconnected.")
    run.outputs.append([tail])
    error = error_of(run)
    assert error["code"] == "stream_interrupted" and "Client disconnected." in error["message"]
    assert run.result.message.reasoning == ["partial"]
    assert run.translator.abort("again") == b"" and run.translator(b"") == []


def test_abort_after_a_complete_stream_sends_nothing() -> None:
    exchange = make_exchange()
    run = Run(exchange).feed(*backend_stream(f"{A}a{F}b"))
    assert run.translator.abort("Client disconnected.") == b""
    assert run.result.error is None and run.result.finish_reason == "stop"


# -- keep-alives ------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("hidden", [True, False], ids=["hidden", "shown"])
def test_keepalive_only_while_nothing_is_sent(hidden: bool) -> None:
    clock = Clock()
    body = {"include_reasoning": False} if hidden else {}
    exchange = make_exchange(**body)
    run = Run(exchange, keepalive_seconds=10, clock=clock)
    text = f"{A}{'word ' * 30}{F}Done."
    sent_at = []
    for event in backend_stream(text):
        clock.now += 1
        run.feed(event, end=False)
        if run.outputs[-1]:
            sent_at.append((clock.now, run.outputs[-1]))
    run.feed()
    keepalives = sum(out.count(KEEPALIVE) for out in run.outputs)
    for (before, _), (now, out) in zip(sent_at, sent_at[1:], strict=False):
        assert KEEPALIVE not in out or (out == [KEEPALIVE] and now - before >= 10)
    if hidden:
        # 33 silent tokens (3 header + 30 hidden words + the final header) at 1 s: one per 10 s.
        assert keepalives == 3
        assert not any(k in c["choices"][0]["delta"] for c in run.chunks[:-1]
                       for k in ("reasoning", "reasoning_content"))
    else:
        assert keepalives == 0
    assert run.result.keepalives == keepalives
    assert_matches_non_stream(run, exchange, whole_output(text))


def test_idle_sends_the_start_then_keepalives_until_the_reply_ends() -> None:
    """What the heartbeat writes while the model server prefills: the reply's start once,
    then a keep-alive per interval of silence; nothing once the reply is over."""
    clock = Clock()
    exchange = make_exchange()
    run = Run(exchange, keepalive_seconds=10, clock=clock)

    def idle() -> bytes:  # written to the client between the translator's own outputs
        data = run.translator.idle()
        run.outputs.append([data] if data else [])
        return data

    assert idle() == b"".join(exchange.reply.start())
    clock.now += 9
    assert idle() == b""
    clock.now += 1
    assert idle() == KEEPALIVE
    run.feed(*backend_stream(f"{A}Thinking.{F}Done."))
    clock.now += 60
    assert idle() == b"" and run.result.keepalives == 1
    assert_matches_non_stream(run, exchange, whole_output(f"{A}Thinking.{F}Done."))


def test_done_constant_is_the_sse_terminator() -> None:
    assert DONE == b"data: [DONE]\n\n" and KEEPALIVE.startswith(b":")


# -- delivery after an upstream break -----------------------------------------------------------

@pytest.mark.parametrize(("http2", "chunked", "data"), [
    (False, False, b"data: x\n\n"), (True, True, b"data: x\n\n"), (False, True, b"")])
def test_send_last_chunk_only_to_live_chunked_http1(http2: bool, chunked: bool,
                                                    data: bytes) -> None:
    flow = tflow.tflow(resp=True)
    if http2:
        flow.request.http_version = "HTTP/2.0"
    if chunked:
        flow.response.headers["transfer-encoding"] = "chunked"
    assert send_last_chunk(flow, data) is False


def test_send_last_chunk_without_a_live_connection() -> None:
    flow = tflow.tflow(resp=True)
    flow.response.headers["transfer-encoding"] = "chunked"
    with taddons.context():
        assert send_last_chunk(flow, b"data: x\n\n") is False
