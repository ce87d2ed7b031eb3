"""The Anthropic Messages stream grammar Claude Code needs, checked on raw SSE bytes, and an
HTTP transport for the anthropic SDK (which uses ``httpx2``) that keeps the raw bytes it read,
so every SDK stream in the tests is checked too.

The grammar (``shared/reference/anthropic-messages.md`` §2): each frame is ``event: NAME`` and
``data: JSON`` whose ``type`` is NAME; ``message_start`` first; every block opened by
``content_block_start`` with the next index, fed only by its own kind of delta, closed by
``content_block_stop`` before the next opens (a thinking block's ``signature_delta`` last);
tool input only as ``input_json_delta`` adding up to a JSON object; then ``message_delta`` with
a stop reason and ``message_stop`` — or, on a failure, an ``error`` event last. ``ping`` may
come anywhere after ``message_start``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2

DELTAS = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta",
          "mcp_tool_use": "input_json_delta", "mcp_tool_result": None}
USES = ("tool_use", "mcp_tool_use")  # blocks whose input streams as JSON
DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking",
                "input_json_delta": "partial_json"}
STOP_REASONS = ("end_turn", "tool_use", "max_tokens", "stop_sequence")


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event, data)`` frames; each must be exactly an event line and a data line."""
    parts = raw.split(b"\n\n")
    assert parts[-1] == b"", f"the stream must end with a complete frame: {parts[-1][:200]!r}"
    out = []
    for part in parts[:-1]:
        lines = part.decode().split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith(
            "data: "), f"not an event/data frame: {part[:200]!r}"
        event, data = lines[0][7:], json.loads(lines[1][6:])
        assert data["type"] == event, (event, data)
        out.append((event, data))
    return out


def check_stream(raw: bytes) -> dict[str, Any]:
    """The message the stream adds up to, after checking its grammar. A stream that ends in
    an ``error`` event gives ``{"error": …, "content": blocks so far}``."""
    events = frames(raw)
    assert events and events[0][0] == "message_start", events[:1]
    assert all(kind != "message_start" for kind, _ in events[1:])
    message = dict(events[0][1]["message"])
    assert message["content"] == [] and message["stop_reason"] is None
    blocks: list[dict[str, Any]] = []
    partial: list[str] = []
    open_index: int | None = None
    body = [(kind, data) for kind, data in events[1:] if kind != "ping"]
    for n, (kind, data) in enumerate(body):
        if kind == "error":
            assert n == len(body) - 1, "an error event ends the stream"
            assert set(data["error"]) == {"type", "message"}
            return {"error": data["error"], "content": blocks}
        if kind == "content_block_start":
            assert open_index is None, "a block opened before the previous one closed"
            assert data["index"] == len(blocks)
            block = data["content_block"]
            assert block["type"] in DELTAS, block
            if block["type"] in USES:
                assert block["input"] == {} and block["id"] and block["name"]
            blocks.append(dict(block))
            open_index, partial = data["index"], []
        elif kind == "content_block_delta":
            assert data["index"] == open_index, "a delta for a block that is not open"
            block, delta = blocks[-1], data["delta"]
            if delta["type"] == "signature_delta":
                assert block["type"] == "thinking" and not block["signature"]
                block["signature"] = delta["signature"]
                continue
            assert delta["type"] == DELTAS[block["type"]], (block["type"], delta)
            assert block.get("signature", "") == "", "thinking after the signature"
            text = delta[DELTA_FIELDS[delta["type"]]]
            if block["type"] in USES:
                partial.append(text)
            else:
                block[block["type"]] += text
        elif kind == "content_block_stop":
            assert data["index"] == open_index
            block = blocks[-1]
            if block["type"] in USES:
                block["input"] = json.loads("".join(partial))
                assert isinstance(block["input"], dict)
            if block["type"] == "thinking":
                assert block["signature"], "a thinking block closed without its signature"
            open_index = None
        elif kind == "message_delta":
            assert open_index is None, "message_delta with a block still open"
            assert [k for k, _ in body[n + 1:]] == ["message_stop"], "message_stop must end it"
            assert data["delta"]["stop_reason"] in STOP_REASONS
            return {**message, "content": blocks, **data["delta"], "usage": data["usage"]}
        else:
            raise AssertionError(f"unexpected event {kind}")
    raise AssertionError("the stream ended without message_delta/message_stop or an error")


class _Tee(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, kept: list[bytes]) -> None:
        self.inner, self.kept = inner, kept

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.kept.append(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class RecordingTransport(httpx2.BaseTransport):
    """Keeps the raw body of every response the client read."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.bodies: list[list[bytes]] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.inner.handle_request(request)
        kept: list[bytes] = []
        self.bodies.append(kept)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        response.stream = _Tee(response.stream, kept)
        return response

    def last(self) -> bytes:
        return b"".join(self.bodies[-1])

    def close(self) -> None:
        self.inner.close()
