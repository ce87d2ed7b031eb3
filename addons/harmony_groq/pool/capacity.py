"""Spill-over's question to the local side (``spill.capacity.LocalCapacity``), answered by the
replica pool: up means some replica of the model answers its health check now, full means every
one that is up has ``SPILLOVER_MAX_INFLIGHT`` requests on it or more. In-flight counts and
failures are the pool's own (``dispatch.Attempt``), so ``begin``, ``end`` and ``failed`` have
nothing to add."""

from __future__ import annotations

from collections.abc import Callable

from .fair import FairShare
from .pool import Pools


class PoolCapacity:
    def __init__(self, pools: Pools, max_in_flight: Callable[[], int],
                 fair: FairShare | None = None) -> None:
        self.pools = pools
        self.max_in_flight = max_in_flight
        self.fair = fair

    async def can_serve(self, model: str) -> bool:
        """Up, as probed for this request (``GET /health``, concurrently for every replica of
        the model): a replica that just died is seen before the request is sent to it. Asked
        only when spill-over is on and the model has a twin on Groq."""
        await self.pools.fresh(model, 0.0)
        return self.pools.can_serve(model)

    def all_full(self, model: str, key: str = "") -> bool:
        """Full, unless ``key`` is below its fair share (fair.py): its request goes first
        locally while keys holding their share or more spill."""
        if not self.pools.all_full(model, self.max_in_flight()):
            return False
        return self.fair is None or not self.fair.below_share(self.pools.for_model(model), key)

    def begin(self, flow_id: str) -> None:
        """Counted by the pool when a replica takes the request."""

    def end(self, flow_id: str) -> None:
        """Counted by the pool when the attempt ends."""

    def failed(self, model: str) -> None:
        """The pool ejected the replica that failed."""
