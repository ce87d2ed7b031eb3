"""Which tool runs a namespace: each tool module registers a factory; ``build`` makes one
response's tools from the specs its request declared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from .base import ServerTool, ServerToolSpec
from .options import ToolConfig


@dataclass(frozen=True)
class ToolContext:
    """What a tool is built with: the settings, and the HTTP client its fetches share."""

    config: ToolConfig
    client: httpx.AsyncClient


Factory = Callable[[ServerToolSpec, ToolContext], ServerTool]
_FACTORIES: dict[str, Factory] = {}


def register_tool(namespace: str, factory: Factory) -> None:
    _FACTORIES[namespace] = factory


def build(specs: tuple[ServerToolSpec, ...], context: ToolContext) -> dict[str, ServerTool]:
    return {spec.namespace: _FACTORIES[spec.namespace](spec, context)
            for spec in specs if spec.namespace in _FACTORIES}
