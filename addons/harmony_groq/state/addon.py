"""``State``: the addon that owns the state store, built from the settings and closed (its
writes finished) when mitmproxy shuts down. Its users hold its ``Namespace`` objects, which a
live settings change (mitmweb) points at the new store; the gateway has the end of each reply
wait for the writes the reply made (``settle``, state/writes.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry

from ..settings import OPTION_DEFAULTS, Config, Settings
from .base import SPILL_BUDGET_BYTES, Namespace, StateStore
from .memory import MemoryStore
from .metrics import StoreMetrics
from .redis_store import RedisStore
from .writes import Writes

logger = logging.getLogger(__name__)
STORE_OPTIONS = frozenset({"state_store", "state_store_timeout_ms"})  # a new store
LIMIT_OPTIONS = frozenset({"responses_store_bytes", "reasoning_memory_bytes",
                           "responses_store_ttl", "reasoning_memory_ttl"})  # the same, resized
SPILL_TTL_SECONDS = 3600  # the spill-over code passes its own


def _budgets(values: Any) -> dict[str, int]:
    return {"resp": values["responses_store_bytes"], "reason": values["reasoning_memory_bytes"],
            "spill": SPILL_BUDGET_BYTES}


def make_store(config: Config, metrics: StoreMetrics) -> StateStore:
    budgets = _budgets(vars(config))
    if config.state_store == "memory":
        return MemoryStore(budgets)
    return RedisStore(config.state_store, budgets, config.state_store_timeout_ms / 1000, metrics)


class State:
    """The store and its namespaces: ``responses``, ``reasoning`` and ``spill``."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = StoreMetrics(registry)
        self.store: StateStore = MemoryStore(_budgets(OPTION_DEFAULTS))
        self.responses = Namespace(self.store, "resp", OPTION_DEFAULTS["responses_store_ttl"])
        self.reasoning = Namespace(self.store, "reason", OPTION_DEFAULTS["reasoning_memory_ttl"])
        self.spill = Namespace(self.store, "spill", SPILL_TTL_SECONDS)
        self._closing: set[asyncio.Task] = set()

    def configure(self, updated: set[str]) -> None:
        config = self.settings.config
        if config is None:
            return
        if updated & STORE_OPTIONS:
            old, self.store = self.store, make_store(config, self.metrics)
            for namespace in (self.responses, self.reasoning, self.spill):
                namespace.store = self.store
            logger.info("state store: %s (%s)", self.store.shown,
                        "shared by every proxy that uses it"
                        if self.store.kind == "redis" else "this process only")
            self._close_later(old)
        elif updated & LIMIT_OPTIONS:
            self.store.resize(_budgets(vars(config)))
        self.responses.ttl = config.responses_store_ttl
        self.reasoning.ttl = config.reasoning_memory_ttl

    def _close_later(self, store: StateStore) -> None:
        try:
            task = asyncio.get_running_loop().create_task(store.close())
        except RuntimeError:  # no event loop: nothing can be under way
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def settle(self, writes: Writes) -> None:
        """Wait for the writes a reply made, before its end goes out (the next turn, maybe on
        another proxy, reads them), at most ``STATE_STORE_TIMEOUT_MS``: writes still under way
        then go on in the background, counted as late (that next turn may miss them)."""
        if not writes.pending():
            return
        config = self.settings.config
        timeout_ms = (config.state_store_timeout_ms if config is not None
                      else OPTION_DEFAULTS["state_store_timeout_ms"])
        started = time.perf_counter()
        late = await writes.wait(timeout_ms / 1000)
        waited = time.perf_counter() - started
        for namespace in {name for name, _ in writes.under_way}:
            self.metrics.waited(namespace, waited, namespace in late)

    async def health(self) -> dict[str, Any]:
        return await self.store.health()

    async def done(self) -> None:
        await self.store.close()
