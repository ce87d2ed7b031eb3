"""Reasoning carry-over end to end: a Continue-style agent loop written with the openai SDK
sends its tool-call turns back with ``content`` and ``tool_calls`` only; the real mitmdump with
the addon restores the analysis it issued them with, so the fake ``transformers serve`` gets
the same prompts as from a loop that sends ``reasoning_content`` back.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from fakes import FakeTransformers
from test_harmony_e2e import WEATHER_TOOL

# A three-step chain: two tool calls, then the answer.
STEPS = (
    "<|channel|>analysis<|message|>Paris first.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>',
    "<|channel|>analysis<|message|>Paris is sunny; now Lyon.<|end|><|start|>assistant"
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Lyon"}'
    "<|call|>",
    "<|channel|>analysis<|message|>Both known.<|end|><|start|>assistant<|channel|>final"
    "<|message|>Sunny in both.<|return|>",
)


def ask(client: openai.OpenAI, messages: list[dict[str, Any]], stream: bool
        ) -> dict[str, Any]:
    """One turn, assembled the way an agent does: content, reasoning and the calls."""
    kwargs: dict[str, Any] = {"model": "gpt-oss-20b", "messages": messages,
                              "tools": [WEATHER_TOOL]}
    if not stream:
        message = client.chat.completions.create(**kwargs).choices[0].message
        return {"content": message.content or "",
                "reasoning": message.model_extra.get("reasoning_content", ""),
                "tool_calls": [c.model_dump() for c in message.tool_calls or []]}
    reply: dict[str, Any] = {"content": "", "reasoning": "", "tool_calls": []}
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reply["content"] += delta.content or ""
        reply["reasoning"] += (delta.model_extra or {}).get("reasoning_content") or ""
        reply["tool_calls"] += [{"id": c.id, "type": "function", "function": {
            "name": c.function.name, "arguments": c.function.arguments}}
            for c in delta.tool_calls or []]  # the proxy sends each call whole
    return reply


def agent_loop(client: openai.OpenAI, *, send_reasoning: bool, stream: bool) -> str:
    """Continue's loop: append the assistant turn (``content`` and ``tool_calls``, plus
    ``reasoning_content`` only if asked), run the tools, ask again until an answer."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Lyon?"}]
    for _ in STEPS:
        reply = ask(client, messages, stream)
        if not reply["tool_calls"]:
            return reply["content"]
        turn = {"role": "assistant", "content": reply["content"],
                "tool_calls": reply["tool_calls"]}
        if send_reasoning:
            turn["reasoning_content"] = reply["reasoning"]
        messages.append(turn)
        for call in reply["tool_calls"]:
            city = json.loads(call["function"]["arguments"])["city"]
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": f"sunny in {city}"})
    raise AssertionError("the loop never got an answer")


@pytest.mark.parametrize("stream", [False, True])
def test_a_loop_that_drops_reasoning_gets_it_back(proxy, client: openai.OpenAI,
                                                  fake_transformers: FakeTransformers,
                                                  stream: bool) -> None:
    fake_transformers.script(*STEPS, *STEPS)
    before = proxy.log_mark()
    assert agent_loop(client, send_reasoning=False, stream=stream) == "Sunny in both."
    assert agent_loop(client, send_reasoning=True, stream=stream) == "Sunny in both."
    prompts = fake_transformers.prompts
    assert len(prompts) == 6
    assert prompts[:3] == prompts[3:]
    assert "Paris first." in prompts[1]
    assert "Paris first." in prompts[2] and "Paris is sunny; now Lyon." in prompts[2]

    records = proxy.log_records(wait_for=before + 6)[before:]
    assert [r["prompt"] for r in records] == prompts
    assert [len(r.get("restored_reasoning", [])) for r in records] == [0, 1, 2, 0, 0, 0]
    assert "(12 characters) restored" in records[1]["restored_reasoning"][0]
    # The log keeps the client's request as sent: no reasoning the client did not send.
    sent = records[2]["client_request"]["body"]["messages"]
    assert [m for m in sent if m["role"] == "assistant" and set(m) & {
        "reasoning", "reasoning_content"}] == []


def test_a_memory_of_zero_bytes_restores_nothing(start_proxy, fake_transformers: FakeTransformers
                                                 ) -> None:
    proxy = start_proxy(options={"reasoning_memory_bytes": "0"})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="unused", max_retries=0, timeout=20)
    fake_transformers.script(*STEPS)
    agent_loop(client, send_reasoning=False, stream=False)
    assert "Paris first." not in fake_transformers.prompts[1]
    records = [r for r in proxy.log_records(wait_for=proxy.log_mark())
               if r["route"] == "gpt-oss"]
    assert [r.get("restored_reasoning") for r in records] == [None] * 3
