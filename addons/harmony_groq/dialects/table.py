"""Which dialect speaks for a flow: by its endpoint while the request is read, by the name the
record keeps once it was (errors and replies take that dialect's shape)."""

from __future__ import annotations

from mitmproxy import http

from ..records import record_of
from ..response_store import ResponseStore
from ..routing import Endpoint
from .base import Dialect
from .chat import ChatDialect
from .messages import MessagesDialect
from .responses import ResponsesDialect


class DialectTable:
    """The three client APIs by endpoint; the Responses dialect reads stored responses."""

    def __init__(self, store: ResponseStore) -> None:
        self.chat = ChatDialect()
        self.responses = ResponsesDialect(store)
        self.messages = MessagesDialect()
        self.by_endpoint: dict[Endpoint, Dialect] = {
            Endpoint.CHAT: self.chat, Endpoint.RESPONSES: self.responses,
            Endpoint.RESPONSE_ITEM: self.responses, Endpoint.MESSAGES: self.messages,
            Endpoint.COUNT_TOKENS: self.messages}

    def __contains__(self, endpoint: Endpoint) -> bool:
        return endpoint in self.by_endpoint

    def dialect_of(self, endpoint: Endpoint) -> Dialect:
        """The dialect whose shape the flow's answers (errors included) take."""
        return self.by_endpoint.get(endpoint) or self.chat

    def flow_dialect(self, flow: http.HTTPFlow) -> Dialect:
        """The dialect the request side recorded for the flow."""
        name = record_of(flow).get("dialect")
        return next((d for d in self.by_endpoint.values() if d.name == name), self.chat)
