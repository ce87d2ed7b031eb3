"""Wire formats of gpt-oss model servers: one small adapter per server kind.

An adapter only says how the rendered prompt is sent, which stop tokens are asked for, how
generated text or token ids come back (whole or streamed) and how the server describes itself;
parsing, streaming and the OpenAI mapping are shared. Formats: transformers-serve.md §1 and §3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from .backend_check import completions_problem
from .chat_request import ChatRequest
from .constraints import constraint_for, llamacpp_fields, vllm_fields
from .encoding import harmony_encoding
from .errors import ProxyError
from .parse import CALL, ENDOFTEXT, RETURN
from .render import HarmonyPrompt

# <|return|>, <|call|>, <|endoftext|>: the decoder ends a message at the first two and the
# generation at the third, whether the server echoes the stop token or not.
STOP_TOKEN_IDS = (RETURN, CALL, ENDOFTEXT)
# vLLM's /v1/completions defaults max_tokens to 16; when the client sets none and the context
# length is unknown (the server was down when it was asked), ask for this many.
VLLM_FALLBACK_MAX_TOKENS = 8192
DESCRIBE_TIMEOUT = 2.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendOutput:
    """Generated output, whole or one streamed piece."""

    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens the server reused from its cache
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

    async def describe(self, client: httpx.AsyncClient, base_url: str) -> dict[str, Any]: ...


# -- shared helpers ---------------------------------------------------------------------------

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


def _cached(body: Any) -> int | None:
    return cached_tokens(body.get("usage") if isinstance(body, dict) else None)


def cached_tokens(usage: Any) -> int | None:
    """OpenAI's ``usage.prompt_tokens_details.cached_tokens`` (vLLM with
    ``--enable-prompt-tokens-details``; Groq's prompt caching)."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if type(cached) is int else None


def _error_of(data: Any) -> str | None:
    """The message of a streamed ``{"error": "…"}`` or ``{"error": {"message": …}}`` event."""
    if not isinstance(data, dict) or "error" not in data:
        return None
    error = data["error"]
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)


def _text(value: Any, where: str = "choice") -> str:
    if not isinstance(value, str):
        raise BackendFormatError(f"the model server's {where} has no text")
    return value


def _token_ids(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(type(t) is int for t in value):
        return value
    raise BackendFormatError("the model server's token ids are not a list of integers")


def _request_body(prompt: Any, request: ChatRequest, stream: bool, model: str,
                  max_tokens: tuple[str, int | None], **extra: Any) -> dict[str, Any]:
    """What every adapter sends: the prompt, ``stream``, ``model`` only when one is pinned,
    the token limit under the server's own name, the sampling options the client set."""
    body: dict[str, Any] = {"prompt": prompt, "stream": stream, **extra}
    if model:
        body["model"] = model
    name, limit = max_tokens
    if limit is not None:
        body[name] = limit
    body.update({key: value for key in ("temperature", "top_p", "seed")
                 if (value := getattr(request, key)) is not None})
    return body


def _completion_output(body: Any, with_ids: bool) -> BackendOutput:
    """An OpenAI-shaped ``/v1/completions`` answer or stream event (transformers, vLLM)."""
    choice = _first_choice(body)
    prompt_tokens, completion_tokens = _usage(body)
    return BackendOutput(text=_text(choice.get("text")),
                         token_ids=_token_ids(choice.get("token_ids")) if with_ids else None,
                         finish_reason=choice.get("finish_reason"),
                         prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         cached_tokens=_cached(body))


async def _get(client: httpx.AsyncClient, url: str) -> tuple[int | str, Any]:
    """``(status, JSON body or None)``, or ``(exception name, None)`` when nothing answered."""
    try:
        response = await client.get(url, timeout=DESCRIBE_TIMEOUT)
    except httpx.HTTPError as exc:
        return type(exc).__name__, None
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, None


def _description(kind: str, health: int | str, problem: str | None = None,
                 **found: Any) -> dict[str, Any]:
    """What ``describe`` reports: one shape for every server kind."""
    reachable = isinstance(health, int)
    if not reachable:
        problem = f"unreachable ({health})"
    elif health != 200 and problem is None:
        problem = f"/health answered {health}"
    return {"kind": kind, "reachable": reachable, "health_status": health,
            "version": found.get("version"), "model": found.get("model"),
            "context_length": found.get("context_length"), "problem": problem}


# -- transformers serve -----------------------------------------------------------------------

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
        constraint = constraint_for(request, prompt)
        if constraint is not None:
            logger.info("transformers serve has no constrained decoding: %s not enforced "
                        "while generating (validated after, STRICT_RETRIES)",
                        constraint.describe())
        return _request_body(prompt.text, request, stream, model,
                             ("max_tokens", request.max_tokens))

    def read_response(self, body: Any) -> BackendOutput:
        return _completion_output(body, with_ids=False)

    def read_event(self, data: Any) -> BackendOutput:
        error = _error_of(data)
        if error is not None:
            return BackendOutput(error=error)
        return self.read_response(data)

    async def describe(self, client: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
        """``GET /health``; the server tells no version, so ``GET /v1/completions`` tells
        whether it is new enough (405: the route exists; 404: older than 5.6)."""
        health, _ = await _get(client, f"{base_url}/health")
        if not isinstance(health, int):
            return _description(self.name, health)
        status, _ = await _get(client, f"{base_url}{self.completions_path}")
        return _description(self.name, health, completions_problem(status))


# -- vLLM -------------------------------------------------------------------------------------

class VllmBackend:
    """vLLM ≥ 0.10.2 ``POST /v1/completions`` with the prompt as token ids.

    ``return_token_ids`` gives the generated ids (the stop token included); the text keeps the
    control tokens (``skip_special_tokens: false``) for the log and for servers too old to
    return ids. Streams end in ``[DONE]``; usage rides on every chunk only with
    ``continuous_usage_stats``, so the chunk with ``finish_reason`` carries the final counts.
    """

    name = "vllm"
    completions_path = "/v1/completions"
    text_transport = False

    def __init__(self, context_length: int | None = None) -> None:
        self.context_length = context_length

    def request_body(self, prompt: HarmonyPrompt, request: ChatRequest, stream: bool,
                     model: str) -> dict[str, Any]:
        body = _request_body(
            list(prompt.token_ids), request, stream, model,
            ("max_tokens", self._max_tokens(prompt, request)),
            stop_token_ids=list(STOP_TOKEN_IDS), return_token_ids=True,
            skip_special_tokens=False, spaces_between_special_tokens=False)
        constraint = constraint_for(request, prompt)
        if constraint is not None:
            body.update(vllm_fields(constraint))
        if stream:  # vLLM rejects stream_options on a non-streamed request
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        return body

    def _max_tokens(self, prompt: HarmonyPrompt, request: ChatRequest) -> int:
        """The client's limit, else the rest of the context (vLLM's own default is 16)."""
        if request.max_tokens is not None:
            return request.max_tokens
        if self.context_length:
            return max(1, self.context_length - len(prompt.token_ids))
        return VLLM_FALLBACK_MAX_TOKENS

    def read_response(self, body: Any) -> BackendOutput:
        return _completion_output(body, with_ids=True)

    def read_event(self, data: Any) -> BackendOutput:
        error = _error_of(data)
        if error is not None:
            return BackendOutput(error=error)
        if isinstance(data, dict) and data.get("choices") == []:  # the closing usage chunk
            prompt_tokens, completion_tokens = _usage(data)
            return BackendOutput(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                 cached_tokens=_cached(data))
        return self.read_response(data)

    async def describe(self, client: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
        """``GET /health``, ``/version`` and ``/v1/models`` (served model, ``max_model_len``)."""
        health, _ = await _get(client, f"{base_url}/health")
        if not isinstance(health, int):
            return _description(self.name, health)
        status, version = await _get(client, f"{base_url}/version")
        if status != 200 or not isinstance(version, dict) or "version" not in version:
            return _description(self.name, health, f"GET /version answered {status}: this "
                                "does not look like a vLLM server (BACKEND=vllm)")
        _, models = await _get(client, f"{base_url}/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        card = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        return _description(self.name, health, version=version["version"], model=card.get("id"),
                            context_length=card.get("max_model_len"))


# -- llama.cpp --------------------------------------------------------------------------------

LLAMACPP_FINISH = {"limit": "length"}  # stop_type eos / word → "stop"


def _streamed_ids(content: str, tokens: list[int]) -> list[int] | None:
    """The event's ids, or ``None`` when they do not account for its text.

    llama-server holds back a token that ends inside a UTF-8 character and then sends the whole
    character with only the last token's id, so the earlier ids never arrive; the text then
    has to be re-encoded. Control tokens may come with no text (``<|end|>`` without ``-sp``).
    """
    encoding = harmony_encoding()
    if encoding.decode(tokens) == content:
        return tokens
    if not content and all(encoding.is_special_token(t) for t in tokens):
        return tokens
    return None


class LlamaCppBackend:
    """llama.cpp ``llama-server`` native ``POST /completion`` with the prompt as token ids.

    ``return_tokens`` adds the generated ids (the end-of-generation token included); the text
    shows ``<|end|>``, ``<|return|>`` and ``<|call|>`` only with the server's ``-sp``. It stops
    at its end-of-generation set (``<|return|>``, ``<|call|>``, ``<|endoftext|>``) by itself. A
    stream is ``{"content", "tokens", "stop": false}`` events, then one ``"stop": true`` event
    with ``stop_type`` and the counts; no ``[DONE]``.
    """

    name = "llamacpp"
    completions_path = "/completion"
    text_transport = False

    def __init__(self, context_length: int | None = None) -> None:
        self.context_length = context_length

    def request_body(self, prompt: HarmonyPrompt, request: ChatRequest, stream: bool,
                     model: str) -> dict[str, Any]:
        """The prompt as ids; a prompt the context cannot hold is a 400 before any work, and
        strict tools or a json_schema answer get their grammar (constraints.py)."""
        if self.context_length and len(prompt.token_ids) >= self.context_length:
            raise ProxyError(400, f"The prompt is {len(prompt.token_ids)} tokens; the model "
                             f"server's context length is {self.context_length} tokens (its "
                             "/props n_ctx). Shorten the conversation.",
                             code="context_length_exceeded", param="messages")
        constraint = constraint_for(request, prompt)
        extra = llamacpp_fields(constraint) if constraint is not None else {}
        return _request_body(list(prompt.token_ids), request, stream, model,
                             ("n_predict", request.max_tokens),
                             return_tokens=True, cache_prompt=True, **extra)

    def read_response(self, body: Any) -> BackendOutput:
        if not isinstance(body, dict):
            raise BackendFormatError("the model server's answer is not an object")
        content = _text(body.get("content"), "answer")
        tokens = _token_ids(body.get("tokens")) or []
        if not body.get("stop"):
            return BackendOutput(text=content, token_ids=_streamed_ids(content, tokens))
        stop_type = body.get("stop_type")
        timings = body.get("timings")
        cached = timings.get("cache_n") if isinstance(timings, dict) else None
        return BackendOutput(text=content, token_ids=tokens or None,
                             finish_reason=LLAMACPP_FINISH.get(stop_type, "stop"),
                             prompt_tokens=body.get("tokens_evaluated"),
                             completion_tokens=body.get("tokens_predicted"),
                             cached_tokens=cached if type(cached) is int else None)

    def read_event(self, data: Any) -> BackendOutput:
        error = _error_of(data)
        if error is not None:
            return BackendOutput(error=error)
        if isinstance(data, dict) and "prompt_progress" in data:
            return BackendOutput()
        return self.read_response(data)

    async def describe(self, client: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
        """``GET /health`` (503 while loading) and ``/props`` (build, model file, context)."""
        health, body = await _get(client, f"{base_url}/health")
        if health == 503:
            return _description(self.name, health, f"not ready: {_error_of(body) or 'HTTP 503'}")
        if not isinstance(health, int):
            return _description(self.name, health)
        status, props = await _get(client, f"{base_url}/props")
        if status != 200 or not isinstance(props, dict) or "build_info" not in props:
            return _description(self.name, health, f"GET /props answered {status}: this does "
                                "not look like llama.cpp's llama-server (BACKEND=llamacpp)")
        settings = props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        return _description(self.name, health, version=props["build_info"],
                            model=props.get("model_path"), context_length=n_ctx)


def upstream_refusal(status: int, excerpt: str, sent: dict[str, Any]) -> ProxyError:
    """The error for a model server's non-200 answer: its 400 for a constraint it could not
    compile (``grammar``, ``structured_outputs``) or a prompt over its context is the client's
    400; anything else is a 502."""
    if status == 400 and ("grammar" in sent or "structured_outputs" in sent):
        return ProxyError(400, "The model server could not compile the constraint for the "
                          f"strict tools or the response format: {excerpt}",
                          code="unsupported_schema")
    if status == 400 and "exceed_context_size_error" in excerpt:
        return ProxyError(400, f"The prompt does not fit the model server's context: {excerpt}",
                          code="context_length_exceeded", param="messages")
    return ProxyError(502, f"The model server answered {status}: {excerpt}",
                      code="upstream_error")


def make_backend(name: str, context_length: int | None = None) -> Backend:
    """The adapter for ``BACKEND=name``; ``context_length`` (from ``describe``) lets the vLLM
    adapter default ``max_tokens`` to the rest of the context and the llama.cpp adapter refuse
    a prompt the context cannot hold."""
    if name == "transformers":
        return TransformersBackend()
    if name == "vllm":
        return VllmBackend(context_length)
    if name == "llamacpp":
        return LlamaCppBackend(context_length)
    raise ValueError(f"backend {name!r} is not available")
