"""What mitmweb shows about each flow besides its bodies: a label, and streamed bodies.

``FlowLabels`` gives every finished flow a marker (its route) and a one-line comment (route,
model, status, tokens in→out, time to first token), taken from ``flow_record``, the summary the
flow log writes. It runs after ``ReplySide``, whose ``response`` hook rewrites gpt-oss replies.

Streamed responses pass through mitmproxy without being stored, so mitmweb would say "Content
is missing". ``FlowLabels`` keeps a copy of the bytes the client got, up to ``KEEP_BYTES`` per
flow, and stores it as the response body once the stream is over. It does so only when flows
are kept (mitmweb's flow view, or ``save_stream_file``; mitmdump alone keeps nothing) and
``store_streamed_bodies`` (whole bodies, unbounded) is off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, http

from .records import flow_record

KEEP_BYTES = 256 * 1024
MARKERS = {"gpt-oss": ":robot:", "groq": ":zap:", "local": ":house:"}
OTHER_MARKER = ":arrow_right:"
MAX_ERROR = 60


def flow_label(summary: dict[str, Any]) -> str:
    """``gpt-oss · gpt-oss-20b · 200 · 187→12 tok · TTFT 35 ms`` from a ``flow_record``
    (``· reasoning restored ×1`` after the tokens when reasoning_memory.py restored some)."""
    parts = [summary.get("route") or "passthrough"]
    if summary.get("model"):
        parts.append(summary["model"])
    parts.append(str(summary["status"]) if summary.get("status") is not None else "no response")
    usage = summary.get("usage") or {}
    if summary.get("spill"):  # a gpt-oss request served by Groq's twin (spill/)
        parts.append(f"spilled to Groq ({summary['spill'].get('reason')})")
    tokens_in = usage.get("prompt_tokens", summary.get("prompt_tokens"))
    tokens_out = usage.get("completion_tokens")
    if tokens_in is not None or tokens_out is not None:
        parts.append(f"{_count(tokens_in)}→{_count(tokens_out)} tok")
    if summary.get("restored_reasoning"):
        parts.append(f"reasoning restored ×{len(summary['restored_reasoning'])}")
    for key, word in (("failed_over", "failover"), ("resumed", "resumed")):
        if summary.get(key):  # the replica pool continued the stream on another replica
            parts.append(f"{word} ×{summary[key]}")
    first = summary.get("ttft_ms")
    if first is None and summary.get("status") == 200 and not summary.get("stream"):
        first = summary.get("ttfb_ms")  # a whole reply: its first token came with it
    if first is not None and summary.get("route") in ("gpt-oss", "groq"):
        parts.append(f"TTFT {first:.0f} ms")
    error = summary.get("error")
    if error:
        error = str(error)
        parts.append(error if len(error) <= MAX_ERROR else error[:MAX_ERROR - 1] + "…")
    return " · ".join(parts)


def _count(value: Any) -> str:
    return "?" if value is None else str(value)


class StreamCopy:
    """Wraps a ``flow.response.stream`` value, keeping the first ``limit`` bytes it sends."""

    def __init__(self, inner: bool | Callable[[bytes], Any], limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.kept = bytearray()
        self.total = 0

    def __call__(self, data: bytes) -> list[bytes]:
        out = self.inner(data) if callable(self.inner) else data
        # mitmproxy ends the body at an empty chunk, so none may be passed on.
        chunks = [c for c in ([out] if isinstance(out, bytes) else list(out or ())) if c]
        for chunk in chunks:
            self.total += len(chunk)
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
        return chunks

    def body(self) -> bytes:
        """The kept bytes; when some were dropped, an SSE comment line says how many."""
        if self.total <= len(self.kept):
            return bytes(self.kept)
        dropped = self.total - len(self.kept)
        return bytes(self.kept) + (f"\n\n: [mitmweb copy cut here: {dropped} more bytes were "
                                   "sent to the client]\n\n").encode()


class FlowLabels:
    """Flow list marker and comment for every flow; a bounded copy of streamed bodies."""

    def __init__(self, keep_bytes: int = KEEP_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self.copies: dict[str, StreamCopy] = {}

    @staticmethod
    def _copy_wanted() -> bool:
        """Flows are kept (mitmweb's view, or a save file) and mitmproxy won't store bodies."""
        options = ctx.options
        kept = ctx.master.addons.get("view") is not None or bool(
            getattr(options, "save_stream_file", None))
        return kept and not getattr(options, "store_streamed_bodies", False)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        if flow.response.stream and self._copy_wanted():
            copy = StreamCopy(flow.response.stream, self.keep_bytes)
            self.copies[flow.id] = copy
            flow.response.stream = copy

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow)

    def _finish(self, flow: http.HTTPFlow) -> None:
        copy = self.copies.pop(flow.id, None)
        if copy is not None and flow.response is not None and flow.response.raw_content is None:
            flow.response.raw_content = copy.body()
        if ctx.master.addons.get("view") is None:
            return  # mitmdump: no flow list to label, and flow_record costs ~40 µs a flow
        summary = flow_record(flow)
        flow.comment = flow_label(summary)
        flow.marked = MARKERS.get(summary.get("route") or "", OTHER_MARKER)
