"""One replica's state, and the routing policies: pure, no I/O, unit-testable.

``choose`` picks among the replicas that are up. ``cache_aware`` (the default) scores each by
the prefill it would have to do (prompt blocks it does not hold, ``PrefixIndex``) plus its load
(``LOAD_BLOCKS`` per request on it: ``Replica.load``, the engine's own count where it reports
one), and never sends a request to a replica that would then
carry more than ``BALANCE`` × the mean in flight (and one more): prefix alone piles a hot prefix
onto one replica (llm-d's note). A prompt no replica holds ``MATCH_THRESHOLD`` of (a new
conversation) goes to the least loaded replica holding least, like SGLang's gateway.
``least_loaded`` and ``round_robin`` ignore the cache.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .prefix import BLOCK_TOKENS, PrefixIndex

LOAD_BLOCKS = 32  # one request in flight weighs like 512 tokens to prefill
BALANCE = 1.5
MATCH_THRESHOLD = 0.3  # below this share of the prompt cached anywhere, place it by load
FAILURES = ("refused", "reset", "http_5xx", "timeout", "error")


@dataclass
class Replica:
    """A model server of one served model, as the pool sees it."""

    url: str
    kind: str
    index: PrefixIndex
    position: int = 0
    up: bool = True
    in_flight: int = 0
    engine_load: int = 0  # running + waiting as the engine's /metrics last said (all clients)
    problem: str | None = None
    down_since: float | None = None
    context_length: int | None = None
    described: bool = False
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0  # requests that failed here and went on to another replica
    resumes: int = 0  # broken streams continued here
    routed_tokens: int = 0  # prompt tokens routed here
    matched_tokens: int = 0  # of those, in blocks the index said it held
    cached_tokens: int = 0  # what the engine reported as cached (vLLM, llama.cpp)

    @property
    def load(self) -> int:
        """Requests on the replica: this proxy's in flight, or more where the engine reports
        more (other proxies' requests; its own figure is up to ``CHECK_SECONDS`` old)."""
        return max(self.in_flight, self.engine_load)

    def eject(self, problem: str) -> None:
        """Out for new requests until a probe finds it healthy."""
        if self.up:
            self.up, self.down_since = False, time.monotonic()
        self.problem = problem

    def restore(self) -> None:
        """Healthy again; a restarted engine's cache is empty."""
        if not self.up:
            self.index.clear()
        self.up, self.problem, self.down_since = True, None, None

    def snapshot(self) -> dict[str, object]:
        """What /health shows."""
        return {"url": self.url, "kind": self.kind, "up": self.up, "problem": self.problem,
                "in_flight": self.in_flight, "engine_load": self.engine_load,
                "requests": dict(self.outcomes),
                "retries": self.retries, "resumes": self.resumes,
                "prefix_match_ratio": self.match_ratio(), "cached_tokens": self.cached_tokens,
                "index_blocks": len(self.index.blocks), "context_length": self.context_length}

    def match_ratio(self) -> float:
        return round(self.matched_tokens / self.routed_tokens, 4) if self.routed_tokens else 0.0


@dataclass(frozen=True)
class Choice:
    replica: Replica
    matched_blocks: int


def choose(policy: str, replicas: Sequence[Replica], hashes: Sequence[int], turn: int,
           exclude: frozenset[str] = frozenset()) -> Choice | None:
    """The replica for a prompt with block ``hashes``; ``turn`` rotates ties (and round robin).
    When every replica not in ``exclude`` (already tried) is down, a down one is tried anyway
    (the client would get an error otherwise); None when all were tried."""
    untried = [r for r in replicas if r.url not in exclude]
    candidates = [r for r in untried if r.up] or untried
    if not candidates:
        return None
    count = len(candidates)
    if policy == "round_robin":
        replica = candidates[turn % count]
        return Choice(replica, replica.index.matched(hashes))
    if policy == "least_loaded":
        replica = min(candidates, key=lambda r: (r.load, (r.position - turn) % 64))
        return Choice(replica, replica.index.matched(hashes))
    mean = (sum(r.load for r in candidates) + 1) / count
    cap = max(BALANCE * mean, mean + 1)
    matches = [(replica, replica.index.matched(hashes)) for replica in candidates]
    if max(m for _, m in matches) < MATCH_THRESHOLD * len(hashes):
        # Nowhere warm (a new conversation; a shared system prompt is not worth a pile-up):
        # the least loaded, then the one holding least, so conversations spread evenly.
        replica, matched = min(matches, key=lambda rm: (
            rm[0].load, len(rm[0].index.blocks), (rm[0].position - turn) % 64))
        return Choice(replica, matched)
    replica, matched = min(matches, key=lambda rm: (
        rm[0].load + 1 > cap, len(hashes) - rm[1] + LOAD_BLOCKS * rm[0].load,
        rm[0].load, (rm[0].position - turn) % 64))
    return Choice(replica, matched)


def record_routing(choice: Choice, hashes: Sequence[int], prompt_tokens: int) -> None:
    """The request goes to ``choice``: it now holds the prompt's blocks."""
    replica = choice.replica
    replica.index.add(hashes)
    replica.routed_tokens += prompt_tokens
    replica.matched_tokens += choice.matched_blocks * BLOCK_TOKENS
