"""Requests and tokens per key and route for ``/metrics``: one series per key in the book
(and ``PROXY_API_KEY``), up to ``MAX_KEYS``; a name no longer in the book reads ``other``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter

from ..metrics import OTHER, Series
from .book import Key

MAX_KEYS = 256


class KeyMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Series(Counter(
            "harmony_groq_key_requests", "Requests by key (its name) and route.",
            ["key", "route"], registry=registry))
        self.tokens = Series(Counter(
            "harmony_groq_key_tokens", "Tokens by key (its name), route and kind (prompt, "
            "cached: prompt tokens served from a cache, completion).",
            ["key", "route", "kind"], registry=registry))
        self.seen: set[str] = set()

    def label(self, name: str, keys: dict[str, Key]) -> str:
        if name in self.seen:
            return name
        known = name == "PROXY_API_KEY" or any(k.name == name for k in keys.values())
        if known and len(self.seen) < MAX_KEYS:
            self.seen.add(name)
            return name
        return OTHER

    def observe(self, record: dict[str, Any], usage: dict[str, int] | None,
                keys: dict[str, Key]) -> None:
        key = self.label(record["key"], keys)
        route = record.get("route") or "none"
        self.requests(key, route).inc()
        for kind, n in (usage or {}).items():
            if n:
                self.tokens(key, route, kind).inc(n)
