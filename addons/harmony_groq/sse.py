"""Server-sent events: re-framing on blank lines, whatever the network split."""

from __future__ import annotations

import json
from typing import Any


class SSEFramer:
    """Collects bytes and yields the ``data`` payload of each complete event."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self.buffer += data
        if b"\r" in self.buffer:
            # Keep a trailing \r: it may be the first half of a \r\n split across chunks.
            head, tail = (self.buffer[:-1], b"\r") if self.buffer.endswith(b"\r") else (
                self.buffer, b"")
            self.buffer = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        *events, self.buffer = self.buffer.split(b"\n\n")
        payloads = []
        for event in events:
            lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n")
                     if line.startswith(b"data:")]
            if lines:
                payloads.append(b"\n".join(lines).decode("utf-8", "replace"))
        return payloads

    def pending(self) -> bytes:
        return self.buffer


def encode_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
