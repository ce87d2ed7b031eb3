"""Unit tests of the Harmony content view and the flow labels, on flows made by the real hooks."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import contentviews, http
from mitmproxy.addons.view import View
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils
from openai_harmony import StreamableParser

from harmony_groq.addon import Gateway
from harmony_groq.chat_request import parse_chat_request
from harmony_groq.encoding import harmony_encoding
from harmony_groq.labels import MARKERS, FlowLabels, StreamCopy, flow_label
from harmony_groq.records import flow_record
from harmony_groq.render import render_prompt
from harmony_groq.settings import Settings
from harmony_groq.views import OUTSIDE, HarmonyContentview, HarmonyMessage, split_messages

from fakes import FakeTransformers, token_pieces

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CHATS = [
    {"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "gpt-oss-20b", "reasoning_effort": "high", "tools": [WEATHER_TOOL], "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 °C"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Text with <|end|> inside\nand two lines"}]},
]
GENERATED = ("<|channel|>analysis<|message|>User greets.<|end|><|start|>assistant"
             "<|channel|>final<|message|>Hello there!")


@pytest.mark.parametrize("chat", CHATS)
def test_split_agrees_with_openai_harmony_on_rendered_prompts(chat: dict) -> None:
    prompt = render_prompt(parse_chat_request(chat), "2026-01-15", True)
    parser = StreamableParser(harmony_encoding(), None, strict=False)
    for token in prompt.token_ids:
        parser.process(token)
    expected = [HarmonyMessage(
        author=m.author.name or m.author.role.value, channel=m.channel, recipient=m.recipient,
        content_type=(m.content_type or "").replace("<|constrain|>", "") or None,
        content="".join(c.text for c in m.content), end=None) for m in parser.messages]
    split = split_messages(prompt.text)
    assert [(m.author, m.channel, m.recipient, m.content_type, m.content) for m in split[:-1]] \
        == [(m.author, m.channel, m.recipient, m.content_type, m.content) for m in expected]
    # The prompt ends by opening the assistant's reply: a header without a body.
    assert (split[-1].author, split[-1].has_body) == ("assistant", False)


_words = st.text(st.characters(codec="utf-8", exclude_characters="<|>\x00"), max_size=30)
_generated_message = st.tuples(
    st.sampled_from(["analysis", "commentary", "final"]),
    st.one_of(st.none(), st.sampled_from(["functions.get_weather", "browser.search"])),
    st.one_of(st.none(), st.just("json")),
    _words,
    st.sampled_from(["end", "call", "return"]),
)


@given(st.lists(_generated_message, min_size=1, max_size=5))
def test_split_round_trips_well_formed_generations(messages: list[tuple]) -> None:
    text = "".join(
        ("" if n == 0 else "<|start|>assistant") + f"<|channel|>{channel}"
        + (f" to={recipient}" if recipient else "")
        + (f" <|constrain|>{ctype}" if ctype else "") + f"<|message|>{content}<|{end}|>"
        for n, (channel, recipient, ctype, content, end) in enumerate(messages))
    split = split_messages(text, first_author="assistant")
    assert [(m.author, m.channel, m.recipient, m.content_type, m.content, m.end) for m in split] \
        == [("assistant", *message) for message in messages]


@pytest.mark.parametrize(("text", "expected"), [
    ("Hello<|end|>", [HarmonyMessage(OUTSIDE, content="Hello")]),
    ("<|channel|>analysis<|message|>a<|start|>assistant<|channel|>final<|message|>b",
     [HarmonyMessage("", "analysis", content="a"), HarmonyMessage("assistant", "final",
                                                                  content="b")]),
    ("<|channel|>final<|message|>x <|message|>y<|end|>",
     [HarmonyMessage("", "final", content="x <|message|>y", end="end")]),
    ("<|start|>assistant<|channel|>commentary to=functions.f",
     [HarmonyMessage("assistant", "commentary", "functions.f", has_body=False)]),
])
def test_split_shows_malformed_output_as_generated(text: str, expected: list) -> None:
    assert split_messages(text) == expected


@pytest.fixture()
def hooks(fake_transformers: FakeTransformers, tmp_path) -> Iterator[tuple]:
    """The real Settings, Gateway and FlowLabels hooks, with mitmweb's flow store and the view
    registered as ``addons/harmony.py`` does."""
    contentviews.add(HarmonyContentview)
    settings, labels = Settings(), FlowLabels(keep_bytes=300)
    gateway = Gateway(settings)
    old = dict(os.environ)
    os.environ.pop("GROQ_API_KEY", None)
    try:
        with taddons.context(settings, gateway, labels, View()) as tctx:
            tctx.options.mode = ["reverse:http://127.0.0.1:9@127.0.0.1:0"]
            tctx.configure(settings, transformers_url=fake_transformers.url, log_file="",
                           harmony_date="2026-01-15", groq_base_url="http://127.0.0.1:9/v1")
            yield gateway, labels
    finally:
        os.environ.clear()
        os.environ.update(old)


def _chat_flow(body: dict) -> http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(
        method=b"POST", path=b"/v1/chat/completions", content=json.dumps(body).encode(),
        headers=http.Headers(host="127.0.0.1:3307", authorization="Bearer sk-client")))
    flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:9")
    flow.request.timestamp_start = time.time()
    return flow


def _lines_of(messages: list[HarmonyMessage]) -> list[str]:
    return [line for m in messages for line in m.content.splitlines() if line.strip()]


def test_view_shows_both_sides_of_a_gpt_oss_flow(hooks, fake_transformers) -> None:
    gateway, labels = hooks
    fake_transformers.script(GENERATED)
    flow = _chat_flow(CHATS[1])
    asyncio.run(gateway.requests.request(flow))
    gateway.replies.response(flow)
    labels.response(flow)
    assert flow.response is not None and flow.response.status_code == 200

    request = contentviews.prettify_message(flow.request, flow)
    assert request.view_name == "Harmony"
    prompt = fake_transformers.prompts[-1]
    shown = request.text.splitlines()
    messages = split_messages(prompt)
    headers = [line.split(" · ")[0] for line in shown if line.startswith("── [")]
    assert headers == [f"── [{n}] {m.author}" for n, m in enumerate(messages, 1)]
    for line in _lines_of(messages):
        assert "   " + line in shown
    assert "── [2] developer" in request.text and "to=functions.get_weather" in request.text
    client = request.text.split("OPENAI REQUEST FROM THE CLIENT → POST /v1/chat/completions\n")[1]
    assert json.loads(client) == CHATS[1]

    response = contentviews.prettify_message(flow.response, flow)
    assert response.view_name == "Harmony"
    record = flow_record(flow)
    assert "   " + record["upstream_response"]["text"] in response.text
    assert "── [1] assistant · channel=analysis\n   User greets." in response.text
    assert "── [2] assistant · channel=final · no end token\n   Hello there!" in response.text
    assert f"PARSER REPAIRS ({len(record['repairs'])})" in response.text
    sent = json.loads(response.text.split("OPENAI RESPONSE TO THE CLIENT (200)\n")[1])
    assert sent == json.loads(flow.response.content)

    usage = sent["usage"]
    tokens = f"{usage['prompt_tokens']}→{usage['completion_tokens']} tok"
    assert re.fullmatch(re.escape(f"gpt-oss · gpt-oss-20b · 200 · {tokens}") + r" · TTFT \d+ ms",
                        flow.comment)
    assert flow.marked == MARKERS["gpt-oss"]


def test_view_lists_repairs(hooks, fake_transformers) -> None:
    gateway, _ = hooks
    fake_transformers.script("<|channel|>analysis<|message|>hmm<|start|>assistant"
                             "<|channel|>final<|message|>ok")
    flow = _chat_flow(CHATS[0])
    asyncio.run(gateway.requests.request(flow))
    gateway.replies.response(flow)
    repairs = flow_record(flow)["repairs"]
    assert repairs
    text = contentviews.prettify_message(flow.response, flow).text
    assert f"PARSER REPAIRS ({len(repairs)})\n" + "\n".join(f"   - {r}" for r in repairs) in text
    assert "── [1] assistant · channel=analysis · no end token\n   hmm" in text


def test_view_and_label_say_when_reasoning_was_restored(hooks, fake_transformers) -> None:
    gateway, labels = hooks
    fake_transformers.script("<|channel|>analysis<|message|>Need Paris.<|end|><|start|>assistant"
                             "<|channel|>commentary to=functions.get_weather <|constrain|>json"
                             '<|message|>{"city": "Paris"}<|call|>', GENERATED)
    body = {"model": "gpt-oss-20b", "tools": [WEATHER_TOOL],
            "messages": [{"role": "user", "content": "Paris?"}]}
    first = _chat_flow(body)

    async def agent() -> http.HTTPFlow:  # one loop: the gateway's HTTP client lives in it
        await gateway.requests.request(first)
        gateway.replies.response(first)
        (call,) = json.loads(first.response.content)["choices"][0]["message"]["tool_calls"]
        again = _chat_flow({**body, "messages": body["messages"] + [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]})
        await gateway.requests.request(again)
        gateway.replies.response(again)
        return again

    second = asyncio.run(agent())
    labels.response(second)

    text = contentviews.prettify_message(second.request, second).text
    (line,) = flow_record(second)["restored_reasoning"]
    assert f"REASONING RESTORED (1) from the proxy's memory\n   - {line}\n" in text
    assert "── [4] assistant · channel=analysis\n   Need Paris." in text
    assert " · reasoning restored ×1 · " in second.comment
    first_text = contentviews.prettify_message(first.request, first).text
    assert "REASONING RESTORED" not in first_text


def _sse(text: str, fake: FakeTransformers) -> list[bytes]:
    """The events ``transformers serve`` streams for ``text``, one network chunk each."""
    events = [{"choices": [{"index": 0, "text": piece}]} for piece in token_pieces(text)]
    events.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 50, "completion_tokens": len(events)}})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events]


def test_streamed_flow_keeps_a_bounded_copy_and_is_assembled(hooks, fake_transformers) -> None:
    gateway, labels = hooks
    flow = _chat_flow({**CHATS[0], "stream": True})
    asyncio.run(gateway.requests.request(flow))
    flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})

    async def headers() -> None:  # on an event loop, as mitmproxy runs its hooks
        gateway.replies.responseheaders(flow)
        labels.responseheaders(flow)

    asyncio.run(headers())
    stream = flow.response.stream
    assert isinstance(stream, StreamCopy)
    sent = b"".join(b"".join(stream(chunk)) for chunk in [*_sse(GENERATED, fake_transformers),
                                                            b""])
    flow.response.data.content = None  # mitmproxy stores nothing for a streamed body
    gateway.replies.response(flow)
    labels.response(flow)

    assert len(sent) > 300
    kept = flow.response.raw_content
    assert kept.startswith(sent[:300]) and sent[300:] not in kept
    assert f"{len(sent) - 300} more bytes were sent to the client" in kept.decode()
    text = contentviews.prettify_message(flow.response, flow).text
    assert "── [2] assistant · channel=final · no end token\n   Hello there!" in text
    assembled = json.loads(text.split("for the Raw view), assembled\n")[1].split("\n\n")[0])
    assert assembled["message"]["content"] == "Hello there!"
    assert assembled["finish_reason"] == "stop"
    assert " · 50→" in flow.comment


def test_stream_copy_passes_chunks_through_unchanged() -> None:
    outputs = iter([[b"a", b""], b"bc", [], None])
    copy = StreamCopy(lambda data: next(outputs), limit=2)
    assert [copy(b"x") for _ in range(4)] == [[b"a"], [b"bc"], [], []]
    assert copy.body().startswith(b"ab\n\n: [mitmweb copy cut here: 1 more bytes")
    passthrough = StreamCopy(True, limit=10)
    assert passthrough(b"raw") == [b"raw"] and passthrough(b"") == []
    assert passthrough.body() == b"raw"


def test_other_flows_keep_their_usual_views_and_get_labels(hooks) -> None:
    gateway, labels = hooks
    flow = _chat_flow({"model": "llama-3.3-70b-versatile", "messages": [
        {"role": "user", "content": "hi"}]})
    asyncio.run(gateway.requests.request(flow))  # no GROQ_API_KEY: answered locally with a 503
    labels.response(flow)
    assert flow.response is not None
    view = HarmonyContentview()
    for message in (flow.request, flow.response):
        assert view.render_priority(message.content or b"", contentviews.Metadata(flow=flow)) < 0
        assert contentviews.prettify_message(message, flow).view_name != "Harmony"
        with pytest.raises(ValueError, match="not a gpt-oss flow"):
            view.prettify(message.content or b"", contentviews.Metadata(flow=flow))
    summary = flow_record(flow)
    assert flow.comment == flow_label(summary)
    assert flow.comment.startswith("groq · llama-3.3-70b-versatile · 503 · GROQ_API_KEY is not")
    assert flow.comment.endswith("…") and len(flow.comment) < 120
    assert flow.marked == MARKERS["groq"]


@pytest.mark.parametrize("stream", [False, True])
def test_view_of_an_anthropic_messages_flow(hooks, fake_transformers, stream: bool) -> None:
    gateway, labels = hooks
    fake_transformers.script(GENERATED)
    body = {"model": "gpt-oss-20b", "max_tokens": 100, "stream": stream, "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    flow = _chat_flow(body)
    flow.request.path = "/v1/messages?beta=true"
    asyncio.run(gateway.requests.request(flow))
    if stream:
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})

        async def headers() -> None:
            gateway.replies.responseheaders(flow)
            labels.responseheaders(flow)

        asyncio.run(headers())
        for chunk in [*_sse(GENERATED, fake_transformers), b""]:
            flow.response.stream(chunk)
        flow.response.data.content = None
    gateway.replies.response(flow)
    labels.response(flow)

    request = contentviews.prettify_message(flow.request, flow)
    assert request.view_name == "Harmony" and "# Instructions\n   \n   Be brief." in request.text
    client = request.text.split(
        "ANTHROPIC MESSAGES REQUEST FROM THE CLIENT → POST /v1/messages?beta=true\n")[1]
    assert json.loads(client) == body
    response = contentviews.prettify_message(flow.response, flow).text
    assert "── [2] assistant · channel=final · no end token\n   Hello there!" in response
    title = "ANTHROPIC MESSAGES RESPONSE TO THE CLIENT (200"
    shown = json.loads(response.split(title)[1].split("\n", 1)[1].split("\n\n")[0])
    if stream:
        assert shown["message"] == {"role": "assistant", "content": "Hello there!",
                                    "thinking": "User greets."}
    else:
        assert [block["type"] for block in shown["content"]] == ["thinking", "text"]
    assert flow.comment.startswith("gpt-oss · gpt-oss-20b · 200 · ")
