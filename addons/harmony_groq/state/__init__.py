"""State that outlives a request, behind one interface: in this process (the default) or in a
Redis-protocol server (Redis >= 7, Valkey) that several proxies share and that survives restarts.

What is kept, by namespace (``NAMESPACES``):

- ``resp``: stored Responses, by response id (``previous_response_id``, ``GET/DELETE
  /v1/responses/{id}``; ``response_store.py``).
- ``reason``: the analysis before the tool calls the proxy issued, by the first call's id
  (reasoning carry-over; ``reasoning_memory.py``).
- ``spill``: spill-over stickiness, strings by a key the spill-over code chooses. Its API is
  ``State.spill`` (state/addon.py), a ``Namespace``: ``await spill.get(key) -> str | None``
  (``None`` too when the store cannot be read) and ``spill.put(key, value, ttl_seconds)``
  (returns at once). 4 MiB budget.

Every entry has a TTL and every namespace a byte budget (memory: least recently used out; Redis:
oldest written out), so nothing grows without bound. Reads are awaited where awaiting is fine
(the request hook) and give up after ``STATE_STORE_TIMEOUT_MS``; writes never wait: ``put``
returns at once (memory: done; Redis: a bounded background task), so the per-token stream path
can call it. The end of the reply that made them waits for them instead, as long again at most
(``writes.py``): a next turn sent to another proxy the moment the reply ended finds them. A
store that fails or is slow degrades, never fails a request: a read gives ``None`` (the same as
an evicted entry), a write is dropped, both are counted, ``/health`` says ``degraded``, and
after ``RETRY_SECONDS`` the store is tried again.

Routing estimates (the replicas' prefix guesses) are hints and stay in each process.
"""

from __future__ import annotations

from .base import NAMESPACES, Namespace, StateStore, StoreUnavailable

__all__ = ["NAMESPACES", "Namespace", "StateStore", "StoreUnavailable"]
