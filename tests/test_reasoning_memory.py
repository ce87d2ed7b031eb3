"""Reasoning carry-over (``reasoning_memory.py``): the analysis before the tool calls the proxy
issued, restored into histories whose client dropped it.

The memory is filled the way the proxy fills it, by the real translation of model output
(``translate_completion``, the stream translator), and the restored history is rendered by the
real ``render_prompt``: a client that drops reasoning must get, token for token, the prompt of a
client that sends ``reasoning_content`` back.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from harmony_groq.backends import TransformersBackend
from harmony_groq.chat_request import parse_chat_request
from harmony_groq.dialects.chat import ChatReply
from harmony_groq.encoding import harmony_encoding
from harmony_groq.parse import ToolCall
from harmony_groq.reasoning_memory import ReasoningMemory
from harmony_groq.render import render_prompt
from harmony_groq.state.memory import Lru, json_size
from harmony_groq.translate import HarmonyExchange, translate_completion

from test_streaming import DATE, WEATHER, Run, backend_stream, whole_output


def analysis(text: str) -> str:
    return f"<|channel|>analysis<|message|>{text}<|end|><|start|>assistant"


def calls(*cities: str) -> str:
    return "<|start|>assistant".join(
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        f'{{"city": "{city}"}}<|call|>' for city in cities)


def final(text: str) -> str:
    return f"<|channel|>final<|message|>{text}<|return|>"


def issued(n: int, *, name: str = "get_weather", arguments: str = '{"city": "Paris"}'
           ) -> ToolCall:
    return ToolCall(n, f"call_{n:024d}", name, arguments)


def sent(*tool_calls: ToolCall, **extra: Any) -> dict[str, Any]:
    """The assistant message a client sends back for ``tool_calls``: content and calls only."""
    return {"role": "assistant", "content": "", **extra, "tool_calls": [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in tool_calls]}


def result(call: ToolCall) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


USER = {"role": "user", "content": "Weather?"}


def restore(memory: ReasoningMemory, messages: list[dict[str, Any]]
            ) -> tuple[list[dict[str, Any]], list[str]]:
    return asyncio.run(memory.restore(messages))


def kept(memory: ReasoningMemory) -> Lru:
    """What the memory's in-process store keeps."""
    return memory.namespace.store.namespaces["reason"]


def turn_size(reasoning: str, *tool_calls: ToolCall) -> int:
    return json_size({"reasoning": reasoning,
                      "calls": [[c.id, c.name, c.arguments] for c in tool_calls]})


# -- the memory ------------------------------------------------------------------------------

def test_restores_the_analysis_of_an_issued_call_without_touching_the_clients_body() -> None:
    memory = ReasoningMemory.in_memory()
    call = issued(1)
    memory.remember("Need the weather.", [call])
    messages = [USER, sent(call), result(call)]
    before = copy.deepcopy(messages)
    restored_messages, restored = restore(memory, messages)
    assert restored_messages[1] == {**sent(call), "reasoning": "Need the weather."}
    assert restored_messages[0] is messages[0] and restored_messages[2] is messages[2]
    assert restored == [f"messages[1]: the analysis before tool call {call.id} (17 characters) "
                        "restored; the client sent the call without it"]
    assert messages == before  # copy-on-write: the flow log keeps the request as sent


@pytest.mark.parametrize("message", [
    sent(issued(9)),                                              # an id the proxy never issued
    sent(issued(1, name="get_time")),                              # another function
    sent(issued(1, arguments='{"city": "Lyon"}')),                 # other arguments
    sent(issued(1, arguments='{"city": "Paris"')),                 # not the same JSON
    {**sent(issued(1)), "tool_calls": [{"id": issued(1).id, "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]},  # arguments as an object
    {**sent(issued(1)), "role": "user"},
    sent(),                                                        # no calls at all
])
def test_anything_but_an_issued_call_as_issued_changes_nothing(message: dict) -> None:
    memory = ReasoningMemory.in_memory()
    memory.remember("Need the weather.", [issued(1)])
    messages = [USER, message]
    assert restore(memory, messages) == (messages, [])


def test_the_same_arguments_re_serialised_are_the_call_as_issued() -> None:
    """The Messages dialect hands a call out as parsed ``input`` and gets it back compact."""
    memory = ReasoningMemory.in_memory()
    memory.remember("Need the weather.", [issued(1)])
    messages = [USER, sent(issued(1, arguments='{"city":"Paris"}')), result(issued(1))]
    restored_messages, restored = restore(memory, messages)
    assert restored_messages[1]["reasoning"] == "Need the weather." and len(restored) == 1


@pytest.mark.parametrize("own", [{"reasoning_content": "My own words."},
                                 {"reasoning": "My own words."}, {"thinking": "My own words."},
                                 {"reasoning_details": [{"type": "reasoning.text",
                                                         "text": "My own words."}]}])
def test_a_clients_own_reasoning_is_kept_never_doubled(own: dict) -> None:
    memory = ReasoningMemory.in_memory()
    memory.remember("Need the weather.", [issued(1)])
    messages = [USER, sent(issued(1), **own)]
    assert restore(memory, messages) == (messages, [])


def test_several_calls_get_the_analysis_once_before_the_first() -> None:
    memory = ReasoningMemory.in_memory()
    first, second = issued(1), issued(2, arguments='{"city": "Lyon"}')
    memory.remember("Both cities.", [first, second])
    together, _ = restore(memory, [USER, sent(first, second)])
    assert together[1]["reasoning"] == "Both cities."
    # A client that split the reply into one message per call: the first message gets it.
    split, restored = restore(memory, [USER, sent(first), result(first), sent(second)])
    assert split[1]["reasoning"] == "Both cities." and "reasoning" not in split[3]
    assert len(restored) == 1
    for alone in ([USER, sent(second)], [USER, sent(second, first)],
                  [USER, sent(first, issued(3))]):
        assert restore(memory, alone) == (alone, [])


def test_analysis_before_the_last_final_answer_is_left_out() -> None:
    memory = ReasoningMemory.in_memory()
    old, new = issued(1), issued(2, arguments='{"city": "Lyon"}')
    memory.remember("Paris first.", [old])
    memory.remember("Now Lyon.", [new])
    messages = [USER, sent(old), result(old), {"role": "assistant", "content": "Sunny."},
                {"role": "user", "content": "And Lyon?"}, sent(new), result(new)]
    restored_messages, restored = restore(memory, messages)
    assert "reasoning" not in restored_messages[1]
    assert restored_messages[5]["reasoning"] == "Now Lyon."
    assert [line.split(":")[0] for line in restored] == ["messages[5]"]


def test_lru_by_size() -> None:
    a, b, c = issued(1), issued(2), issued(3)
    size = turn_size("x" * 100, a)
    memory = ReasoningMemory.in_memory(budget_bytes=2 * size)
    memory.remember("a" * 100, [a])
    memory.remember("b" * 100, [b])
    assert restore(memory, [sent(a)])[1]  # a is now the most recently used
    memory.remember("c" * 100, [c])
    assert kept(memory).size == 2 * size
    assert [bool(restore(memory, [sent(t)])[1]) for t in (a, b, c)] == [True, False, True]
    memory.remember("d" * 2 * size, [issued(4)])  # larger than the whole budget: not kept
    assert kept(memory).size == 2 * size and len(kept(memory).entries) == 2


def test_nothing_to_keep_and_disabled() -> None:
    memory = ReasoningMemory.in_memory()
    memory.remember("", [issued(1)])        # a forced call: the model wrote no analysis
    memory.remember("Thinking.", [])        # a final answer: its analysis is dropped anyway
    assert not kept(memory).entries and kept(memory).size == 0
    disabled = ReasoningMemory.in_memory(budget_bytes=0)
    disabled.remember("Need the weather.", [issued(1)])
    assert restore(disabled, [sent(issued(1))])[1] == []


def test_a_reused_id_replaces_its_turn() -> None:
    memory = ReasoningMemory.in_memory()
    memory.remember("First thought.", [issued(1)])
    memory.remember("Second thought.", [issued(1)])
    assert kept(memory).size == turn_size("Second thought.", issued(1))
    assert restore(memory, [sent(issued(1))])[0][0]["reasoning"] == "Second thought."


# -- filled by the real translation, rendered by the real renderer ---------------------------

# A tool chain (four replies with calls, one of them two calls) and a final answer in the middle:
# the analysis before that answer is dropped by harmony's rule, the open chain's must be there.
REPLIES = [
    analysis("Paris first.") + calls("Paris"),
    analysis("Now Lyon and Nice.") + calls("Lyon", "Nice"),
    analysis("All three known.") + final("Sunny everywhere."),
    analysis("Rome, then Oslo.") + calls("Rome"),
    analysis("Oslo next.") + calls("Oslo"),
    analysis("Done.") + final("Sunny in Rome and Oslo."),
]


def chain(*, send_reasoning: bool, memory: ReasoningMemory | None, stream: bool = False
          ) -> tuple[list[list[int]], list[list[str]]]:
    """An agent loop over ``REPLIES``: each turn's prompt ids and what was restored."""
    backend = TransformersBackend()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    prompts, restored_per_turn = [], []
    for text in REPLIES:
        request = parse_chat_request({"model": "gpt-oss-20b", "messages": messages,
                                      "tools": [WEATHER], "stream": stream})
        restored: list[str] = []
        if memory is not None:
            restored_messages, restored = restore(memory, request.messages)
            request = parse_chat_request({"model": "gpt-oss-20b", "messages": restored_messages,
                                          "tools": [WEATHER], "stream": stream})
        prompt = render_prompt(request, DATE, backend.text_transport)
        prompts.append(prompt.token_ids)
        restored_per_turn.append(restored)
        exchange = HarmonyExchange(request, prompt, backend, ChatReply.for_request(request, "both"),
                                   memory=memory)
        if stream:
            message = Run(exchange).feed(*backend_stream(text)).result.client_message()
        else:
            body = translate_completion(exchange, whole_output(text)).body
            message = body["choices"][0]["message"]
        back = {"role": "assistant", "content": message["content"] or ""}
        if message.get("tool_calls"):
            back["tool_calls"] = message["tool_calls"]
        if send_reasoning:
            back["reasoning_content"] = message["reasoning_content"]
        messages.append(back)
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": "sunny"}
                     for c in message.get("tool_calls") or []]
        if not message.get("tool_calls"):
            messages.append({"role": "user", "content": "And Rome and Oslo?"})
    return prompts, restored_per_turn


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_drops_reasoning_gets_the_prompt_of_one_that_sends_it(stream: bool
                                                                             ) -> None:
    sends, _ = chain(send_reasoning=True, memory=None, stream=stream)
    drops, restored = chain(send_reasoning=False, memory=ReasoningMemory.in_memory(), stream=stream)
    blind, _ = chain(send_reasoning=False, memory=None, stream=stream)
    assert drops == sends  # token for token, every turn
    assert blind[1:] != sends[1:]
    assert [len(r) for r in restored] == [0, 1, 2, 0, 1, 2]
    decode = harmony_encoding().decode
    last = decode(drops[-1])
    assert "Rome, then Oslo." in last and "Oslo next." in last
    assert "Paris first." not in last and "Now Lyon and Nice." not in last
    assert "Now Lyon and Nice." in decode(drops[2])


def test_a_failed_stream_remembers_nothing() -> None:
    memory = ReasoningMemory.in_memory()
    request = parse_chat_request({"model": "gpt-oss-20b", "tools": [WEATHER], "stream": True,
                                  "messages": [{"role": "user", "content": "Paris?"}]})
    backend = TransformersBackend()
    exchange = HarmonyExchange(request, render_prompt(request, DATE, True), backend,
                               ChatReply.for_request(request, "both"),
                               memory=memory)
    events = backend_stream(REPLIES[0])
    Run(exchange).feed(*events[:-1])  # the server never finished: the call is not the client's
    assert not kept(memory).entries
