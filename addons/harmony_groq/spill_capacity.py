"""Whether the local model servers can take a gpt-oss request: the question spill-over asks.

``LocalCapacity`` is the seam: the replica pool answers it for several servers per model; until
then ``SingleServerCapacity`` answers it for the one ``TRANSFORMERS_URL``: up means reachable
(the same TCP probe ``upstream.py`` makes before a stream), full means the gateway has
``SPILLOVER_MAX_INFLIGHT`` or more gpt-oss requests in flight to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from .errors import ProxyError
from .upstream import ModelServerClient

PROBE_SECONDS = 0.5  # how long one probe's answer stands


class LocalCapacity(Protocol):
    async def can_serve(self, model: str) -> bool:
        """Some local replica of ``model`` is up."""
        ...

    def all_full(self, model: str) -> bool:
        """Every up replica of ``model`` has ``SPILLOVER_MAX_INFLIGHT`` or more in flight."""
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


class SingleServerCapacity:
    """The one model server: probed at most every ``PROBE_SECONDS``; in-flight counted here."""

    def __init__(self, url: Callable[[], str], max_inflight: Callable[[], int]) -> None:
        self.url = url
        self.max_inflight = max_inflight
        self.inflight: set[str] = set()
        self._probed: tuple[float, bool] | None = None

    async def can_serve(self, model: str) -> bool:
        now = time.monotonic()
        if self._probed is None or now - self._probed[0] > PROBE_SECONDS:
            try:
                await ModelServerClient.probe(self.url())
                up = True
            except ProxyError:
                up = False
            self._probed = (time.monotonic(), up)
        return self._probed[1]

    def all_full(self, model: str) -> bool:
        return len(self.inflight) >= self.max_inflight()

    def begin(self, flow_id: str) -> None:
        self.inflight.add(flow_id)

    def end(self, flow_id: str) -> None:
        self.inflight.discard(flow_id)

    def failed(self, model: str) -> None:
        self._probed = (time.monotonic(), False)
