"""Parsing and validating an OpenAI chat-completions request body."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import ToolNamespaceConfig

from .errors import bad_request

EFFORTS = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "minimal": "low",
    "none": "low",
    "xhigh": "high",
    "max": "high",
}


@dataclass(frozen=True)
class ServerToolSpec:
    """A server tool a client request declared, in the dialect-neutral form the renderer and the
    tool loop (tools/) take: the harmony namespace, its declaration, and the client's options
    (max_uses, domain filters, …) the tool reads when it is built for the request."""

    namespace: str
    config: ToolNamespaceConfig
    kind: str  # the step kind its records carry ("web_search", "code_interpreter", "mcp")
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _reject_constant(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON; Python accepts them, harmony's renderer does not."""
    raise ValueError(f"{name} is not a JSON value")


def parse_json_body(raw: bytes | None) -> dict[str, Any]:
    """Decode the body as a JSON object or raise a 400."""
    if not raw:
        raise bad_request("The request body is empty; send a JSON chat-completions request.")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise bad_request("The request body is not valid UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc.msg} at {exc.pos}.") from None
    except ValueError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    if _SURROGATE_ESCAPE.search(raw):
        try:  # only bodies that escape a surrogate pay for this check
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise bad_request("The request body contains an unpaired UTF-16 surrogate "
                              "escape (e.g. \\ud800), which is not text.") from None
    return body


def require_model(body: dict[str, Any]) -> str:
    """The check every API's every route makes: a non-empty string ``model``."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required and must be a non-empty string.", param="model")
    return model


def require_messages(body: dict[str, Any], roles: Collection[str] | None = None,
                     role_rule: str = "with a 'role'") -> None:
    """A non-empty ``messages`` list of objects whose ``role`` is a string (in ``roles``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required and must be a non-empty array.",
                          param="messages")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or (roles is not None and role not in roles):
            raise bad_request(f"messages[{index}] must be an object {role_rule}.",
                              param=f"messages[{index}]")


def require_model_and_messages(body: dict[str, Any]) -> str:
    """The checks both chat routes make: a model and a non-empty message list."""
    model = require_model(body)
    require_messages(body)
    return model


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any] | None
    strict: bool = False  # arguments must follow ``parameters`` (constrained where possible)


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat request the harmony route uses, validated."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: str = "auto"
    forced_tool: str | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str = "medium"
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    hide_reasoning: bool = False
    parallel_tool_calls: bool = True
    server_tools: tuple[ServerToolSpec, ...] = ()  # tools the proxy runs (tools/), in system


def _number(body: dict, key: str, kind: type, low: float | None = None) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
        kind is int and not isinstance(value, int)
    ):
        raise bad_request(f"'{key}' must be a{'n integer' if kind is int else ' number'}.",
                          param=key)
    if low is not None and value < low:
        raise bad_request(f"'{key}' must be at least {low}.", param=key)
    return value


def _effort(body: dict) -> str:
    raw = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if raw is None and isinstance(reasoning, dict):
        raw = reasoning.get("effort")
    if raw is None:
        return "medium"
    if not isinstance(raw, str) or raw.lower() not in EFFORTS:
        raise bad_request(
            f"reasoning_effort {raw!r} is not supported: use low, medium or high.",
            param="reasoning_effort",
        )
    return EFFORTS[raw.lower()]


GROQ_BUILT_IN_TOOLS = ("browser_search", "code_interpreter")


def _tools(body: dict) -> list[ToolSpec]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array.", param="tools")
    specs = []
    for index, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") in GROQ_BUILT_IN_TOOLS:
            continue  # run by the proxy (tools/) for gpt-oss, by Groq on its route
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{index}] must be {{'type': 'function', 'function': "
                              "{'name': …}}.", param=f"tools[{index}]")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad_request(f"tools[{index}].function.parameters must be an object.",
                              param=f"tools[{index}]")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise bad_request(f"tools[{index}].function.description must be a string.",
                              param=f"tools[{index}]")
        specs.append(ToolSpec(fn["name"], description, params or None,
                              fn.get("strict") is True))
    return specs


def _tool_choice(body: dict, tools: list[ToolSpec]) -> tuple[str, str | None]:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto", None
    if choice in ("none", "auto", "required"):
        return choice, None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and any(t.name == name for t in tools):
            return "named", name
        raise bad_request("tool_choice names a function that is not in 'tools'.",
                          param="tool_choice")
    raise bad_request("tool_choice must be 'none', 'auto', 'required' or a function.",
                      param="tool_choice")


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("'stop' must be a string or an array of strings.", param="stop")
    return tuple(s for s in stop if s)


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    """Validate the fields the harmony route reads; unknown fields are ignored."""
    model = require_model_and_messages(body)
    tools = _tools(body)
    tool_choice, forced = _tool_choice(body, tools)
    response_format = body.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise bad_request("'response_format' must be an object.", param="response_format")
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    reasoning = body.get("reasoning")
    hide = body.get("include_reasoning") is False or (
        isinstance(reasoning, dict) and reasoning.get("exclude") is True
    )
    max_tokens = _number(body, "max_completion_tokens", int, 1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1)
    return ChatRequest(
        model=model,
        messages=body["messages"],
        stream=body.get("stream") is True,
        include_usage=include_usage,
        tools=tools,
        tool_choice=tool_choice,
        forced_tool=forced,
        response_format=response_format,
        reasoning_effort=_effort(body),
        stop=_stop(body),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", float, 0),
        top_p=_number(body, "top_p", float, 0),
        seed=_number(body, "seed", int),
        hide_reasoning=hide,
        parallel_tool_calls=body.get("parallel_tool_calls") is not False,
    )


MAX_WORD = 32_768
_LONG_WORD = re.compile(rf"[^\W\d_]{{{MAX_WORD}}}")


def _has_long_word(value: Any) -> bool:
    """A string (key or value) holding a run of more than MAX_WORD letters. Only strings that
    long can, so the regex (~100 ns a character) runs on almost nothing."""
    if isinstance(value, str):
        return len(value) >= MAX_WORD and _LONG_WORD.search(value) is not None
    if isinstance(value, dict):
        return any(_has_long_word(k) or _has_long_word(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_long_word(v) for v in value)
    return False


def check_word_lengths(body: dict[str, Any]) -> None:
    """o200k BPE is quadratic in the length of one word: 200k letters take ~12 s of CPU on
    the event loop. Refuse such a request instead of stalling every other client."""
    if _has_long_word(body):
        raise bad_request(f"A message contains a word longer than {MAX_WORD} letters without "
                          "spaces; gpt-oss cannot tokenize it in reasonable time.",
                          code="word_too_long")
