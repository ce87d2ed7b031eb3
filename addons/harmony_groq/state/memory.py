"""The in-process store (the default): per namespace an LRU bounded by the bytes of what it
keeps, with a TTL per entry. Nothing to install; state is this process's only, a restart
forgets it."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Entry:
    value: Any
    size: int
    expires: float


@dataclass
class Lru:
    """Least recently used out past ``budget`` bytes; an entry larger than it is not kept."""

    budget: int
    entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    size: int = 0

    def get(self, key: str, now: float) -> Any | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self.pop(key)
            return None
        self.entries.move_to_end(key)
        return entry.value

    def put(self, key: str, value: Any, size: int, expires: float) -> None:
        self.pop(key)
        if size > self.budget:
            return
        self.entries[key] = _Entry(value, size, expires)
        self.size += size
        while self.size > self.budget:
            _, old = self.entries.popitem(last=False)
            self.size -= old.size

    def pop(self, key: str) -> bool:
        entry = self.entries.pop(key, None)
        if entry is None:
            return False
        self.size -= entry.size
        return True


def json_size(value: Any) -> int:
    """What an entry counts against its budget: the length of its JSON."""
    return len(json.dumps(value, ensure_ascii=False))


class MemoryStore:
    """Values are kept as given (callers never change what they put or got)."""

    kind = shown = "memory"

    def __init__(self, budgets: Mapping[str, int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.namespaces = {name: Lru(budget) for name, budget in budgets.items()}
        self.clock = clock

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[Any | None]:
        lru, now = self.namespaces[namespace], self.clock()
        return [lru.get(key, now) for key in keys]

    def put(self, namespace: str, key: str, value: Any, ttl_seconds: int) -> None:
        lru = self.namespaces[namespace]
        if lru.budget:
            lru.put(key, value, json_size(value), self.clock() + ttl_seconds)

    async def delete(self, namespace: str, key: str) -> bool:
        return self.namespaces[namespace].pop(key)

    def resize(self, budgets: Mapping[str, int]) -> None:
        for name, budget in budgets.items():
            self.namespaces[name].budget = budget

    async def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "status": "ok", "shared": False,
                "bytes": {name: lru.size for name, lru in self.namespaces.items()}}

    async def close(self) -> None:
        return None
