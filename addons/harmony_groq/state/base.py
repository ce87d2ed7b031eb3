"""The state store interface, and ``Namespace``: one kind of state with its own TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .writes import note_write

NAMESPACES = ("resp", "reason", "spill")
SPILL_BUDGET_BYTES = 4 * 1024 * 1024  # stickiness entries are a few dozen bytes each


class StoreUnavailable(Exception):
    """The store could not answer in time (down, slow, or resting after a failure)."""


class StateStore(Protocol):
    """Values are JSON-like (dicts, lists, strings, numbers); a ``put`` never waits."""

    kind: str  # "memory" | "redis"
    shown: str  # what logs and /health say it is: "memory", or the URL without its password

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[Any | None]:
        """The values under ``keys`` (``None`` where none); raises ``StoreUnavailable``."""
        ...

    def put(self, namespace: str, key: str, value: Any, ttl_seconds: int
            ) -> asyncio.Future | None:
        """Keep ``value`` for ``ttl_seconds`` (or drop it, counted, when it cannot be); the
        write still under way (a shared store's background task), or ``None`` once done."""
        ...

    async def delete(self, namespace: str, key: str) -> bool:
        """Whether something was there; raises ``StoreUnavailable``."""
        ...

    def resize(self, budgets: Mapping[str, int]) -> None:
        """New byte budgets per namespace (a live change); entries are kept, and evicted as
        the next writes need."""
        ...

    async def health(self) -> dict[str, Any]:
        """What ``/health`` shows: kind, ``status`` (ok or degraded) and why."""
        ...

    async def close(self) -> None:
        """Finish the writes under way (briefly), then let go of connections."""
        ...


class Namespace:
    """One namespace of a store with its default TTL; reads that fail read as missing."""

    def __init__(self, store: StateStore, name: str, ttl_seconds: int) -> None:
        self.store, self.name, self.ttl = store, name, ttl_seconds

    async def get(self, key: str) -> Any | None:
        """The value, or ``None`` when there is none or the store is unavailable."""
        try:
            return (await self.store.get_many(self.name, [key]))[0]
        except StoreUnavailable:
            return None

    async def get_many(self, keys: Sequence[str]) -> list[Any | None]:
        """Raises ``StoreUnavailable``, for callers that say what they skipped."""
        if not keys:
            return []
        return await self.store.get_many(self.name, keys)

    def put(self, key: str, value: Any, ttl_seconds: int | None = None) -> None:
        """Never waits; a write still under way is noted for the reply being written
        (``writes.collect_writes``), whose end waits for it."""
        write = self.store.put(self.name, key, value, ttl_seconds or self.ttl)
        if write is not None:
            note_write(self.name, write)

    async def delete(self, key: str) -> bool:
        return await self.store.delete(self.name, key)
