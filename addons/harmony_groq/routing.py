"""Which endpoint a request is for, and which upstream a chat completion goes to."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Endpoint(enum.Enum):
    HEALTH = "health"
    MODELS = "models"
    CHAT = "chat"
    UNKNOWN = "unknown"


class Route(enum.Enum):
    HARMONY = "gpt-oss"
    GROQ = "groq"


_PATHS = {
    "/health": Endpoint.HEALTH,
    "/v1/health": Endpoint.HEALTH,
    "/v1/models": Endpoint.MODELS,
    "/models": Endpoint.MODELS,
    "/v1/chat/completions": Endpoint.CHAT,
    "/chat/completions": Endpoint.CHAT,
}

ALLOWED_METHODS = {Endpoint.HEALTH: "GET", Endpoint.MODELS: "GET", Endpoint.CHAT: "POST"}

GROQ_PREFIX = "groq/"


def classify_path(path: str) -> Endpoint:
    """Map a request path (query ignored, trailing slash tolerated) to an endpoint."""
    bare = path.split("?", 1)[0].rstrip("/") or "/"
    return _PATHS.get(bare, Endpoint.UNKNOWN)


def is_chat_completions_path(path: str) -> bool:
    """True for any ``…/chat/completions`` path: used for flows to other hosts in regular mode."""
    return path.split("?", 1)[0].rstrip("/").endswith("/chat/completions")


@dataclass(frozen=True)
class RouteChoice:
    route: Route
    upstream_model: str


def choose_route(model: str, harmony_substrings: tuple[str, ...]) -> RouteChoice:
    """``groq/`` forces Groq (prefix stripped); a harmony substring picks gpt-oss; else Groq."""
    if model.lower().startswith(GROQ_PREFIX):
        return RouteChoice(Route.GROQ, model[len(GROQ_PREFIX):])
    lowered = model.lower()
    if any(sub in lowered for sub in harmony_substrings):
        return RouteChoice(Route.HARMONY, model)
    return RouteChoice(Route.GROQ, model)
