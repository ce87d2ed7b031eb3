"""Stored Responses for ``previous_response_id`` and ``GET/DELETE /v1/responses/{id}``, in the
state store's ``resp`` namespace (state/): this process's memory by default, or a Redis that
several proxies share (``STATE_STORE``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ProxyError
from .state import Namespace, StoreUnavailable


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    history: list[dict[str, Any]]  # input items and output items: what the next turn continues


class ResponseStore:
    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace

    def put(self, response: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Never waits (the stream path calls it): a shared store writes in the background."""
        self.namespace.put(response["id"], {"response": response, "history": history})

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or ``None``: never stored, expired, evicted or unreadable."""
        value = await self.namespace.get(response_id)
        if not isinstance(value, dict):
            return None
        response, history = value.get("response"), value.get("history")
        if not isinstance(response, dict) or not isinstance(history, list):
            return None
        return StoredResponse(response, history)

    async def delete(self, response_id: str) -> bool:
        try:
            return await self.namespace.delete(response_id)
        except StoreUnavailable:
            raise ProxyError(503, "The state store (STATE_STORE) is unavailable; the stored "
                             "response was not deleted. Try again.",
                             code="state_store_unavailable") from None
