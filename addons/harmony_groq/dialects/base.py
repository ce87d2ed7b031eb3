"""What every client API (dialect) provides, and the reply data they share.

A dialect parses its request body into the chat conversation form the renderer takes
(``ChatRequest``) and writes the decoder's events back in its own shape, whole or streamed.
Render, parse, the backends and the Groq transport never see a dialect's wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..chat_request import ChatRequest
from ..completion import AssembledMessage
from ..errors import ProxyError
from ..parse import Event
from ..settings import Config


@dataclass(frozen=True)
class Outcome:
    """How a reply ended, in the chat vocabulary each dialect maps to its own."""

    finish: str  # "stop" | "length" | "tool_calls"
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    stopped: bool = False  # a client stop string matched
    stop_sequence: str | None = None  # which one, when known (gpt-oss; Groq does not say)
    cached_tokens: int | None = None  # prompt tokens the model server reused (when it says)

    def usage(self) -> dict[str, Any]:
        """The chat-shaped usage the flow log keeps for every dialect."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


class ReplyWriter(Protocol):
    """One reply in a client's API: the whole body, or its stream event by event."""

    keys: tuple[str, ...]  # where the log's assembled message puts the reasoning the client saw

    def whole(self, message: AssembledMessage, outcome: Outcome) -> dict[str, Any]: ...

    def start(self, prompt_tokens: int = 0) -> list[bytes]:
        """The stream's opening; ``prompt_tokens``: the prompt's size when it is known before
        generation (a rendered gpt-oss prompt), else 0."""
        ...

    def events(self, events: list[Event]) -> list[bytes]: ...

    def finish(self, message: AssembledMessage, outcome: Outcome) -> list[bytes]: ...

    def fail(self, error: ProxyError) -> list[bytes]: ...

    def keepalive(self) -> bytes: ...


@dataclass(frozen=True)
class Conversation:
    """A parsed client request: what the renderer takes, and who writes the reply."""

    chat: ChatRequest
    reply: ReplyWriter
    body: dict[str, Any]  # the client's request as sent


@dataclass(frozen=True)
class GroqCall:
    """A request for Groq: the API path under ``groq_base_url`` and the body. With a
    ``reply``, Groq's chat completion is translated into it; without, relayed as it is."""

    path: str
    body: dict[str, Any]
    reply: ReplyWriter | None = None
    tool_names: dict[str, str] | None = None  # Groq-safe name → client name, when renamed


class Dialect(Protocol):
    name: str  # "chat" | "responses" | "messages": the log's and the metrics' label

    def model(self, body: dict[str, Any], config: Config) -> str:
        """The model the request is for, after the checks every route makes."""
        ...

    def conversation(self, body: dict[str, Any], config: Config) -> Conversation: ...

    def groq_call(self, body: dict[str, Any], model: str, config: Config) -> GroqCall: ...

    def error_body(self, error: ProxyError) -> dict[str, Any]: ...

    def error_status(self, error: ProxyError) -> int:
        """The status ``error`` is answered with: clients retry by status, differently."""
        ...


class OpenAIErrors:
    """OpenAI's error body and statuses, for the two OpenAI dialects."""

    def error_body(self, error: ProxyError) -> dict[str, Any]:
        return error.body()

    def error_status(self, error: ProxyError) -> int:
        return error.status
