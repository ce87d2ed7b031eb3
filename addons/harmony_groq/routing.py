"""Which endpoint a request is for, and which upstream a chat completion goes to."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Endpoint(enum.Enum):
    HEALTH = "health"
    MODELS = "models"
    CHAT = "chat"
    RESPONSES = "responses"
    RESPONSE_ITEM = "response_item"  # GET / DELETE /v1/responses/{id}
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
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
    "/v1/responses": Endpoint.RESPONSES,
    "/responses": Endpoint.RESPONSES,
    "/v1/messages": Endpoint.MESSAGES,
    "/messages": Endpoint.MESSAGES,
    "/v1/messages/count_tokens": Endpoint.COUNT_TOKENS,
    "/messages/count_tokens": Endpoint.COUNT_TOKENS,
}
_RESPONSE_ITEM = re.compile(r"^(?:/v1)?/responses/([A-Za-z0-9_-]+)$")

ALLOWED_METHODS = {
    Endpoint.HEALTH: ("GET",), Endpoint.MODELS: ("GET",), Endpoint.CHAT: ("POST",),
    Endpoint.RESPONSES: ("POST",), Endpoint.RESPONSE_ITEM: ("GET", "DELETE"),
    Endpoint.MESSAGES: ("POST",), Endpoint.COUNT_TOKENS: ("POST",),
}
# The client APIs that regular (forward) proxy mode intercepts on any host, by path suffix.
# Only ``/v1/…`` for the two short names: other APIs have ``…/messages`` (OpenAI Assistants'
# ``/v1/threads/{id}/messages``, Microsoft Graph's ``/me/messages``) that must pass untouched.
_FORWARD_SUFFIXES = (("/chat/completions", Endpoint.CHAT), ("/v1/responses", Endpoint.RESPONSES),
                     ("/v1/messages", Endpoint.MESSAGES))

GROQ_PREFIX = "groq/"


def bare_path(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/") or "/"


def classify_path(path: str) -> Endpoint:
    """Map a request path (query ignored, trailing slash tolerated) to an endpoint."""
    bare = bare_path(path)
    endpoint = _PATHS.get(bare)
    if endpoint is None:
        return Endpoint.RESPONSE_ITEM if _RESPONSE_ITEM.match(bare) else Endpoint.UNKNOWN
    return endpoint


def response_item_id(path: str) -> str:
    match = _RESPONSE_ITEM.match(bare_path(path))
    return match.group(1) if match else ""


def forward_endpoint(method: str, path: str) -> Endpoint | None:
    """The client API of a flow to another host in regular mode, or None to pass it through."""
    if method != "POST":
        return None
    bare = bare_path(path)
    return next((endpoint for suffix, endpoint in _FORWARD_SUFFIXES if bare.endswith(suffix)),
                None)


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
