"""Spill-over's pure parts: Groq's limit headers, the budget's guarantee, the sticky store and
conversation keys, the Groq-bound request and the reply wrapper."""

from __future__ import annotations

from typing import Any

import pytest

from harmony_groq.chat_request import parse_chat_request
from harmony_groq.completion import AssembledMessage
from harmony_groq.dialects.base import Outcome
from harmony_groq.dialects.chat import ChatReply
from harmony_groq.parse import ContentDelta, ToolCall
from harmony_groq.spill.limits import (
    MIN_COMPLETION,
    GroqLimits,
    SpillBudget,
    go_duration,
)
from harmony_groq.spill.request import SpillReply, carry_reasoning, spill_body
from harmony_groq.spill.sticky import conversation_keys, reply_keys


@pytest.mark.parametrize(("value", "seconds"), [
    ("2", 2.0), ("7.66s", 7.66), ("33ms", 0.033), ("2m59.56s", 179.56), ("1h2m", 3720.0),
    ("", None), ("soon", None), ("5x", None), (None, None)])
def test_go_durations(value: str | None, seconds: float | None) -> None:
    assert go_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_limits_refuse_after_429_and_near_the_token_limit() -> None:
    limits = GroqLimits()
    assert limits.refusal(100) is None
    limits.observe(200, {"x-ratelimit-remaining-tokens": "50",
                         "x-ratelimit-reset-tokens": "10s"})
    assert "remaining-tokens: 50" in (limits.refusal(100) or "")
    assert limits.refusal(40) is None
    limits.observe(200, {"x-ratelimit-remaining-tokens": "5000",
                         "x-ratelimit-remaining-requests": "0",
                         "x-ratelimit-reset-requests": "1m"})
    assert "request limit" in (limits.refusal(100) or "")
    limits = GroqLimits()
    limits.observe(429, {"retry-after": "30"})
    assert "retry after 30 s" in (limits.refusal(1) or "")


def test_limits_read_when_asked_keep_each_limits_last_report() -> None:
    # Counts are read when a spill asks: the last answer that reported a limit wins, an answer
    # without it leaves it, and a 429's wait outlives the answers after it.
    limits = GroqLimits()
    limits.observe(200, {"x-ratelimit-remaining-tokens": "5000",
                         "x-ratelimit-remaining-requests": "0",
                         "x-ratelimit-reset-requests": "1m"})
    limits.observe(200, {"x-ratelimit-remaining-tokens": "50", "x-ratelimit-reset-tokens": "9s"})
    limits.observe(502, {"content-type": "text/html"})
    refusal = limits.refusal(10) or ""
    assert "request limit" in refusal
    assert (limits.requests_left, limits.tokens_left) == (0, 50)
    limits = GroqLimits()
    limits.observe(429, {"retry-after": "30"})
    limits.observe(200, {"x-ratelimit-remaining-tokens": "5000",
                         "x-ratelimit-remaining-requests": "100"})
    assert "retry after 30 s" in (limits.refusal(1) or "")


def test_limits_past_their_reset_do_not_refuse() -> None:
    limits = GroqLimits()
    limits.observe(200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "0s"})
    assert limits.refusal(100) is None


def test_budget_reservations_never_pass_the_limit() -> None:
    budget = SpillBudget(limit=1000, window="hour")
    allowance, why = budget.reserve("a", 300, None)
    assert (allowance, why) == (700, None)  # capped: all that is left
    assert budget.reserve("b", 100, None)[1] is not None  # nothing left while "a" is open
    budget.settle("a", 350)
    assert budget.status() == {"limit": 1000, "spent": 350, "reserved": 0, "left": 650}
    allowance, _ = budget.reserve("b", 100, 200)
    assert allowance == 200 and budget.status()["reserved"] == 300
    budget.settle("b", None)  # usage unknown: the reservation counts
    assert budget.status()["spent"] == 650
    _, why = budget.reserve("c", 350 - MIN_COMPLETION + 1, None)
    assert why is not None and "350 tokens left" in why


def test_budget_without_limit_reserves_nothing() -> None:
    budget = SpillBudget()
    assert budget.reserve("a", 10**9, None) == (None, None)
    assert budget.settle("a", 5) is None and budget.status()["left"] == -1


def test_a_spilled_reply_and_the_next_turn_share_a_key() -> None:
    opening: list[dict[str, Any]] = [{"role": "system", "content": "s"},
                                     {"role": "user", "content": "hi  there"}]
    assert conversation_keys(opening) == []  # a new conversation is never sticky
    reply = {"role": "assistant", "content": "Hello!", "reasoning": "dropped by clients",
             "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]}
    put = reply_keys(opening, reply)
    echoed = {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}],
              "tool_calls": reply["tool_calls"]}
    later = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi there"},
             echoed, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]
    assert set(conversation_keys(later)) == set(put) == {"call:call_1", put[-1]}
    other = [{"role": "user", "content": "other"}, echoed]
    assert conversation_keys(other)[-1] != put[-1]


def test_reasoning_carried_for_the_open_chain_only() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "old"},
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "thinking": "plan",
         "reasoning_details": [{"type": "reasoning.encrypted", "data": "x"}],
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    out, notes = carry_reasoning(messages)
    assert out[1] == {"role": "assistant", "content": "Hello!"}
    assert out[3]["reasoning"] == "plan" and "thinking" not in out[3]
    assert "reasoning_details" not in out[3]
    assert notes[0] == ("dropped: messages[1] reasoning (3 characters), before the last final "
                        "answer (harmony drops it too)")
    assert len(notes) == 2 and notes[1].startswith("dropped: messages[3] reasoning_details")
    assert messages[1]["reasoning_content"] == "old"  # the client's request is not changed


def test_spill_body_keeps_what_the_client_asked() -> None:
    request = parse_chat_request({
        "model": "gpt-oss-20b", "messages": [{"role": "user", "content": "hi"}],
        "stream": True, "reasoning_effort": "low", "max_tokens": 900, "temperature": 0.5,
        "stop": ["a", "b", "c", "d", "e"], "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "my.tool", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "my.tool"}}})
    body, names, notes = spill_body(request, "openai/gpt-oss-20b", 500)
    assert body["model"] == "openai/gpt-oss-20b" and body["reasoning_effort"] == "low"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 500 and body["temperature"] == 0.5
    assert body["response_format"] == {"type": "json_object"} and len(body["stop"]) == 4
    safe = body["tools"][0]["function"]["name"]
    assert names == {safe: "my.tool"} and body["tool_choice"]["function"]["name"] == safe
    assert "dropped: stop strings past Groq's 4: ['e']" in notes
    assert any(n.startswith("changed: max_completion_tokens 500") for n in notes)


def test_spill_reply_gives_out_its_own_call_ids() -> None:
    done: list[AssembledMessage] = []
    reply = SpillReply(ChatReply("gpt-oss-20b", ("reasoning",)), done.append)
    groq_call = ToolCall(0, "functions.f:0", "f", "{}")
    message = AssembledMessage(["x"], [], [groq_call])
    body = reply.whole(message, Outcome("tool_calls", 1, 1, 0))
    (call,) = body["choices"][0]["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["id"] != groq_call.id
    assert done[0].tool_calls[0].id == call["id"]
    streamed = SpillReply(ChatReply("gpt-oss-20b", ()), done.append)
    chunks = b"".join(streamed.events([ContentDelta("a"), groq_call]))
    assert call["id"].encode() not in chunks and b"functions.f:0" not in chunks
    streamed.finish(message, Outcome("tool_calls", 1, 1, 0))
    assert done[1].tool_calls[0].id.encode() in chunks


def test_mitmweb_label_says_a_flow_spilled() -> None:
    from harmony_groq.labels import flow_label
    label = flow_label({"route": "groq", "model": "gpt-oss-20b", "status": 200,
                        "spill": {"reason": "saturated"}, "usage": {"prompt_tokens": 9,
                                                                    "completion_tokens": 3}})
    assert label == "groq · gpt-oss-20b · 200 · spilled to Groq (saturated) · 9→3 tok"
