"""Whether the local model servers can take a gpt-oss request: the question spill-over asks.

``LocalCapacity`` is the seam; the replica pool answers it (``pool/capacity.py``), for one
``TRANSFORMERS_URL`` as for several servers per model.
"""

from __future__ import annotations

from typing import Protocol


class LocalCapacity(Protocol):
    async def can_serve(self, model: str) -> bool:
        """Some local replica of ``model`` is up."""
        ...

    def all_full(self, model: str, key: str = "") -> bool:
        """Every up replica of ``model`` has ``SPILLOVER_MAX_INFLIGHT`` or more in flight, for
        a request of ``key`` (a key below its fair share of the replicas still fits)."""
        ...

    def begin(self, flow_id: str) -> None:
        """A request went to a local replica."""
        ...

    def end(self, flow_id: str) -> None:
        """That request is over (answered, failed, or moved to Groq)."""
        ...

    def failed(self, model: str) -> None:
        """A local attempt failed before its first byte: the replica counts as down."""
        ...
