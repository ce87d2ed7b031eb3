"""The replicas of every served gpt-oss model, their health, and the questions other parts ask.

``Pools`` holds one ``ReplicaPool`` per ``ModelServers`` group (settings ``TRANSFORMERS_URL``,
``MODEL_SERVERS``). A replica that fails a request is ejected at once (``Replica.eject``); the
background ``probe`` loop checks ejected replicas every ``PROBE_SECONDS`` and healthy ones every
``CHECK_SECONDS`` (``GET /health``, which all three server kinds answer) and brings them back.
Routing estimates live here, in this process: several proxies each keep their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..backends import make_backend
from ..replica_spec import ModelServers, group_for
from ..upstream_failure import failure_of_exception
from .prefix import BLOCK_TOKENS, PrefixIndex
from .replica import Choice, Replica, choose, record_routing

logger = logging.getLogger(__name__)
PROBE_SECONDS = 0.5
CHECK_SECONDS = 2.0
PROBE_TIMEOUT = 1.0
INDEX_TOKENS = 1 << 20  # per replica: about what one GPU's KV cache holds
# The engine's requests running and queued, in its Prometheus /metrics (llama-server: --metrics).
ENGINE_LOAD = {"vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
               "llamacpp": ("llamacpp:requests_processing", "llamacpp:requests_deferred")}


def engine_load(kind: str, exposition: str) -> int | None:
    """Running + waiting requests in an engine's /metrics text; None when it has no such
    series (an older engine, llama-server without --metrics)."""
    names = ENGINE_LOAD.get(kind, ())
    # vLLM's exposition runs to hundreds of series: parse only the two lines wanted.
    wanted = "\n".join(line for line in exposition.splitlines() if line.startswith(names))
    total, found = 0.0, False
    try:
        for family in text_string_to_metric_families(wanted):
            if family.name in names:
                found = True
                total += sum(sample.value for sample in family.samples)
    except ValueError:
        return None
    return int(total) if found else None


class ReplicaPool:
    """The replicas of one served model and the routing policy between them."""

    def __init__(self, group: ModelServers, policy: str) -> None:
        self.group = group
        self.policy = policy
        self.kind = group.kind
        self.text_transport = make_backend(group.kind).text_transport
        self.replicas = [Replica(url, group.kind, PrefixIndex(INDEX_TOKENS // BLOCK_TOKENS),
                                 position)
                         for position, url in enumerate(group.urls)]
        self.turn = 0
        # One replica, or a policy blind to the cache: no prompt is hashed (1 ms per 100k tokens).
        self.routes_on_cache = policy == "cache_aware" and len(self.replicas) > 1

    def choose(self, hashes: Sequence[int], prompt_tokens: int,
               exclude: frozenset[str] = frozenset()) -> Choice | None:
        """Pick a replica that is up and not in ``exclude``, and count it as routed there."""
        self.turn += 1
        choice = choose(self.policy, self.replicas, hashes, self.turn, exclude)
        if choice is not None:
            record_routing(choice, hashes, prompt_tokens)
        return choice

    def up(self) -> list[Replica]:
        return [r for r in self.replicas if r.up]

    def health(self) -> dict[str, object]:
        return {"model": self.group.model or "*", "kind": self.kind, "routing": self.policy,
                "replicas": [r.snapshot() for r in self.replicas]}


class Pools:
    """Every served model's replica pool, and their health probes."""

    def __init__(self, client: Callable[[], httpx.AsyncClient],
                 fresh: Callable[[], httpx.AsyncClient] | None = None) -> None:
        self.client = client
        self.fresh_client = fresh or client  # no kept-alive connections (ModelServerClient)
        self.pools: list[ReplicaPool] = []
        self.groups: tuple[ModelServers, ...] = ()
        self.checked: dict[str, float] = {}  # replica url → when the loop last probed it
        self.asked: dict[str, float] = {}  # replica url → when ``fresh`` last probed it
        self._probe_task: asyncio.Task | None = None

    def configure(self, groups: tuple[ModelServers, ...], policy: str) -> None:
        if groups == self.groups and all(p.policy == policy for p in self.pools):
            return
        self.groups = groups
        self.pools = [ReplicaPool(group, policy) for group in groups]
        names = "; ".join(f"{g.model or 'gpt-oss'}: {g.kind} × {len(g.urls)}" for g in groups)
        logger.info("gpt-oss replicas (%s routing): %s", policy, names)

    def for_model(self, model: str) -> ReplicaPool:
        group = group_for(self.groups, model)
        return next(p for p in self.pools if p.group is group)

    def can_serve(self, model: str) -> bool:
        """Whether some replica of ``model`` is up now (spill-over asks before routing)."""
        return bool(self.for_model(model).up())

    def all_full(self, model: str, max_in_flight: int) -> bool:
        """Whether every replica of ``model`` that is up has ``max_in_flight`` requests on it
        or more (``Replica.load``; true when none is up)."""
        return all(r.load >= max_in_flight for r in self.for_model(model).up())

    def health(self) -> list[dict[str, object]]:
        return [pool.health() for pool in self.pools]

    def replicas(self) -> list[tuple[ReplicaPool, Replica]]:
        return [(pool, replica) for pool in self.pools for replica in pool.replicas]

    # -- health probes ----------------------------------------------------------------------

    def start(self) -> None:
        if self._probe_task is None:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_forever())

    def stop(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None

    async def _probe_forever(self) -> None:
        while True:
            now = time.monotonic()
            due = [r for _, r in self.replicas()
                   if not r.up or now - self.checked.get(r.url, 0) >= CHECK_SECONDS]
            await self._probe_all(due, self.checked)
            await asyncio.sleep(PROBE_SECONDS)

    async def fresh(self, model: str, max_age: float) -> None:
        """Probe now the replicas of ``model`` this did not probe in the last ``max_age``
        seconds (spill-over asks before it sends a request elsewhere)."""
        now = time.monotonic()
        await self._probe_all([r for r in self.for_model(model).replicas
                               if now - self.asked.get(r.url, 0) > max_age], self.asked)

    async def _probe_all(self, replicas: list[Replica], stamps: dict[str, float]) -> None:
        now = time.monotonic()
        for replica in replicas:
            stamps[replica.url] = now
        await asyncio.gather(*(self.probe(r) for r in replicas), return_exceptions=True)

    async def probe(self, replica: Replica) -> bool:
        """``GET /health``: 200 brings an ejected replica back, anything else ejects it."""
        try:
            response = await self._get_health(replica)
            problem = None if response.status_code == 200 else \
                f"/health answered {response.status_code}"
        except httpx.HTTPError as exc:
            problem = f"unreachable ({type(exc).__name__})"
        if problem is not None:
            if replica.up:
                logger.warning("gpt-oss replica %s is out: %s", replica.url, problem)
            replica.eject(problem)
            return False
        if not replica.up:
            logger.info("gpt-oss replica %s is back", replica.url)
            replica.restore()
            replica.described = False
        if not replica.described:
            await self.describe(replica)
        if replica.kind in ENGINE_LOAD:
            await self.read_engine_load(replica)
        return True

    async def _get_health(self, replica: Replica) -> httpx.Response:
        """``GET /health``; once more on a fresh connection where the replica closed or reset
        a kept-alive one before answering (its idle timeout, not an outage)."""
        url = f"{replica.url}/health"
        try:
            return await self.client().get(url, timeout=PROBE_TIMEOUT)
        except httpx.HTTPError as exc:
            if not failure_of_exception(exc).retryable:
                raise
        return await self.fresh_client().get(url, timeout=PROBE_TIMEOUT)

    async def read_engine_load(self, replica: Replica) -> None:
        try:
            response = await self.client().get(f"{replica.url}/metrics", timeout=PROBE_TIMEOUT)
        except httpx.HTTPError:
            return
        load = engine_load(replica.kind, response.text) if response.status_code == 200 else None
        replica.engine_load = load or 0

    async def describe(self, replica: Replica) -> None:
        """Learn the replica's context length (vLLM's max_tokens default and llama.cpp's prompt
        check need it)."""
        with contextlib.suppress(httpx.HTTPError):
            info = await make_backend(replica.kind).describe(self.client(), replica.url)
            replica.context_length = info.get("context_length")
            replica.described = bool(info.get("reachable"))
