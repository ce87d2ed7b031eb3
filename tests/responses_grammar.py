"""The Responses stream grammar, checked on raw SSE (what Codex and the openai SDK rely on)."""

from __future__ import annotations

import json
from typing import Any

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
DELTAS = {
    "response.output_text.delta": "message",
    "response.reasoning_text.delta": "reasoning",
    "response.function_call_arguments.delta": "function_call",
    "response.custom_tool_call_input.delta": "custom_tool_call",
    "response.mcp_call_arguments.delta": "mcp_call",
}


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Every frame as its JSON payload; the ``event:`` line must name the payload's type."""
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame.strip() or frame.startswith(":"):
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        payload = json.loads(lines["data"])
        assert lines["event"] == payload["type"], frame
        events.append(payload)
    return events


def check_grammar(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Assert the grammar; return the terminal response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] in TERMINAL
    assert not any(e["type"] in TERMINAL for e in events[:-1])
    response_id = events[0]["response"]["id"]
    open_items: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    done: list[dict[str, Any]] = []
    for event in events[1:-1]:
        kind = event["type"]
        if kind == "response.in_progress":
            assert event["response"]["id"] == response_id
        elif kind == "response.output_item.added":
            assert event["output_index"] == len(done) and not open_items, event
            item = event["item"]
            open_items[item["id"]] = item
            texts[item["id"]] = []
        elif kind in DELTAS:
            item = open_items[event["item_id"]]
            assert item["type"] == DELTAS[kind] and event["output_index"] == len(done)
            texts[item["id"]].append(event["delta"])
        elif kind == "response.output_item.done":
            item = event["item"]
            assert item["id"] in open_items and event["output_index"] == len(done)
            del open_items[item["id"]]
            streamed = "".join(texts[item["id"]])
            if item["type"] in ("message", "reasoning"):
                assert item["content"][0]["text"] == streamed
            elif item["type"] == "function_call":
                assert item["arguments"] == streamed
            elif item["type"] == "custom_tool_call":
                assert item["input"] == streamed
            elif item["type"] == "mcp_call":
                assert item["arguments"] == streamed
            done.append(item)
        else:
            assert kind.startswith("response."), kind
            if "item_id" in event:
                assert event["item_id"] in open_items, event
    final = events[-1]["response"]
    assert final["id"] == response_id
    if events[-1]["type"] != "response.failed":
        assert not open_items
        assert final["output"] == done
        usage = final["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return final
