"""The store's Prometheus metrics, in the registry ``/metrics`` serves (metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class StoreMetrics:
    """Latency of every store call that was made, and every one that failed or was skipped.

    Labels are bounded: three namespaces, a few operations, a handful of reasons. ``wait``
    is a reply's end waiting for the writes it made (state/writes.py), not a store call."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.seconds = Histogram(
            "harmony_groq_state_store_seconds", "Time of state store calls that answered "
            "(op wait: how long a reply's end waited for its writes).",
            ["namespace", "op"], buckets=STORE_BUCKETS, registry=registry)
        self.errors = Counter(
            "harmony_groq_state_store_errors", "State store calls that failed (timeout, "
            "connection, error) or were skipped (resting: after a failure; backlog: too many "
            "writes under way; late: a reply's end stopped waiting for its write). A failed get of "
            "reason is a carry-over skipped.",
            ["namespace", "op", "reason"], registry=registry)
        self.up = Gauge(
            "harmony_groq_state_store_up", "Whether the state store answered its last call.",
            registry=registry)
        self.up.set(1)

    def answered(self, namespace: str, op: str, seconds: float) -> None:
        self.seconds.labels(namespace, op).observe(seconds)
        self.up.set(1)

    def waited(self, namespace: str, seconds: float, late: bool) -> None:
        """A reply's end waited ``seconds`` for its writes; ``late``: it went on without them.
        Says nothing of whether the store is up (the writes count that themselves)."""
        if late:
            self.errors.labels(namespace, "wait", "late").inc()
        else:
            self.seconds.labels(namespace, "wait").observe(seconds)

    def failed(self, namespace: str, op: str, reason: str) -> None:
        self.errors.labels(namespace, op, reason).inc()
        if reason not in ("resting", "backlog"):
            self.up.set(0)
