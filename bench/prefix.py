"""Prefix reuse over a tool chain: how much of turn n+1's prompt a backend's prefix cache (vLLM,
llama.cpp) can take from turn n's prompt and completion, which it already holds.

Computed in-process: the chain of ``workloads.tool_chain`` is run through the addon's own calls
(``parse_chat_request``, the carry-over, ``render_prompt``, ``translate_completion``) for three
clients, and each turn's prompt ids + completion ids are compared with the next turn's prompt
ids. The completion ids are the model's reply tokenised; a real model's tokens can differ from
the canonical tokenisation the history re-renders, which only lowers what any client reuses.

The model writes a call's header ``<|channel|>commentary to=functions.x <|constrain|>json``;
history renders it ``assistant to=functions.x<|channel|>commentary json`` (the HF template's
and vLLM's form, harmony-mapping.md §1, §5), so the cache stops at the header even when the
analysis is there. ``if the history kept the model's header`` measures what that costs, by
rewriting the header in the rendered text only: the proxy's rendering is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workloads import DATE, tool_chain

from harmony_groq.backends import BackendOutput, TransformersBackend
from harmony_groq.chat_request import parse_chat_request
from harmony_groq.dialects.chat import ChatReply
from harmony_groq.encoding import harmony_encoding
from harmony_groq.reasoning_memory import ReasoningMemory
from harmony_groq.render import render_prompt
from harmony_groq.translate import HarmonyExchange, translate_completion

SENDS, DROPS, CARRIED = ("sends reasoning_content back", "drops it, no carry-over",
                         "drops it, with carry-over")
_HISTORY_CALL = re.compile(r"<\|start\|>assistant to=(\S+?)<\|channel\|>commentary json"
                           r"<\|message\|>")
_MODEL_CALL = r"<|start|>assistant<|channel|>commentary to=\1 <|constrain|>json<|message|>"


@dataclass
class Share:
    """Over the chain's turns 2…n (turn 1 has nothing before it): what the next prompt took
    from the cache (``reused``), its size (``total``), and per turn what the cache held past
    the first difference (``lost``: computed again where the prompt repeats it, like the call
    after a different header, or gone, like analysis a client dropped)."""

    reused: int = 0
    total: int = 0
    lost: list[int] = field(default_factory=list)

    def add(self, held: Sequence[Any], following: Sequence[Any]) -> None:
        common = _common(held, following)
        self.reused += common
        self.total += len(following)
        self.lost.append(len(held) - common)

    @property
    def ratio(self) -> float:
        return self.reused / self.total

    @property
    def lost_per_turn(self) -> float:
        return sum(self.lost) / len(self.lost)


@dataclass
class PrefixRow:
    client: str
    tokens: Share
    chars: Share
    model_header: Share  # tokens, with the history's call headers in the model's form


def _common(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def _turns(client: str) -> list[tuple[list[int], str, str]]:
    """Each turn's prompt ids, prompt text and completion text, for one kind of client."""
    body, replies, results = tool_chain()
    backend = TransformersBackend()
    memory = ReasoningMemory.in_memory() if client == CARRIED else None
    messages: list[dict[str, Any]] = list(body["messages"])
    turns = []
    for n, reply in enumerate(replies):
        request = parse_chat_request({**body, "messages": messages})
        if memory is not None:
            restored, _ = await memory.restore(messages)
            request = parse_chat_request({**body, "messages": restored})
        prompt = render_prompt(request, DATE, backend.text_transport)
        turns.append((prompt.token_ids, prompt.text, reply.removesuffix("<|return|>")))
        exchange = HarmonyExchange(request, prompt, backend, ChatReply.for_request(request, "both"),
                                   memory=memory)
        output = BackendOutput(text=reply, finish_reason="stop")
        message = translate_completion(exchange, output).body["choices"][0]["message"]
        if not message.get("tool_calls"):
            break
        back = {"role": "assistant", "content": message["content"] or "",
                "tool_calls": message["tool_calls"]}
        if client == SENDS:
            back["reasoning_content"] = message["reasoning_content"]
        messages += [back] + [{"role": "tool", "tool_call_id": call["id"], "content": results[n]}
                              for call in message["tool_calls"]]
    return turns


async def measure_client(client: str) -> PrefixRow:
    encoding = harmony_encoding()

    def ids(text: str) -> list[int]:
        return encoding.encode(text, allowed_special="all")

    row = PrefixRow(client, Share(), Share(), Share())
    turns = await _turns(client)
    for (ids_n, text_n, completion), (ids_next, text_next, _) in zip(turns, turns[1:],
                                                                    strict=False):
        row.tokens.add(ids_n + ids(completion), ids_next)
        row.chars.add(text_n + completion, text_next)
        row.model_header.add(ids(_HISTORY_CALL.sub(_MODEL_CALL, text_n) + completion),
                             ids(_HISTORY_CALL.sub(_MODEL_CALL, text_next)))
    return row


async def prefix_reuse() -> list[PrefixRow]:
    """The three clients over the same chain."""
    return [await measure_client(client) for client in (SENDS, DROPS, CARRIED)]
