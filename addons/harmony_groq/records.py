"""Per-flow records: the state the hooks fill in as a flow progresses, and the flow log.

The record lives in ``flow.metadata["harmony_groq"]`` as plain data (so flows stay savable);
``flow_record`` turns it into the finished log record, which the flow log writes and the
mitmweb view and labels read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from .flowlog import FlowLogWriter
from .redact import redact_headers, redact_value
from .settings import OPTIONS, Settings

logger = logging.getLogger(__name__)
META = "harmony_groq"
CLIENT_DISCONNECTED = "Client disconnected."  # mitmproxy's flow.error message


def record_of(flow: http.HTTPFlow) -> dict[str, Any]:
    """The flow's log record, filled in by the hooks as the flow progresses."""
    record = flow.metadata.get(META)
    if record is None:  # (not setdefault: that builds the new dict on every call)
        record = flow.metadata[META] = {"id": flow.id}
    return record


def failure(flow: http.HTTPFlow) -> Any:
    """What made the flow fail, first cause first; ``None`` for a success.

    A stream's own error (the backend's or Groq's error event, a translation failure) comes
    before mitmproxy's ``flow.error`` (the client hanging up on that error event); and a
    ``flow.error`` after the stream had ended (``ended_before_error``, set by the gateway's
    ``error`` hook) is no failure: the client got the whole reply. The flow log, mitmweb's
    label and the metrics all ask this."""
    record = record_of(flow)
    summary = record.get("stream_summary")
    if summary and summary.get("error") and not summary.get("interrupted"):
        return summary["error"]
    if flow.error is None or record.get("ended_before_error"):
        return None
    return flow.error.msg  # what interrupted the stream, or the flow before any response


def client_disconnected(flow: http.HTTPFlow) -> bool:
    """mitmproxy's error for a client that closed its connection before the response ended."""
    return flow.error is not None and flow.error.msg == CLIENT_DISCONNECTED


def header_pairs(message: http.Message) -> list[tuple[str, str]]:
    # Straight from the raw fields, decoded as mitmproxy's ``Headers`` does.
    return [(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for k, v in message.headers.fields]


class FlowLog:
    """Writes one JSON record per flow to ``log_file`` once the flow is over; every record lost
    (unwritable file, full queue, record not buildable) is reported to ``on_failure``."""

    def __init__(self, settings: Settings,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_failure = on_failure
        self.writer: FlowLogWriter | None = None

    def configure(self, updated: set[str]) -> None:
        config = self.settings.config
        if config is None:
            return
        if self.writer is None or updated & {"log_file", "log_max_bytes", "log_backups"}:
            self.done()
            if config.log_file:
                self.writer = FlowLogWriter(
                    config.log_file, config.log_max_bytes, config.log_backups,
                    config.secrets,
                    self.on_failure)
                self.writer.write({"event": "config", "options": {
                    spec.name: getattr(config, spec.name) for spec in OPTIONS}})

    def done(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def _write(self, flow: http.HTTPFlow) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(flow_record(flow))
        except Exception:  # the log must never break a flow
            logger.exception("could not build the flow log record")
            if self.on_failure is not None:
                self.on_failure("record")


def flow_record(flow: http.HTTPFlow) -> dict[str, Any]:
    """The finished log record of a flow."""
    first_cause = failure(flow)
    record = dict(record_of(flow))
    record["event"] = "flow"
    started = flow.request.timestamp_start
    ended = time.time()
    record["started"] = started
    record["method"] = flow.request.method
    upstream = record.get("upstream_request")
    if upstream and record.get("prompt") is not None and upstream["body"].get(
            "prompt") is record["prompt"]:
        # The rendered prompt is logged once, under "prompt" (100k tokens are ~400 KB).
        record["upstream_request"] = {**upstream, "body": {**upstream["body"],
                                                           "prompt": "<see prompt>"}}
    elif upstream and upstream["body"] is (record.get("client_request") or {}).get("body"):
        # Sent as the client's own bytes: logged once, under client_request.
        record["upstream_request"] = {**upstream, "body": "<see client_request>"}
    record["path"] = flow.request.path if record.get("route") in ("local", None) else (
        record.get("client_path") or flow.request.path)
    response = flow.response
    stream: dict[str, Any] | None = record.pop("stream_summary", None)
    first_token = None
    if response is not None:
        record["status"] = response.status_code
        headers = header_pairs(response)
        record["upstream_response"] = {
            **record.get("upstream_response", {}),
            "headers": redact_headers(headers),
        }
        if stream is not None:
            if stream.get("upstream_text") is not None:
                record["upstream_response"]["text"] = stream["upstream_text"]
            record["client_response"] = {"stream": True, "message": stream["message"],
                                         "finish_reason": stream["finish_reason"]}
            record["usage"] = stream["usage"]
            if stream.get("repairs"):
                record["repairs"] = stream["repairs"]
            for key in ("strict_tries", "strict_problem"):  # strict_check.py
                if key in stream:
                    record[key] = stream[key]
            first_token = stream["first_token_at"]
        else:
            body = reply_json(response)
            record["client_response"] = {"body": body}
            if isinstance(body, dict) and isinstance(body.get("usage"), dict):
                record.setdefault("usage", body["usage"])
        if response.timestamp_start:
            record["ttfb_ms"] = round((response.timestamp_start - started) * 1000, 1)
    if first_cause:
        record["error"] = first_cause
    if flow.error is not None:
        record.setdefault("status", None)
        if client_disconnected(flow):  # beside the first cause, never over it
            record["client_disconnected"] = True
            record["client_disconnected_at"] = flow.error.timestamp
        elif first_cause is None:
            record["error_after_end"] = flow.error.msg
    if first_token:
        record["ttft_ms"] = round((first_token - started) * 1000, 1)
    record["total_ms"] = round((ended - started) * 1000, 1)
    record.pop("response_headers_at", None)
    record.pop("ended_before_error", None)
    secrets = record.pop("secrets", None)  # the request's own (MCP credentials): masked
    return redact_value(record, secrets) if secrets else record


class _LastReply:
    """The last reply parsed, by the identity of its raw bytes (immutable, so the same object
    is the same body): the flow log, the metrics and mitmweb's label read one finished reply
    one after the other, and it is parsed once for them."""

    raw: bytes | None = None
    value: Any = None


def reply_json(response: http.Response) -> Any:
    """A whole reply's body as JSON; its text (the first 2,000 characters) when it is not
    JSON; ``None`` when it cannot be decoded. Parsed once per reply (``_LastReply``)."""
    raw = response.raw_content
    if raw is not None and raw is _LastReply.raw:
        return _LastReply.value
    value = _body_json(response)
    _LastReply.raw, _LastReply.value = raw, value
    return value


def _body_json(message: http.Message) -> Any:
    try:
        return json.loads(message.get_content(strict=False) or b"")
    except ValueError:  # not JSON, or not in UTF-8: as text, decoded as mitmproxy does
        pass
    try:
        text = message.get_text(strict=False) or ""
    except Exception:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text[:2000]
