"""OpenAI chat request → harmony prompt, built with openai-harmony's typed builders.

The rules (system message, developer instructions, tools namespace, history shapes, CoT
dropping, parallel call interleaving) follow ``shared/reference/harmony-mapping.md`` §2.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openai_harmony import (
    Author,
    DeveloperContent,
    HarmonyError,
    Message,
    ReasoningEffort,
    RenderOptions,
    Role,
    SystemContent,
    TextContent,
    ToolDescription,
)

from .chat_request import ChatRequest
from .encoding import harmony_encoding
from .errors import bad_request
from .schema import normalize_schema

_EFFORT = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM,
           "high": ReasoningEffort.HIGH}
_SPECIAL_TEXT = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_REASONING_KEYS = ("reasoning", "reasoning_content", "thinking")


class ToolNames:
    """Two-way map between client tool names and names harmony can carry (``[A-Za-z0-9_]``)."""

    def __init__(self) -> None:
        self._to_safe: dict[str, str] = {}
        self._to_client: dict[str, str] = {}

    def add(self, name: str) -> str:
        if name in self._to_safe:
            return self._to_safe[name]
        safe = re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"
        if safe[0].isdigit():
            safe = "_" + safe
        candidate, n = safe, 2
        while candidate in self._to_client:
            candidate, n = f"{safe}_{n}", n + 1
        self._to_safe[name] = candidate
        self._to_client[candidate] = name
        return candidate

    def to_client(self, safe: str) -> str:
        return self._to_client.get(safe, safe)


@dataclass(frozen=True)
class HarmonyPrompt:
    """A rendered prompt: token ids, their text, and what parsing the reply needs."""

    token_ids: list[int]
    text: str
    tool_names: ToolNames
    declared_tools: frozenset[str]
    prefill_ids: tuple[int, ...] = ()  # the start of the reply, written for the model
    server_tools: frozenset[str] = frozenset()  # namespaces the proxy runs (system message)


def neutralize_special_tokens(text: str) -> str:
    """Make special-token strings in user-controlled text inert under re-tokenisation.

    ``transformers serve`` tokenises prompt text with special-token parsing, so a literal
    ``<|start|>`` in a message would become a control token. Every ``<|name|>`` is changed,
    not only harmony's names: the model server's tokenizer names some ids differently
    (``<|endofprompt|>``). The vertical bars become U+FF5C (fullwidth vertical line), which
    keeps the text readable.
    """
    if "<|" not in text:
        return text
    return _SPECIAL_TEXT.sub(lambda m: m.group(0).replace("|", "\uff5c"), text)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {fn(k): _map_strings(v, fn) for k, v in value.items()}
    return value


def text_of(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of text parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "input_text", "output_text", "refusal"):
                text = part.get("text", part.get("refusal"))
                if not isinstance(text, str):
                    raise bad_request(f"{where}: a text part needs a string 'text'.", param=where)
                texts.append(text)
            elif isinstance(part, str):
                texts.append(part)
            else:
                raise bad_request(
                    f"{where}: content part type {kind!r} is not supported: gpt-oss is "
                    "text-only (send text parts only).",
                    param=where,
                    code="unsupported_content_type",
                )
        return "\n".join(texts)
    raise bad_request(f"{where}: content must be a string or an array of parts.", param=where)


def reasoning_of(message: dict[str, Any]) -> str:
    for key in _REASONING_KEYS:
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    details = message.get("reasoning_details")
    if isinstance(details, list):
        texts = [d.get("text") for d in details
                 if isinstance(d, dict) and d.get("type") == "reasoning.text"]
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def _arguments_text(arguments: Any) -> str:
    """Arguments verbatim (the model's own bytes keep the prompt prefix-cacheable); none → {}."""
    if isinstance(arguments, str):
        return arguments if arguments.strip() else "{}"
    if arguments is None:
        return "{}"
    return json.dumps(arguments, ensure_ascii=False)


class _HistoryBuilder:
    """Turns OpenAI messages (after the leading instructions) into harmony messages."""

    def __init__(self, names: ToolNames, clean: Callable[[str], str]) -> None:
        self.names = names
        self.clean = clean
        self.out: list[Message] = []
        self.call_names: dict[str, str] = {}
        self.last_call: str | None = None

    def assistant(self, text: str, channel: str) -> Message:
        return Message.from_role_and_content(Role.ASSISTANT, self.clean(text)).with_channel(channel)

    def call(self, call: Any, where: str) -> tuple[str | None, Message]:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(f"{where}: tool_calls entries need function.name.", param=where)
        # A server tool's past call (tools/): its own recipient, on commentary so the CoT drop
        # before the last final keeps it with its result (harmony allows built-in calls there).
        if call.get("type") == "server":
            call_id = call.get("id") if isinstance(call.get("id"), str) else None
            if call_id:
                self.call_names[call_id] = fn["name"]
            return call_id, (Message.from_role_and_content(
                Role.ASSISTANT, self.clean(_arguments_text(fn.get("arguments"))))
                .with_channel("commentary").with_recipient(fn["name"]))
        safe = self.names.add(fn["name"])
        call_id = call.get("id") if isinstance(call.get("id"), str) else None
        if call_id:
            self.call_names[call_id] = safe
        self.last_call = safe
        message = (
            Message.from_role_and_content(Role.ASSISTANT,
                                          self.clean(_arguments_text(fn.get("arguments"))))
            .with_channel("commentary")
            .with_recipient(f"functions.{safe}")
            .with_content_type("json")
        )
        return call_id, message

    def result(self, message: dict[str, Any], where: str) -> Message:
        call_id = message.get("tool_call_id")
        safe = self.call_names.get(call_id) if isinstance(call_id, str) else None
        if safe is None and isinstance(message.get("name"), str) and message["name"]:
            safe = message["name"] if message.get("server") else self.names.add(message["name"])
        if safe is None:
            safe = self.last_call
        if safe is None:
            raise bad_request(f"{where}: a tool message must answer an earlier tool call "
                              "(tool_call_id).", param=where)
        text = self.clean(text_of(message.get("content"), where))
        if message.get("server"):  # a server tool's answer: authored by its recipient
            return (Message.from_author_and_content(Author.new(Role.TOOL, safe), text)
                    .with_channel("commentary").with_recipient("assistant"))
        return (
            Message.from_author_and_content(Author.new(Role.TOOL, f"functions.{safe}"), text)
            .with_channel("commentary")
            .with_recipient("assistant")
        )

    def build(self, messages: list[dict[str, Any]], offset: int) -> list[Message]:
        i = 0
        while i < len(messages):
            message, where = messages[i], f"messages[{offset + i}]"
            role = message["role"]
            if role in ("system", "developer"):
                text = self.clean(text_of(message.get("content"), where))
                self.out.append(Message.from_role_and_content(
                    Role.DEVELOPER, DeveloperContent.new().with_instructions(text)))
            elif role == "user":
                self.out.append(Message.from_role_and_content(
                    Role.USER, self.clean(text_of(message.get("content"), where))))
            elif role == "assistant":
                i = self._assistant_turn(messages, i, offset)
                continue
            elif role in ("tool", "function"):
                self.out.append(self.result(message, where))
            else:
                raise bad_request(f"{where}: unknown role {role!r}.", param=where)
            i += 1
        return self.out

    def _assistant_turn(self, messages: list[dict[str, Any]], i: int, offset: int) -> int:
        message, where = messages[i], f"messages[{offset + i}]"
        reasoning = reasoning_of(message)
        content = text_of(message.get("content"), where)
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise bad_request(f"{where}: tool_calls must be an array.", param=where)
        if reasoning:
            self.out.append(self.assistant(reasoning, "analysis"))
        if not calls:
            if content:
                self.out.append(self.assistant(content, "final"))
            return i + 1
        if content:
            self.out.append(self.assistant(content, "commentary"))
        rendered = [self.call(call, f"{where}.tool_calls[{n}]") for n, call in enumerate(calls)]
        call_ids = {call_id for call_id, _ in rendered if call_id}
        # Interleave each call with its result, the shape gpt-oss is trained on.
        j = i + 1
        results: dict[str, Message] = {}
        unmatched: list[Message] = []
        while j < len(messages) and messages[j]["role"] in ("tool", "function"):
            tool_message = messages[j]
            result = self.result(tool_message, f"messages[{offset + j}]")
            call_id = tool_message.get("tool_call_id")
            if isinstance(call_id, str) and call_id in call_ids and call_id not in results:
                results[call_id] = result
            else:
                unmatched.append(result)
            j += 1
        for call_id, call_message in rendered:
            self.out.append(call_message)
            if call_id in results:
                self.out.append(results[call_id])
        self.out.extend(unmatched)
        return j


def drop_old_reasoning(messages: list[Message]) -> list[Message]:
    """Drop every analysis message before the last assistant ``final`` (cookbook rule)."""
    last_final = max(
        (n for n, m in enumerate(messages)
         if m.author.role == Role.ASSISTANT and m.channel == "final"),
        default=-1,
    )
    return [m for n, m in enumerate(messages)
            if not (n < last_final and m.author.role == Role.ASSISTANT
                    and m.channel == "analysis")]


def _response_format_section(response_format: dict[str, Any] | None,
                             clean: Callable[[str], str]) -> str:
    if not response_format or response_format.get("type") != "json_schema":
        return ""
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise bad_request("response_format.json_schema needs a 'schema' object.",
                          param="response_format")
    name = spec.get("name") or "response"
    lines = ["# Response Formats", "", f"## {name}", ""]
    if isinstance(spec.get("description"), str) and spec["description"]:
        lines.append(f"// {spec['description']}")
    lines.append(json.dumps(spec["schema"], separators=(",", ":"), ensure_ascii=False))
    return clean("\n".join(lines))


def _developer_message(instructions: str, tools: list[ToolDescription],
                       formats: str) -> Message | None:
    if tools:
        content = DeveloperContent.new()
        if instructions:
            content = content.with_instructions(instructions)
        parts: list[Any] = [content.with_function_tools(tools)]
        if formats:
            parts.append(TextContent(text="\n\n" + formats))
        return Message(author=Author.new(Role.DEVELOPER, None), content=parts)
    sections = ([f"# Instructions\n\n{instructions}"] if instructions else []) + (
        [formats] if formats else [])
    if not sections:
        return None
    # One text part, so re-tokenising the prompt text reproduces the ids exactly.
    return Message.from_role_and_content(Role.DEVELOPER, "\n\n".join(sections))


def _tool_descriptions(request: ChatRequest, names: ToolNames,
                       clean: Callable[[str], str]) -> list[ToolDescription]:
    if request.tool_choice == "none":
        return []
    described = []
    for tool in request.tools:
        params = normalize_schema(tool.parameters) if tool.parameters else None
        if params is not None and not params.get("properties") and params.get(
                "type", "object") == "object":
            params = None
        if params is not None:
            params = _map_strings(params, clean)
        described.append(ToolDescription.new(names.add(tool.name), clean(tool.description),
                                              params))
    return described


@functools.cache
def _completion_start() -> list[int]:
    """``<|start|>assistant``: what the completion continues from."""
    return harmony_encoding().encode("<|start|>assistant", allowed_special="all")


class MessageTokenCache:
    """Rendered tokens per harmony message, least recently used first out, bounded by the
    size of what it keeps. A conversation renders as the concatenation of its messages
    (analysis is not auto-dropped), so an agent resending its history pays for new ones only:
    rendering 100k tokens in openai-harmony takes ~60 ms with the GIL held."""

    def __init__(self, budget_bytes: int = 64 * 1024 * 1024) -> None:
        self.budget = budget_bytes
        self.entries: OrderedDict[tuple[str, bool], array] = OrderedDict()
        self.size = 0

    def tokens(self, message: Message, with_tools: bool) -> array:
        key = (message.to_json(), with_tools)
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
            return hit
        ids = array("I", harmony_encoding().render(
            message, RenderOptions(conversation_has_function_tools=with_tools)))
        cost = len(key[0]) + ids.itemsize * len(ids)
        if cost <= self.budget // 4:
            self.entries[key] = ids
            self.size += cost
            while self.size > self.budget:
                (text, _), old = self.entries.popitem(last=False)
                self.size -= len(text) + old.itemsize * len(old)
        return ids


_MESSAGE_TOKENS = MessageTokenCache()


def render_prompt(request: ChatRequest, date: str = "", text_transport: bool = True
                  ) -> HarmonyPrompt:
    """Render ``request`` into a harmony completion prompt.

    ``text_transport`` neutralises special-token strings inside message text, for backends
    that re-tokenise the prompt text (transformers serve).
    """
    clean: Callable[[str], str] = neutralize_special_tokens if text_transport else str
    names = ToolNames()
    system = (
        SystemContent.new()
        .with_reasoning_effort(_EFFORT[request.reasoning_effort])
        .with_conversation_start_date(date or datetime.datetime.now(datetime.UTC).date()
                                      .isoformat())
    )
    for spec in request.server_tools:  # built-in tools go in the system message (harmony docs)
        system = system.with_tools(spec.config)
    messages = request.messages
    lead = 0
    while lead < len(messages) and messages[lead]["role"] in ("system", "developer"):
        lead += 1
    instructions = clean("\n\n".join(
        t for n in range(lead)
        if (t := text_of(messages[n].get("content"), f"messages[{n}]"))
    ))
    tools = _tool_descriptions(request, names, clean)
    harmony: list[Message] = [Message.from_role_and_content(Role.SYSTEM, system)]
    developer = _developer_message(instructions, tools,
                                   _response_format_section(request.response_format, clean))
    if developer is not None:
        harmony.append(developer)
    harmony.extend(drop_old_reasoning(_HistoryBuilder(names, clean).build(messages[lead:], lead)))
    encoding = harmony_encoding()
    try:
        with_tools = bool(tools)
        ids = [t for m in harmony for t in _MESSAGE_TOKENS.tokens(m, with_tools)]
        ids += _completion_start()
    except (ValueError, HarmonyError) as exc:  # e.g. a number JSON allows but Rust cannot hold
        raise bad_request(f"The conversation cannot be rendered for gpt-oss: {exc}") from None
    prefill = forced_call_prefill(request, names)
    prefill_ids = tuple(encoding.encode(prefill, allowed_special="all")) if prefill else ()
    ids += prefill_ids
    return HarmonyPrompt(
        token_ids=ids,
        text=encoding.decode_utf8(ids),
        tool_names=names,
        declared_tools=frozenset(names.add(t.name) for t in request.tools),
        prefill_ids=prefill_ids,
        server_tools=frozenset(spec.namespace for spec in request.server_tools),
    )


def forced_call_prefill(request: ChatRequest, names: ToolNames) -> str:
    """The reply's header when ``tool_choice`` demands a call: a text backend has no grammar,
    so the call's header is written for the model (it skips its reasoning), which then only
    chooses the arguments (named) or the function and the arguments (``required``)."""
    if request.tool_choice == "named" and request.forced_tool and any(
            request.forced_tool.startswith(spec.namespace + ".") for spec in request.server_tools):
        return f"<|channel|>analysis to={request.forced_tool}<|message|>"  # a server tool
    if request.tool_choice == "named" and request.forced_tool:
        return (f"<|channel|>commentary to=functions.{names.add(request.forced_tool)} "
                "<|constrain|>json<|message|>")
    if request.tool_choice == "required" and request.tools:
        return "<|channel|>commentary to=functions."
    return ""
