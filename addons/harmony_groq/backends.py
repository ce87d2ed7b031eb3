"""Wire formats of gpt-oss model servers: one small adapter per server kind.

An adapter only says how the rendered prompt is sent and how generated text or token ids come
back; parsing, streaming and the OpenAI mapping are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .chat_request import ChatRequest
from .render import HarmonyPrompt


@dataclass(frozen=True)
class BackendOutput:
    """Generated output, whole or one streamed piece."""

    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class BackendFormatError(ValueError):
    """The model server answered something this adapter cannot read."""


class Backend(Protocol):
    name: str
    completions_path: str
    text_transport: bool

    def request_body(self, prompt: HarmonyPrompt, request: ChatRequest, stream: bool,
                     model: str) -> dict[str, Any]: ...

    def read_response(self, body: Any) -> BackendOutput: ...

    def read_event(self, data: Any) -> BackendOutput: ...


def _first_choice(body: Any) -> dict[str, Any]:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendFormatError("no choices in the model server's answer")
    return choices[0]


def _usage(body: dict[str, Any]) -> tuple[int | None, int | None]:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


class TransformersBackend:
    """``transformers serve`` ≥ 5.6: ``POST /v1/completions`` with a prompt string.

    It rejects unknown keys with 422 and any ``model`` but the one it was started with, never
    returns token ids, does not return ``<|return|>``, and streams with no ``[DONE]``.
    """

    name = "transformers"
    completions_path = "/v1/completions"
    text_transport = True

    def request_body(self, prompt: HarmonyPrompt, request: ChatRequest, stream: bool,
                     model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt.text, "stream": stream}
        if model:
            body["model"] = model
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        return body

    def read_response(self, body: Any) -> BackendOutput:
        choice = _first_choice(body)
        text = choice.get("text")
        if not isinstance(text, str):
            raise BackendFormatError("the model server's choice has no text")
        prompt_tokens, completion_tokens = _usage(body)
        return BackendOutput(text=text, finish_reason=choice.get("finish_reason"),
                             prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def read_event(self, data: Any) -> BackendOutput:
        if isinstance(data, dict) and "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            return BackendOutput(error=str(message))
        return self.read_response(data)


BACKENDS: dict[str, type] = {"transformers": TransformersBackend}


def make_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"backend {name!r} is not available") from None
