"""The addon's own work on one non-streamed gpt-oss exchange, timed in-process.

The same calls ``Gateway._to_harmony`` and ``Gateway.response`` make, minus mitmproxy and the
network: parse the client body, render the harmony prompt, encode the backend request, then
read the backend's answer, translate it and encode the chat.completion.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

from workloads import DATE

from harmony_groq.backends import TransformersBackend
from harmony_groq.chat_request import parse_chat_request, parse_json_body
from harmony_groq.dialects.chat import ChatReply
from harmony_groq.render import render_prompt
from harmony_groq.translate import HarmonyExchange, translate_completion


@dataclass
class StageTimes:
    """Median milliseconds per stage over the repetitions."""

    parse: float
    render: float
    encode: float
    translate: float
    prompt_tokens: int
    first_total: float  # the first run: nothing of this conversation cached yet

    @property
    def total(self) -> float:
        return self.parse + self.render + self.encode + self.translate


def _once(raw: bytes, backend_answer: bytes) -> tuple[list[float], dict[str, Any], int]:
    backend = TransformersBackend()
    marks = [time.perf_counter()]
    request = parse_chat_request(parse_json_body(raw))
    marks.append(time.perf_counter())
    prompt = render_prompt(request, DATE, backend.text_transport)
    marks.append(time.perf_counter())
    exchange = HarmonyExchange(request, prompt, backend, ChatReply.for_request(request, "both"))
    json.dumps(backend.request_body(prompt, request, request.stream, ""),
               ensure_ascii=False).encode()
    marks.append(time.perf_counter())
    output = backend.read_response(json.loads(backend_answer))
    translated = translate_completion(exchange, output)
    json.dumps(translated.body, ensure_ascii=False).encode()
    marks.append(time.perf_counter())
    stages = [1000 * (b - a) for a, b in zip(marks, marks[1:], strict=False)]
    return stages, translated.body, len(prompt.token_ids)


def time_stages(raw: bytes, backend_answer: bytes, repeat: int) -> tuple[StageTimes, dict]:
    """Median stage times over ``repeat`` runs, and the chat.completion produced."""
    runs = []
    body: dict = {}
    tokens = 0
    for _ in range(repeat):
        stages, body, tokens = _once(raw, backend_answer)
        runs.append(stages)
    medians = [statistics.median(stage) for stage in zip(*runs, strict=True)]
    return StageTimes(*medians, prompt_tokens=tokens, first_total=sum(runs[0])), body
