"""Stored Responses for ``previous_response_id`` and ``GET/DELETE /v1/responses/{id}``: in
memory only, least recently used first out, bounded by the size of what it keeps."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    history: list[dict[str, Any]]  # input items and output items: what the next turn continues
    size: int


class ResponseStore:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.size = 0

    def put(self, response: dict[str, Any], history: list[dict[str, Any]]) -> None:
        size = len(json.dumps(response, ensure_ascii=False)) + len(
            json.dumps(history, ensure_ascii=False))
        if size > self.budget:
            return
        self.delete(response["id"])
        self.entries[response["id"]] = StoredResponse(response, history, size)
        self.size += size
        while self.size > self.budget:
            _, old = self.entries.popitem(last=False)
            self.size -= old.size

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self.entries.get(response_id)
        if stored is not None:
            self.entries.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        stored = self.entries.pop(response_id, None)
        if stored is None:
            return False
        self.size -= stored.size
        return True
