"""Sending a gpt-oss request to a replica: the choice, failover before the first byte, and the
bookkeeping of every attempt (in flight, outcome, the flow record).

A stream is handed to mitmproxy (so mitmweb shows the real exchange) once a replica accepted
the connection; one that refuses it is ejected and the next is tried. A whole reply is fetched
here, so a refusal, a reset, a 5xx or a timeout moves on to the next replica. After
``REPLICA_ATTEMPTS`` replicas, or when every one was tried, the client's error names them all.
Where the pool cannot fail over, a replica that closed or reset the connection before
answering is asked once more on a fresh connection (upstream_failure.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

from mitmproxy import http

from ..backends import Backend, make_backend
from ..chat_request import ChatRequest
from ..errors import ProxyError
from ..flows import rewrite
from ..records import record_of
from ..render import HarmonyPrompt
from ..streaming import client_writer
from ..upstream import ModelServerClient
from ..upstream_failure import Failure, UpstreamFailure, note, note_retry, retry_allowed
from .fair import FairShare
from .pool import Pools, ReplicaPool
from .prefix import block_hashes
from .replica import FAILURES, Replica

_CACHED = ((b'"cached_tokens"', re.compile(rb'"cached_tokens"\s*:\s*(\d+)')),
           (b'"cache_n"', re.compile(rb'"cache_n"\s*:\s*(\d+)')))
_OUTCOME_OF_CAUSE = {"refused": "refused", "dns": "refused", "timeout": "timeout"}


def failure_outcome(failure: Failure) -> str:
    """A replica's outcome (``FAILURES``) for an upstream failure."""
    return _OUTCOME_OF_CAUSE.get(failure.cause, "reset")


def cached_tokens(data: bytes) -> int | None:
    """The engine's own count of prompt tokens served from its cache, where it reports one:
    vLLM ``usage.prompt_tokens_details.cached_tokens``, llama.cpp ``timings.cache_n``."""
    for needle, pattern in _CACHED:
        if needle in data:
            found = pattern.findall(data)
            if found:
                return int(found[-1])
    return None


@dataclasses.dataclass
class Attempt:
    """One request (or continuation) on one replica: counted in flight until it ends."""

    replica: Replica
    record: dict[str, Any]
    resume: bool = False
    fresh: bool = False  # on a new connection: the retry after a closed one
    open: bool = True

    def end(self, outcome: str, problem: str | None = None) -> None:
        if not self.open:
            return
        self.open = False
        replica = self.replica
        replica.in_flight -= 1
        replica.outcomes[outcome] += 1
        replica.cached_tokens += self.record.get("cached_tokens", 0)
        self.record["outcome"] = outcome
        if problem:
            self.record["problem"] = problem
        if outcome in FAILURES:
            replica.eject(problem or outcome)

    def cached(self, data: bytes) -> None:
        """Keep the engine's latest count (vLLM repeats it on every chunk of a stream)."""
        count = cached_tokens(data)
        if count is not None:
            self.record["cached_tokens"] = count


@dataclasses.dataclass
class Pooled:
    """A gpt-oss flow's routing: its pool, prompt, attempts so far."""

    pool: ReplicaPool
    prompt: HarmonyPrompt
    request: ChatRequest
    model_field: str
    budget: int  # replicas it may still try
    log: list[dict[str, Any]]  # the flow record's "replicas"
    tried: set[str] = dataclasses.field(default_factory=set)
    attempt: Attempt | None = None
    first_token: bool = False  # a token of the reply reached the translator
    deadline: asyncio.Task | None = None

    def begin(self, prompt_ids: list[int], resume: bool = False) -> Attempt | None:
        """Choose the next replica for ``prompt_ids`` and count the attempt; None when no
        replica is left or the budget is spent."""
        if self.budget <= 0:
            return None
        hashes = block_hashes(prompt_ids) if self.pool.routes_on_cache else []
        choice = self.pool.choose(hashes, len(prompt_ids), frozenset(self.tried))
        if choice is None:
            return None
        if self.attempt is not None and self.attempt.record.get("outcome") in FAILURES:
            self.attempt.replica.retries += 1
        self.budget -= 1
        replica = choice.replica
        self.tried.add(replica.url)
        replica.in_flight += 1
        if resume:
            replica.resumes += 1
        entry = {"replica": replica.url, "matched_tokens": choice.matched_blocks * 16}
        if resume:
            entry["resume"] = True
        self.log.append(entry)
        self.attempt = Attempt(replica, entry, resume)
        return self.attempt

    def again(self) -> Attempt:
        """The replica just tried, once more on a fresh connection (it closed or reset the
        last one before answering): no failover, so the budget does not count it."""
        assert self.attempt is not None
        replica = self.attempt.replica
        replica.in_flight += 1
        entry = {"replica": replica.url, "matched_tokens": self.attempt.record["matched_tokens"],
                 "fresh_connection": True}
        self.log.append(entry)
        self.attempt = Attempt(replica, entry, fresh=True)
        return self.attempt

    def can_retry(self) -> bool:
        """Whether another replica may still be tried."""
        return self.budget > 0 and any(r.url not in self.tried for r in self.pool.replicas)

    def failures(self) -> str:
        return "; ".join(f"{e['replica']}: {e.get('problem') or e.get('outcome')}"
                         for e in self.log if e.get("outcome") in FAILURES)


def no_replica(pooled: Pooled, last: ProxyError | None) -> ProxyError:
    """The client's error once no replica could serve: the last replica's own error when
    there is only one, else a 503 naming what each replica did."""
    if last is not None and len(pooled.pool.replicas) == 1:
        return last
    model = pooled.pool.group.model or pooled.request.model
    return ProxyError(503, f"No gpt-oss model server of {model} could serve the request "
                      f"({pooled.failures() or 'every replica is out'}).",
                      code="upstream_unavailable")


class Dispatcher:
    """Picks replicas for gpt-oss flows and keeps each flow's ``Pooled`` until it ends."""

    def __init__(self, pools: Pools, upstream: ModelServerClient,
                 fair: FairShare | None = None) -> None:
        self.pools = pools
        self.upstream = upstream
        self.fair = fair or FairShare(lambda: 0, lambda: 0)
        self.flows: dict[str, Pooled] = {}

    async def backend(self, replica: Replica) -> Backend:
        """The replica's adapter; vLLM's needs the context length for its max_tokens,
        llama.cpp's to refuse a prompt its context cannot hold."""
        if replica.kind != "transformers" and not replica.described:
            await self.pools.describe(replica)
        return make_backend(replica.kind, replica.context_length)

    async def send(self, flow: http.HTTPFlow, prompt: HarmonyPrompt, request: ChatRequest,
                   model_field: str, attempts: int, timeout: float) -> Backend:
        """Point the flow at a replica (a stream) or answer it from one (a whole reply),
        once the key's fair share allows (fair.py); returns the adapter of the replica that
        took it."""
        record = record_of(flow)
        pool = self.pools.for_model(request.model)
        waited = await self.fair.enter(flow.id, pool, record.get("key", ""), timeout)
        if waited:
            record["fair_share_wait_ms"] = round(waited * 1000, 1)
        try:
            return await self._send(flow, pool, prompt, request, model_field, attempts, timeout)
        finally:
            if flow.id not in self.flows:  # a whole reply, or none: over; a stream: forget
                self.fair.leave(flow.id)

    async def _send(self, flow: http.HTTPFlow, pool: ReplicaPool, prompt: HarmonyPrompt,
                    request: ChatRequest, model_field: str, attempts: int, timeout: float
                    ) -> Backend:
        record = record_of(flow)
        pooled = Pooled(pool, prompt, request, model_field, attempts,
                        record.setdefault("replicas", []))
        last: ProxyError | None = None
        failed: tuple[http.Response, Backend] | None = None
        retrying: Failure | None = None
        attempt = pooled.begin(prompt.token_ids)
        while attempt is not None:
            backend = await self.backend(attempt.replica)
            body = backend.request_body(prompt, request, request.stream, model_field)
            url = attempt.replica.url + backend.completions_path
            record["upstream_request"] = {"url": url, "body": body}
            rewrite(flow, url, body)
            try:
                if request.stream:
                    await self.upstream.probe(url)
                    self.flows[flow.id] = pooled
                    pooled.deadline = asyncio.get_running_loop().create_task(
                        self._first_token_deadline(flow, pooled, attempt, timeout))
                    return backend
                response = await self.upstream.complete(url, body, timeout, attempt.fresh)
            except UpstreamFailure as exc:
                last = exc
                note(flow, exc.failure)
                if retrying is not None:
                    note_retry(flow, retrying, "failed", exc.message)
                    retrying = None
                elif not pooled.can_retry() and retry_allowed(flow, exc.failure):
                    attempt.end("retried", exc.message)
                    retrying, attempt = exc.failure, pooled.again()
                    continue
                attempt.end(failure_outcome(exc.failure), exc.message)
                attempt = pooled.begin(prompt.token_ids)
                continue
            if retrying is not None:
                note_retry(flow, retrying, "ok" if response.status_code < 500 else "failed",
                           f"answered {response.status_code}")
                retrying = None
            if response.status_code >= 500:
                last, failed = None, (response, backend)
                attempt.end("http_5xx", f"answered {response.status_code}")
                attempt = pooled.begin(prompt.token_ids)
                continue
            attempt.cached(response.content or b"")
            attempt.end("ok" if response.status_code == 200 else "rejected")
            flow.response = response
            return backend
        if failed is not None and len(pooled.pool.replicas) == 1:
            flow.response = failed[0]  # one replica: its own error, explained as before
            return failed[1]
        raise no_replica(pooled, last)

    @staticmethod
    async def _first_token_deadline(flow: http.HTTPFlow, pooled: Pooled, attempt: Attempt,
                                    timeout: float) -> None:
        """A forwarded stream with no token after ``timeout`` (UPSTREAM_TIMEOUT): the replica
        timed out. Its connection is closed, so mitmproxy's error hook hands the stream to the
        next replica (``resume.Failover``), or answers the client's error."""
        await asyncio.sleep(timeout)
        if pooled.first_token or not attempt.open:
            return
        attempt.end("timeout", f"no token within {timeout:g} s")
        if flow.response is None:
            note(flow, Failure("timeout", f"no response within {timeout:g} s"))
        writer = client_writer(flow, server=True)
        if writer is not None:
            writer.close()

    def forget(self, flow: http.HTTPFlow) -> Pooled | None:
        """The flow is over: its open attempt (if any) ends without an outcome of its own."""
        pooled = self.flows.pop(flow.id, None)
        self.fair.leave(flow.id)
        if pooled is not None:
            if pooled.deadline is not None:
                pooled.deadline.cancel()
            if pooled.attempt is not None and pooled.attempt.open:
                pooled.attempt.end("cancelled")
        return pooled
