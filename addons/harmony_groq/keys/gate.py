"""``KeyGate``: every API request checked against the key book before the gateway routes it;
``KeyUsage``: each admitted request's usage settled once its reply is over.

Until the book holds a key the gate lets everything through (``PROXY_API_KEY`` alone guards
the proxy, as before). From the first key on, an API request needs a key from the book or
``PROXY_API_KEY`` (no limits); the flow record names the key (``key``: its name, never the
key). The gate answers in the client API's shape: 401 for a missing, unknown or expired key,
403 for a model the key may not use, 429 with ``retry-after`` and the rate-limit headers the
API's clients read when a limit is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode
from prometheus_client import CollectorRegistry

from ..auth import given_key
from ..dialects.table import DialectTable
from ..errors import ProxyError
from ..flows import answer
from ..records import record_of
from ..routing import Endpoint, Route, choose_route, classify_path
from ..settings import Settings
from ..state.addon import State
from .book import Book, Key, book_for, hash_of
from .limits import Limits, MemoryLimits, RedisLimits, Verdict, retry_seconds
from .metrics import KeyMetrics
from .usage import flow_usage

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.5  # a new or revoked key is seen by every proxy within this (and a read)
PROXY_KEY_NAME = "PROXY_API_KEY"
UNCHECKED = frozenset({Endpoint.HEALTH, Endpoint.UNKNOWN})
METRICS_PATHS = frozenset({"/metrics", "/v1/metrics"})
BYTES_PER_TOKEN = 4  # a request's token estimate before its reply says
REFUSALS = {
    "requests": "requests per minute (rpm {key.rpm})",
    "tokens": "tokens per minute (tpm {key.tpm})",
    "inflight": "requests in flight (max-inflight {key.max_inflight})",
    "groq": "Groq tokens per day ({key.groq_tokens_per_day})",
}


@dataclass
class LimitReached(ProxyError):
    """A 429 with the headers that say when to come back."""

    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Admitted:
    key: Key
    bucket: int
    estimate: int


def _reset(seconds: float) -> str:
    """OpenAI's reset duration (``1m2.5s``, ``850ms``)."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"


def limit_headers(key: Key, verdict: Verdict, anthropic: bool) -> dict[str, str]:
    """``retry-after`` and the rate-limit headers of the client's API."""
    headers = {"retry-after": str(retry_seconds(verdict))}
    now = time.time()
    for kind, limit, left, reset in (("requests", key.rpm, verdict.requests_left,
                                      verdict.requests_reset),
                                     ("tokens", key.tpm, verdict.tokens_left,
                                      verdict.tokens_reset)):
        if not limit:
            continue
        if anthropic:
            at = datetime.datetime.fromtimestamp(now + reset, datetime.UTC)
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(max(left, 0))
            headers[f"anthropic-ratelimit-{kind}-reset"] = at.isoformat(
                timespec="seconds").replace("+00:00", "Z")
        else:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(left, 0))
            headers[f"x-ratelimit-reset-{kind}"] = _reset(reset)
    return headers


class KeyGate:
    """Checks keys, models and limits before the gateway; keeps what ``KeyUsage`` settles."""

    def __init__(self, settings: Settings, state: State, dialects: DialectTable) -> None:
        self.settings = settings
        self.state = state
        self.dialects = dialects
        self.book: Book | None = None
        self.keys: dict[str, Key] = {}
        self.version = ""
        self.limits: Limits = MemoryLimits()
        self.admitted: dict[str, Admitted] = {}
        self._poller: asyncio.Task | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("keys_file", str, os.environ.get("KEYS_FILE", "harmony-groq-keys.json"),
                          "Where the keys of ./run.sh keys are kept when STATE_STORE is memory "
                          "(with a Redis STATE_STORE they are kept there, for every proxy).")

    def configure(self, updated: set[str]) -> None:
        config = self.settings.config
        if config is None or not (updated & {"keys_file", "state_store"}) and self.book:
            return
        from mitmproxy import ctx

        self.book = book_for(config.state_store, ctx.options.keys_file)
        store = self.state.store
        self.limits = (RedisLimits(store.client) if store.kind == "redis"  # type: ignore[attr-defined]
                       else MemoryLimits())
        self.version = ""
        self._refresh()

    def running(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    def done(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if isinstance(self.limits, RedisLimits):
            self.limits.close()

    def _refresh(self) -> None:
        """Reload the book when its version moved (a blocking read: a thread calls it)."""
        book = self.book
        if book is None:
            return
        try:
            version = book.version()
            if version != self.version:
                self.keys, self.version = book.load(), version
                logger.info("key book: %d keys", len(self.keys))
        except Exception as exc:  # keep the last book; a store that is down recovers
            logger.warning("could not read the key book (%s: %s); keeping the last one",
                           type(exc).__name__, exc)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await asyncio.to_thread(self._refresh)

    # -- the check ---------------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> Any:
        if (not self.keys or flow.response is not None or self.settings.config is None
                or not isinstance(flow.client_conn.proxy_mode, ReverseMode)):
            return None
        path = flow.request.path.split("?", 1)[0].rstrip("/")
        endpoint = classify_path(flow.request.path)
        if endpoint in UNCHECKED and path not in METRICS_PATHS:
            return None
        return self._check(flow, endpoint)

    async def _check(self, flow: http.HTTPFlow, endpoint: Endpoint) -> None:
        dialect = self.dialects.dialect_of(endpoint)
        try:
            verdict_key = self._identify(flow)
            if verdict_key is None:
                return
            await self._admit(flow, endpoint, verdict_key)
        except ProxyError as exc:
            if endpoint in self.dialects:
                record_of(flow)["dialect"] = dialect.name
            answer(flow, exc, dialect, exc.headers if isinstance(exc, LimitReached)
                   else {"x-should-retry": "false"})

    def _identify(self, flow: http.HTTPFlow) -> Key | None:
        """The key from the book, or ``None`` for ``PROXY_API_KEY``; raises a 401 else."""
        given = given_key(flow)
        proxy_key = self.settings.config.proxy_api_key if self.settings.config else ""
        record = record_of(flow)
        if proxy_key and hmac.compare_digest(given.encode(), proxy_key.encode()):
            record["key"] = PROXY_KEY_NAME
            return None
        key = self.keys.get(hash_of(given)) if given else None
        if key is None:
            raise ProxyError(401, "Missing, unknown or revoked API key for this proxy.",
                             code="invalid_api_key")
        if key.expired(time.time()):
            raise ProxyError(401, f"The API key {key.name!r} has expired.", code="key_expired")
        record["key"] = key.name
        return key

    def _model(self, flow: http.HTTPFlow, endpoint: Endpoint) -> str | None:
        """The model a model request asks for (``None``: not one, or a body the gateway will
        refuse with its own error)."""
        if endpoint not in self.dialects or flow.request.method != "POST":
            return None
        try:
            body = json.loads(flow.request.get_content(strict=False) or b"")
            return self.dialects.dialect_of(endpoint).model(body, self.settings.config)  # type: ignore[arg-type]
        except (ValueError, ProxyError, RecursionError, TypeError, AttributeError):
            return None

    async def _admit(self, flow: http.HTTPFlow, endpoint: Endpoint, key: Key) -> None:
        model = self._model(flow, endpoint) if (key.models or key.groq_tokens_per_day) else None
        if model is not None and not key.allows(model):
            raise ProxyError(403, f"The API key {key.name!r} may not use the model {model!r}.",
                             code="model_not_allowed", param="model")
        if not key.limited or endpoint not in self.dialects:
            return
        config = self.settings.config
        assert config is not None
        to_groq = model is not None and choose_route(
            model, config.harmony_models).route is Route.GROQ
        estimate = len(flow.request.raw_content or b"") // BYTES_PER_TOKEN + 1 if key.tpm else 0
        try:
            verdict = await self.limits.admit(key, flow.id, estimate, to_groq)
        except Exception as exc:  # the limits are not worth an outage: admitted, said
            logger.warning("key limits unavailable (%s); request admitted", type(exc).__name__)
            return
        if verdict.refused is None:
            self.admitted[flow.id] = Admitted(key, verdict.bucket, estimate)
            return
        what = REFUSALS[verdict.refused].format(key=key)
        raise LimitReached(429, f"The API key {key.name!r} reached its limit of {what}; "
                           f"retry after {retry_seconds(verdict)} s.", code="rate_limit_exceeded",
                           headers=limit_headers(key, verdict, endpoint is Endpoint.MESSAGES))


class KeyUsage:
    """Settles an admitted request once its reply is over (after it was sent): the tokens
    it used replace its estimate, its lease ends, Groq tokens count for the day."""

    def __init__(self, gate: KeyGate, registry: CollectorRegistry | None = None) -> None:
        self.gate = gate
        self.tasks: set[asyncio.Task] = set()
        self.metrics = KeyMetrics(registry)

    def response(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._settle(flow)

    def _settle(self, flow: http.HTTPFlow) -> None:
        record = record_of(flow)
        if "key" not in record:  # no keys yet, or a request the gate does not check
            return
        usage = flow_usage(flow)
        self.metrics.observe(record, usage, self.gate.keys)
        admitted = self.gate.admitted.pop(flow.id, None)
        if admitted is None:
            return
        tokens = usage["prompt"] + usage["completion"] if usage else admitted.estimate
        to_groq = record.get("route") == "groq" or record.get("served_by") == "groq"
        task = asyncio.get_running_loop().create_task(self.gate.limits.settle(
            admitted.key, flow.id, admitted.bucket, admitted.estimate, tokens,
            tokens if to_groq and usage else 0))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        with contextlib.suppress(asyncio.CancelledError):
            if task.exception() is not None:
                logger.warning("could not settle a key's usage: %s", task.exception())

    async def done(self) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=1)
