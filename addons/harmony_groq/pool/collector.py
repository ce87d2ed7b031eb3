"""Every replica in ``/metrics``: read from the pools at scrape time (a prometheus_client
custom collector registered in the ``Metrics`` registry), so routing costs no metric calls."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .pool import Pools
from .replica import FAILURES

OUTCOMES = ("ok", "rejected", "cancelled", "retried", *FAILURES)
LABELS = ["model", "replica"]


class PoolCollector:
    def __init__(self, pools: Pools) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("harmony_groq_replica_up", "Whether the replica takes new "
                               "requests (0: ejected after a failure, probed until healthy).",
                               labels=LABELS)
        in_flight = GaugeMetricFamily("harmony_groq_replica_in_flight",
                                      "Requests in flight on the replica.", labels=LABELS)
        requests = CounterMetricFamily("harmony_groq_replica_requests", "Attempts on the "
                                       "replica by outcome.", labels=[*LABELS, "outcome"])
        retries = CounterMetricFamily("harmony_groq_replica_retries", "Requests that failed "
                                      "on the replica and went on to another.", labels=LABELS)
        resumes = CounterMetricFamily("harmony_groq_replica_resumes", "Broken streams "
                                      "continued on the replica.", labels=LABELS)
        ratio = GaugeMetricFamily("harmony_groq_replica_prefix_match_ratio", "Prompt tokens "
                                  "the routing estimate found cached on the replica, over all "
                                  "prompt tokens routed to it.", labels=LABELS)
        cached = CounterMetricFamily("harmony_groq_replica_cached_tokens", "Prompt tokens the "
                                     "engine reported served from its cache (vLLM "
                                     "cached_tokens, llama.cpp cache_n).", labels=LABELS)
        for pool, replica in self.pools.replicas():
            labels = [pool.group.model or "*", replica.url]
            up.add_metric(labels, 1 if replica.up else 0)
            in_flight.add_metric(labels, replica.in_flight)
            for outcome in OUTCOMES:
                requests.add_metric([*labels, outcome], replica.outcomes.get(outcome, 0))
            retries.add_metric(labels, replica.retries)
            resumes.add_metric(labels, replica.resumes)
            ratio.add_metric(labels, replica.match_ratio())
            cached.add_metric(labels, replica.cached_tokens)
        yield from (up, in_flight, requests, retries, resumes, ratio, cached)
