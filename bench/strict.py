"""The strict-schema part: what compiling a strict schema into llama.cpp's reply grammar costs,
in-process (no server): a 50-property schema that uses every keyword of OpenAI's strict list,
compiled once (cold) and then taken from the per-constraint cache (what every later request
with the same tools pays), and the whole per-request cost (reading the constraint from the
request and the prompt, then the cached grammar)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from harmony_groq import constraints
from harmony_groq.chat_request import parse_chat_request
from harmony_groq.constraints import constraint_for, llamacpp_fields, llamacpp_grammar
from harmony_groq.render import render_prompt

from strict_schemas import NETWORK, NUMBERS, STRINGS

KEYWORD_VALUES = [v for s in (NUMBERS, STRINGS, NETWORK) for v in s["properties"].values()]


def wide_schema(count: int = 50) -> dict[str, Any]:
    """``count`` required properties cycling through every strict-list keyword."""
    properties = {f"p{n}": KEYWORD_VALUES[n % len(KEYWORD_VALUES)] for n in range(count)}
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _median_us(run: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def strict_section(quick: bool) -> list[str]:
    rounds = 3 if quick else 20
    schema = wide_schema()
    body = {"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "Fill it."}],
            "tools": [{"type": "function", "function": {"name": "fill", "parameters": schema,
                                                        "strict": True}}]}
    request = parse_chat_request(body)
    prompt = render_prompt(request, "2026-01-15", text_transport=False)
    constraint = constraint_for(request, prompt)
    assert constraint is not None
    cold = _median_us(lambda: llamacpp_grammar(constraint), rounds)
    grammar = llamacpp_fields(constraint)["grammar"]
    cached = _median_us(lambda: llamacpp_fields(constraint), rounds * 50)
    per_request = _median_us(lambda: llamacpp_fields(constraint_for(request, prompt)),
                             rounds * 50)
    constraints._grammars.clear()
    return [
        "## Strict schemas: grammar compile time (in-process)", "",
        f"A {len(schema['properties'])}-property strict tool using every keyword of OpenAI's "
        f"strict list; grammar {len(grammar):,} characters, {grammar.count('::=')} rules. "
        f"Medians of {rounds} cold and {rounds * 50} cached runs.", "",
        "| step | µs |", "| --- | ---: |",
        f"| compile the reply grammar (cold, first request with these tools) | {cold:,.0f} |",
        f"| the grammar from the per-constraint cache | {cached:,.1f} |",
        f"| per request: constraint from request and prompt + cached grammar | "
        f"{per_request:,.1f} |",
        f"| ratio cold / cached per request | {cold / per_request:,.0f}× |", "",
    ]
