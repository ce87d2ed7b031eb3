"""Which tool runs a namespace: each tool module registers a factory; ``build`` makes one
response's tools from the specs its request declared."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from ..chat_request import ChatRequest, ServerToolSpec
from .base import ServerTool
from .options import ToolConfig


@dataclass(frozen=True)
class ToolContext:
    """What a tool is built with: the settings, and the HTTP client its fetches share."""

    config: ToolConfig
    client: httpx.AsyncClient


Factory = Callable[[ServerToolSpec, ToolContext], ServerTool]
Preparer = Callable[[ChatRequest, ToolContext], Awaitable[ChatRequest]]
_FACTORIES: dict[str, Factory] = {}
_PREPARERS: dict[str, Preparer] = {}


def register_tool(namespace: str, factory: Factory) -> None:
    """A tool for a fixed namespace (``browser``), or for every spec of a step kind whose
    namespace the client names (``mcp``: a server's label)."""
    _FACTORIES[namespace] = factory


def register_preparer(kind: str, preparer: Preparer) -> None:
    """Work a kind's specs need before the prompt is rendered (MCP: list the servers' tools,
    run approved calls); it returns the request with its specs (and history) completed."""
    _PREPARERS[kind] = preparer


def _factory(spec: ServerToolSpec) -> Factory | None:
    return _FACTORIES.get(spec.namespace) or _FACTORIES.get(spec.kind)


def build(specs: tuple[ServerToolSpec, ...], context: ToolContext) -> dict[str, ServerTool]:
    return {spec.namespace: factory(spec, context)
            for spec in specs if (factory := _factory(spec)) is not None}


async def prepare(request: ChatRequest, context: ToolContext) -> ChatRequest:
    for kind in dict.fromkeys(spec.kind for spec in request.server_tools):
        preparer = _PREPARERS.get(kind)
        if preparer is not None:
            request = await preparer(request, context)
    return request
