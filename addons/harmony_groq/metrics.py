"""Prometheus metrics: every finished flow counted from its record, served at ``GET /metrics``.

``Metrics`` reads the record the other addons filled in (``records.record_of``) in the
``response`` and ``error`` hooks, after ``ReplySide`` has rewritten gpt-oss replies, and never
changes a flow. ``MetricsEndpoint`` answers ``/metrics`` before ``RequestSide`` sees the request.
The metrics live in their own ``CollectorRegistry``, so nothing else loaded into mitmproxy can
add series to the scrape.

Label values a client can choose are bounded by ``LabelCap``: a model gets its own series when it
is configured (``harmony_model_ids``) or once an upstream answered 200 for it, up to
``MAX_MODELS``; error codes and repair kinds up to their own caps; the rest read ``other``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from .auth import check_proxy_key
from .errors import ProxyError
from .records import failure, record_of, reply_json
from .settings import Settings

PATHS = frozenset({"/metrics", "/v1/metrics"})
OTHER = "other"
MAX_MODELS, MAX_CODES, MAX_REPAIR_KINDS = 64, 64, 32
UPSTREAM_ROUTES = frozenset({"gpt-oss", "groq"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATE_LIMITS = (("requests", "x-ratelimit-remaining-requests"),
               ("tokens", "x-ratelimit-remaining-tokens"))
_VARIABLE_PART = re.compile(r"""\s*['":].*""", re.DOTALL)

# Process-wide, and this addon is the only user in mitmproxy's process: without it, every series
# gets a ``_created`` twin that Prometheus's text format stores as one more series.
disable_created_metrics()


@dataclass
class LabelCap:
    """Label values for something clients choose: the known ones, then the first ``limit``
    others learned, then ``other``, so no client can grow the series without bound."""

    limit: int
    known: frozenset[str] = frozenset()
    learned: set[str] = field(default_factory=set)

    def label(self, value: str, learn: bool = True) -> str:
        if value in self.known or value in self.learned:
            return value
        if learn and len(self.learned) < self.limit:
            self.learned.add(value)
            return value
        return OTHER


def repair_kind(repair: str) -> str:
    """A parser repair without its variable part: the parser's messages name the function,
    recipient or token after the first quote or colon (``token dropped: …``)."""
    return _VARIABLE_PART.sub("", repair) or OTHER


def error_code(flow: http.HTTPFlow, summary: dict[str, Any] | None) -> str | None:
    """What went wrong with a finished flow, as a short code; ``None`` when nothing did.

    An error answer's OpenAI ``error.code`` (the proxy's own or Groq's), else its type or
    ``http_<status>``; a flow cut off mid-stream or before any response; an error event in a
    stream that began with 200."""
    response = flow.response
    if response is not None and response.status_code >= 400:
        return _body_error_code(response) or f"http_{response.status_code}"
    if failure(flow) is None:  # the first cause counts; a client leaving after the end: none
        return None
    error = (summary or {}).get("error")
    if not error or (summary or {}).get("interrupted"):
        return "stream_interrupted" if response is not None else "no_response"
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code else "stream_error"


def _body_error_code(response: http.Response) -> str | None:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        error = json.loads(response.content or b"")["error"]
        code = error.get("code") or error.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def _body_usage(response: http.Response) -> Any:
    body = reply_json(response)  # parsed once for the flow log and here
    return body.get("usage") if isinstance(body, dict) else None


def _tokens(usage: Any) -> list[tuple[str, int]]:
    """(kind, count) for the prompt, completion and reasoning tokens a usage object reports."""
    if not isinstance(usage, dict):
        return []
    if "input_tokens" in usage:  # Responses and Anthropic Messages name them so
        details = usage.get("output_tokens_details")
        counts = [("prompt", usage.get("input_tokens")),
                  ("completion", usage.get("output_tokens"))]
    else:
        details = usage.get("completion_tokens_details")
        counts = [("prompt", usage.get("prompt_tokens")),
                  ("completion", usage.get("completion_tokens"))]
    counts.append(("reasoning",
                   details.get("reasoning_tokens") if isinstance(details, dict) else 0))
    return [(kind, n) for kind, n in counts if type(n) is int and n > 0]


def _restored_count(value: Any) -> int:
    """``restored_reasoning`` as a number: a count, or one entry per restored message."""
    if type(value) is int:
        return max(value, 0)
    return len(value) if isinstance(value, list) else 0


class Series:
    """A labelled metric's children, looked up here: prometheus_client's ``labels()``
    validates and locks on every call (~2 µs, seven calls a flow); a dict lookup does not."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class Metrics:
    """Counts every finished flow into Prometheus metrics, from its record."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = registry = CollectorRegistry()
        self.models = LabelCap(MAX_MODELS)
        self.codes = LabelCap(MAX_CODES)
        self.repair_kinds = LabelCap(MAX_REPAIR_KINDS)
        self.groq_headers: http.Headers | None = None  # read at scrape time, not per flow
        self.requests = Series(Counter(
            "harmony_groq_requests", "Requests by API dialect, route, model and HTTP status "
            "(status none: no response).", ["dialect", "route", "model", "status"],
            registry=registry))
        self.errors = Series(Counter(
            "harmony_groq_errors", "Failed requests by error code (the OpenAI error.code).",
            ["code"], registry=registry))
        self.duration = Series(Histogram(
            "harmony_groq_request_duration_seconds", "From the request to the end of the reply.",
            ["route", "model"], buckets=LATENCY_BUCKETS, registry=registry))
        self.ttft = Series(Histogram(
            "harmony_groq_time_to_first_token_seconds", "From the request to the first generated "
            "token (a whole reply: to the reply).", ["route", "model"], buckets=TTFT_BUCKETS,
            registry=registry))
        self.tokens = Series(Counter(
            "harmony_groq_tokens", "Tokens by model and kind (prompt, completion, reasoning; "
            "reasoning tokens are part of completion).", ["model", "kind"], registry=registry))
        self.repairs = Series(Counter(
            "harmony_groq_parser_repairs", "Repairs the harmony parser made to model output.",
            ["kind"], registry=registry))
        self.restored = Series(Counter(
            "harmony_groq_reasoning_restored", "Assistant messages whose dropped reasoning the "
            "proxy restored.", ["dialect"], registry=registry))
        self.aborted = Series(Counter(
            "harmony_groq_streams_aborted", "Streams that began and then ended in an error.",
            ["route"], registry=registry))
        self.log_failures = Series(Counter(
            "harmony_groq_flow_log_failures", "Flow log records lost (write: the file was not "
            "writable; queue_full; record: it could not be built).", ["reason"],
            registry=registry))
        self.model_server_up = Gauge(
            "harmony_groq_model_server_up", "Whether the gpt-oss model server answered its "
            "health check (as /health reports it, at scrape time).", registry=registry)
        self.ratelimit = Gauge(
            "harmony_groq_groq_ratelimit_remaining", "Groq's last x-ratelimit-remaining-* "
            "header.", ["limit"], registry=registry)
        self.served = Series(Counter(
            "harmony_groq_gpt_oss_served", "gpt-oss requests by who served them (local, or "
            "groq: spill-over to Groq's twin) and why (down, saturated, sticky, failover; "
            "none: local as usual; refused: spill was wanted but Groq's limits or the budget "
            "said no).",
            ["dialect", "model", "served_by", "reason"], registry=registry))
        self.spill_budget = Gauge(
            "harmony_groq_spill_budget_tokens", "Spill-over's token budget in this window "
            "(kind limit: SPILLOVER_BUDGET_TOKENS, 0 = none; spent: settled usage; reserved: "
            "requests at Groq now; left: -1 without a budget).", ["kind"], registry=registry)
        self.spill_status: Callable[[], dict[str, Any]] | None = None  # Spillover.status
        self.tool_steps = Series(Counter(
            "harmony_groq_tool_steps", "Server-tool steps the proxy ran for gpt-oss (tools/) by "
            "kind (web_search…), action (search, open_page…), backend and outcome (ok, or the "
            "error code).", ["kind", "action", "backend", "outcome"], registry=registry))
        self.tool_seconds = Series(Histogram(
            "harmony_groq_tool_step_seconds", "How long a server-tool step took (the search or "
            "fetch included).", ["kind", "action"], buckets=LATENCY_BUCKETS,
            registry=registry))
        self.tool_bytes = Series(Counter(
            "harmony_groq_tool_step_bytes", "Bytes server-tool steps fetched.", ["kind"],
            registry=registry))

    def configure(self, updated: set[str]) -> None:
        config = self.settings.config
        if config is not None:
            self.models.known = frozenset(config.harmony_model_ids)

    def flow_log_failed(self, reason: str) -> None:
        """Called by the flow log (from its writer thread too) for every record it lost."""
        self.log_failures(reason).inc()

    def scrape(self, accept: str, model_server_reachable: bool) -> tuple[bytes, str]:
        """The exposition in the format ``accept`` asks for, and its content type; the gauges
        are brought up to date first."""
        self.model_server_up.set(1 if model_server_reachable else 0)
        if self.groq_headers is not None:
            self._rate_limits(self.groq_headers)
        if self.spill_status is not None:
            for kind, value in self.spill_status()["budget"].items():
                self.spill_budget.labels(kind).set(value)
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _rate_limits(self, headers: http.Headers) -> None:
        for limit, header in RATE_LIMITS:
            value = headers.get(header)
            if value is not None:
                with contextlib.suppress(ValueError):  # not a number: keep the last one
                    self.ratelimit.labels(limit).set(float(value))

    def response(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)

    def _observe(self, flow: http.HTTPFlow) -> None:
        record = record_of(flow)
        route = record.get("route") or "none"
        dialect = record.get("dialect", "none")  # /health, /metrics, passthrough
        response = flow.response
        status = None if response is None else response.status_code
        summary: dict[str, Any] | None = record.get("stream_summary")
        upstream = route in UPSTREAM_ROUTES
        model = record.get("model") or ""
        if model:
            model = self.models.label(model, learn=upstream and status == 200)
        self.requests(dialect, route, model, "none" if status is None else str(status)).inc()
        self.duration(route, model).observe(time.time() - flow.request.timestamp_start)
        code = error_code(flow, summary)
        if code is not None:
            self.errors(self.codes.label(code)).inc()
        if summary is not None and code is not None:
            self.aborted(route).inc()
        for repair in (summary or record).get("repairs") or ():
            self.repairs(self.repair_kinds.label(repair_kind(repair))).inc()
        restored = _restored_count(record.get("restored_reasoning"))
        if restored:
            self.restored(dialect).inc(restored)
        if route == "groq" and response is not None:
            self.groq_headers = response.headers
        if record.get("served_by"):
            self._served(record, dialect, model)
        for step in record.get("tool_steps") or ():
            self._tool_step(step)
        if upstream and status == 200:
            self._reply(flow, route, model, summary)

    def _tool_step(self, step: dict[str, Any]) -> None:
        kind, action = str(step.get("kind")), str(step.get("action"))
        outcome = self.codes.label(str(step.get("error") or "ok"))
        self.tool_steps(kind, action, str(step.get("backend") or "none"), outcome).inc()
        self.tool_seconds(kind, action).observe((step.get("duration_ms") or 0) / 1000)
        self.tool_bytes(kind).inc(step.get("bytes") or 0)

    def _served(self, record: dict[str, Any], dialect: str, model: str) -> None:
        spill = record.get("spill") or {}
        reason = spill.get("reason") or ("refused" if record.get("spill_refused") else "none")
        self.served(dialect, model, record["served_by"], reason).inc()

    def _reply(self, flow: http.HTTPFlow, route: str, model: str,
               summary: dict[str, Any] | None) -> None:
        """Time to first token and tokens of a reply the client got."""
        response = flow.response
        assert response is not None
        if summary is not None:
            first, usage = summary.get("first_token_at"), summary.get("usage")
        else:  # the gateway's own count when it wrote the reply, else the upstream's body
            first = response.timestamp_start
            usage = record_of(flow).get("usage") or _body_usage(response)
        if first:
            self.ttft(route, model).observe(first - flow.request.timestamp_start)
        for kind, n in _tokens(usage):
            self.tokens(model, kind).inc(n)


class MetricsEndpoint:
    """Answers ``GET /metrics`` in reverse mode, ahead of ``RequestSide``; with ``PROXY_API_KEY``
    set, only to requests that carry it. ``health`` is ``LocalEndpoints.health``: its cached
    check of the model server sets ``harmony_groq_model_server_up`` at scrape time."""

    def __init__(self, settings: Settings, metrics: Metrics,
                 health: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """An awaitable for a ``/metrics`` request only: every other flow passes at once."""
        if (flow.response is not None or self.settings.config is None
                or flow.request.path.split("?", 1)[0].rstrip("/") not in PATHS
                or not isinstance(flow.client_conn.proxy_mode, ReverseMode)):
            return None
        return self._answer(flow)

    async def _answer(self, flow: http.HTTPFlow) -> None:
        config = self.settings.config
        assert config is not None
        record = record_of(flow)
        record["route"] = "local"
        try:
            if flow.request.method != "GET":
                raise ProxyError(405, f"Use GET for {flow.request.path.split('?')[0]}.",
                                 code="method_not_allowed")
            check_proxy_key(flow, config.proxy_api_key)
        except ProxyError as exc:
            record["error"] = exc.message
            flow.response = exc.to_response({"allow": "GET"} if exc.status == 405 else None)
            return
        reachable = (await self.health())["transformers"]["reachable"]
        body, content_type = self.metrics.scrape(flow.request.headers.get("accept", ""),
                                                 reachable)
        flow.response = http.Response.make(200, body, {"content-type": content_type})
