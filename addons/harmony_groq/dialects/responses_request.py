"""OpenAI Responses request → the chat conversation form (and the tool kinds to answer with).

Input items become chat messages: instructions and leading system/developer items the
developer instructions, reasoning items the ``reasoning`` of the assistant turn they precede,
``function_call``/``custom_tool_call`` items ``tool_calls`` (consecutive calls one turn), their
outputs ``tool`` messages paired by ``call_id``. Namespace tools are flattened to
``NS__name`` and custom (freeform) tools become a function with one string ``input``
(``shared/reference/responses-api.md`` §2).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from ..chat_request import ChatRequest, ServerToolSpec, parse_chat_request
from ..errors import bad_request
from ..render import text_of
from ..tools.browser.browser import browser_spec
from ..tools.browser.history import replayed_action, server_call, server_result
from ..tools.code_history import responses_code_turn
from ..tools.mcp.history import ITEMS as MCP_ITEMS
from ..tools.mcp.history import McpHistory
from ..tools.mcp.spec import responses_mcp_tool
from ..tools.mcp.tool import mcp_spec

logger = logging.getLogger(__name__)

NAMESPACE_SEPARATOR = "__"
IGNORED_ITEMS = ("local_shell_call", "local_shell_call_output",
                 "tool_search_call", "tool_search_output", "image_generation_call",
                 "compaction", "compaction_summary", "ghost_snapshot")
CUSTOM_INPUT_SCHEMA = {
    "type": "object",
    "properties": {"input": {"type": "string",
                             "description": "The raw text input, not JSON-encoded."}},
    "required": ["input"],
}


WEB_SEARCH = ("web_search", "web_search_preview", "browser_search")


def is_web_search(kind: Any) -> bool:
    """``web_search``, ``web_search_preview``, their dated variants, gpt-oss's
    ``browser_search``."""
    return isinstance(kind, str) and (kind in WEB_SEARCH or kind.startswith(
        ("web_search_2", "web_search_preview_2")))


def server_tools(tools: Any) -> tuple[ServerToolSpec, ...]:
    """The hosted tools the proxy runs for gpt-oss (tools/): web search as harmony's browser,
    with ``filters.allowed_domains``."""
    if not isinstance(tools, list):
        return ()
    for tool in tools:
        if isinstance(tool, dict) and is_web_search(tool.get("type")):
            filters = tool.get("filters") if isinstance(tool.get("filters"), dict) else {}
            return (browser_spec({"allowed_domains": filters.get("allowed_domains")}),)
    return ()


@dataclass(frozen=True)
class ToolKind:
    """How a tool the model sees is answered: a function (maybe in a namespace) or custom."""

    name: str
    namespace: str | None = None
    custom: bool = False


@dataclass
class ResponsesConversation:
    """A parsed Responses request: the chat form, the tool kinds, the items to store."""

    chat: ChatRequest
    chat_body: dict[str, Any]  # the chat body ``chat`` was parsed from (Groq's chat API takes it)
    tools: dict[str, ToolKind]
    items: list[dict[str, Any]]  # the full input history as Responses items


def _where(index: int) -> str:
    return f"input[{index}]"


def _flat_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _tool_entry(tool: dict[str, Any], where: str, namespace: str | None,
                kinds: dict[str, ToolKind]) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where} needs a 'name'.", param=where)
    flat = _flat_name(name, namespace)
    description = tool.get("description") or ""
    if not isinstance(description, str):
        raise bad_request(f"{where}.description must be a string.", param=where)
    if tool.get("type") == "custom":
        kinds[flat] = ToolKind(name, namespace, custom=True)
        fmt = tool.get("format")
        if isinstance(fmt, dict) and isinstance(fmt.get("definition"), str):
            description += (f"\n\nThe input follows this {fmt.get('syntax', '')} grammar; pass "
                            f"it as the raw string `input`:\n{fmt['definition']}")
        parameters: Any = CUSTOM_INPUT_SCHEMA
    else:
        kinds[flat] = ToolKind(name, namespace)
        parameters = tool.get("parameters")
    function = {"name": flat, "description": description, "parameters": parameters}
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def parse_tools(tools: Any) -> tuple[list[dict[str, Any]], dict[str, ToolKind]]:
    """Responses tools → chat function tools and the kind of each; hosted tools (run on
    OpenAI's servers: gpt-oss has none here) are dropped with a log line."""
    if tools is None:
        return [], {}
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array.", param="tools")
    chat_tools: list[dict[str, Any]] = []
    kinds: dict[str, ToolKind] = {}
    hosted: list[str] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in ("function", "custom"):
            chat_tools.append(_tool_entry(tool, where, None, kinds))
        elif kind == "namespace":
            namespace, members = tool.get("name"), tool.get("tools")
            if not isinstance(namespace, str) or not namespace or not isinstance(members, list):
                raise bad_request(f"{where}: a namespace tool needs 'name' and 'tools'.",
                                  param=where)
            for n, member in enumerate(members):
                if not isinstance(member, dict) or member.get("type") not in ("function",
                                                                               "custom"):
                    raise bad_request(f"{where}.tools[{n}] must be a function or custom tool.",
                                      param=where)
                chat_tools.append(_tool_entry(member, f"{where}.tools[{n}]", namespace, kinds))
        elif is_web_search(kind):
            continue  # run by the proxy (server_tools)
        elif kind == "mcp":
            continue  # run by the proxy (mcp_tools)
        elif isinstance(kind, str):
            hosted.append(kind)
        else:
            raise bad_request(f"{where} must be an object with a 'type'.", param=where)
    if hosted:
        logger.info("Responses request: hosted tools dropped (gpt-oss cannot run them): %s",
                    ", ".join(hosted))
    return chat_tools, kinds


def _output_text(output: Any, where: str) -> str:
    """A tool output: a string, or content parts whose text is joined (images noted)."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for part in output:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("input_image", "input_file"):
                texts.append(f"[{kind.removeprefix('input_')} omitted: gpt-oss is text-only]")
            else:
                raise bad_request(f"{where}.output: unsupported part {kind!r}.", param=where)
        return "\n".join(texts)
    raise bad_request(f"{where}.output must be a string or an array of parts.", param=where)


def _chat_parts(parts: list[Any], where: str) -> list[dict[str, Any]]:
    """User content parts with images, in chat's shape (``text``, ``image_url``)."""
    chat = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image" and isinstance(part.get("image_url"), str):
            chat.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind in ("input_text", "text") and isinstance(part.get("text"), str):
            chat.append({"type": "text", "text": part["text"]})
        else:
            raise bad_request(f"{where}: content part {kind!r} is not a text or image URL part.",
                              param=where, code="unsupported_content_type")
    return chat


def _reasoning_text(item: dict[str, Any]) -> str:
    """The reasoning's own text (``content``), else its summary."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [p["text"] for p in parts if isinstance(p, dict)
                     and isinstance(p.get("text"), str)]
            if texts:
                return "\n".join(texts)
    return ""


class _History:
    """Builds chat messages from input items, one assistant turn at a time."""

    def __init__(self, kinds: dict[str, ToolKind], images: bool) -> None:
        self.kinds = kinds
        self.server_steps = not images  # gpt-oss: past web searches rendered as browser calls
        self.images = images  # pass user images on (a Groq vision model) instead of a 400
        self.messages: list[dict[str, Any]] = []
        self.turn: dict[str, Any] | None = None  # the open assistant turn
        self.reasoning = ""
        self.calls: set[str] = set()
        self.ignored: list[str] = []
        self.mcp = McpHistory()

    def _open_turn(self) -> dict[str, Any]:
        if self.turn is None:
            self.turn = {"role": "assistant", "content": ""}
            if self.reasoning:
                self.turn["reasoning"] = self.reasoning
                self.reasoning = ""
            self.messages.append(self.turn)
        return self.turn

    def _close_turn(self) -> None:
        self.turn = None

    def add(self, item: Any, index: int) -> None:
        where = _where(index)
        if isinstance(item, str):
            item = {"type": "message", "role": "user", "content": item}
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object.", param=where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            self._message(item, where)
        elif kind == "reasoning":
            self._close_turn()
            self.reasoning = "\n".join(t for t in (self.reasoning, _reasoning_text(item)) if t)
        elif kind in ("function_call", "custom_tool_call"):
            self._call(item, where, custom=kind == "custom_tool_call")
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, where)
        elif kind == "code_interpreter_call":  # the proxy's own step: the call and its logs
            call, output = responses_code_turn(item, where)
            self._open_turn().setdefault("tool_calls", []).append(call)
            self._close_turn()
            self.messages.append(output)
        elif kind == "web_search_call":
            self._web_search(item, index)
        elif kind in MCP_ITEMS:
            self._mcp(item, kind, where)
        elif kind == "item_reference":
            raise bad_request(f"{where}: item references are not supported; send the item "
                              "itself or use previous_response_id.", param=where)
        elif kind in IGNORED_ITEMS:
            self.ignored.append(kind)
        else:
            raise bad_request(f"{where}: unknown input item type {kind!r}.", param=where)

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise bad_request(f"{where}: unknown role {role!r}.", param=where)
        parts = item.get("content")
        if role == "user" and self.images and isinstance(parts, list) and any(
                isinstance(p, dict) and p.get("type") == "input_image" for p in parts):
            self._close_turn()
            self.reasoning = ""
            self.messages.append({"role": role, "content": _chat_parts(parts, where)})
            return
        content = text_of(parts, where)
        if role == "assistant":
            turn = self._open_turn()
            if turn.get("tool_calls"):  # text after a call opens a new turn
                self._close_turn()
                turn = self._open_turn()
            turn["content"] = "\n".join(t for t in (turn["content"], content) if t)
            return
        self._close_turn()
        self.reasoning = ""  # reasoning belongs to the assistant turn right after it
        self.messages.append({"role": role, "content": content})

    def _call(self, item: dict[str, Any], where: str, custom: bool) -> None:
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise bad_request(f"{where}: a tool call needs 'call_id' and 'name'.", param=where)
        namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
        if custom:
            raw = item.get("input")
            arguments = json.dumps({"input": raw if isinstance(raw, str) else ""},
                                   ensure_ascii=False)
        else:
            arguments = item.get("arguments")
            if not isinstance(arguments, str):
                raise bad_request(f"{where}.arguments must be a JSON string.", param=where)
        turn = self._open_turn()
        turn.setdefault("tool_calls", []).append({
            "id": call_id, "type": "function",
            "function": {"name": _flat_name(name, namespace), "arguments": arguments}})
        self.calls.add(call_id)

    def _web_search(self, item: dict[str, Any], index: int) -> None:
        """A past web search (Codex resends them without ids): the browser call and what it
        answered, for gpt-oss; nothing for Groq."""
        replayed = replayed_action(item.get("action")) if self.server_steps else None
        if replayed is None:
            self.ignored.append("web_search_call")
            return
        recipient, arguments, text = replayed
        call_id = item.get("id") if isinstance(item.get("id"), str) else f"ws_replay_{index}"
        turn = self._open_turn()
        turn.setdefault("tool_calls", []).append(server_call(call_id, recipient, arguments))
        self._close_turn()
        self.messages.append(server_result(call_id, recipient, text))

    def _mcp(self, item: dict[str, Any], kind: str, where: str) -> None:
        """MCP items: past calls join the history (gpt-oss), listings and approvals are
        remembered for ``mcp_tools``; Groq's chat API has no use for them."""
        if self.images:
            self.ignored.append(kind)
            return
        messages = self.mcp.add(kind, item, where)
        if messages:
            self._close_turn()
            self.messages += messages

    def _output(self, item: dict[str, Any], where: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or call_id not in self.calls:
            raise bad_request(f"{where}: call_id {call_id!r} does not answer an earlier "
                              "function_call or custom_tool_call in the input.", param=where,
                              code="unknown_call_id")
        self._close_turn()
        self.messages.append({"role": "tool", "tool_call_id": call_id,
                              "content": _output_text(item.get("output"), where)})


def _tool_choice(choice: Any, kinds: dict[str, ToolKind]) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and is_web_search(choice.get("type")):
        return "auto"  # the search is forced in the prompt (parse_responses_request)
    if isinstance(choice, dict) and isinstance(choice.get("name"), str):
        flat = _flat_name(choice["name"], choice.get("namespace"))
        if flat not in kinds:
            raise bad_request("tool_choice names a tool that is not in 'tools'.",
                              param="tool_choice")
        return {"type": "function", "function": {"name": flat}}
    if isinstance(choice, dict) and choice.get("type") in ("auto", "none", "required"):
        return choice["type"]
    raise bad_request("tool_choice must be 'none', 'auto', 'required' or a tool.",
                      param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    return {"type": "json_schema", "json_schema": {
        key: fmt[key] for key in ("name", "schema", "description", "strict") if key in fmt}}


def input_items(body: dict[str, Any]) -> list[Any]:
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return value
    raise bad_request("'input' is required: a string or an array of items.", param="input")


def parse_responses_request(body: dict[str, Any], history: list[dict[str, Any]],
                            images: bool = False) -> ResponsesConversation:
    """Validate a Responses body; ``history`` is what ``previous_response_id`` stands for;
    ``images``: user images go on as chat image parts (Groq), else they are a 400 (gpt-oss)."""
    items = history + input_items(body)
    chat_tools, kinds = parse_tools(body.get("tools"))
    builder = _History(kinds, images)
    for index, item in enumerate(items):
        builder.add(item, index - len(history))
    messages = builder.messages
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("'instructions' must be a string.", param="instructions")
    if instructions:
        messages = [{"role": "developer", "content": instructions}, *messages]
    if not messages:
        raise bad_request("'input' holds no message.", param="input")
    reasoning = body.get("reasoning")
    chat_body: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "stream": body.get("stream") is True,
        "tools": chat_tools or None,
        "tool_choice": _tool_choice(body.get("tool_choice"), kinds) if chat_tools else None,
        "parallel_tool_calls": body.get("parallel_tool_calls"),
        "reasoning": reasoning if isinstance(reasoning, dict) else None,
        "response_format": _response_format(body.get("text")),
        "max_completion_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
    }
    chat_body = {k: v for k, v in chat_body.items() if v is not None}
    if builder.ignored:
        logger.info("Responses request: items gpt-oss has no use for dropped: %s",
                    ", ".join(builder.ignored))
    chat = parse_chat_request(chat_body)
    searches = () if images else server_tools(body.get("tools"))
    if searches:
        choice = body.get("tool_choice")
        forced = isinstance(choice, dict) and is_web_search(choice.get("type"))
        chat = dataclasses.replace(chat, server_tools=searches, **(
            {"tool_choice": "named", "forced_tool": "browser.search"} if forced else {}))
    if not images and (mcp := mcp_tools(body.get("tools"), builder.mcp)):
        chat = dataclasses.replace(chat, server_tools=chat.server_tools + mcp)
    return ResponsesConversation(chat, chat_body, kinds, items)


def mcp_tools(tools: Any, history: McpHistory) -> tuple[ServerToolSpec, ...]:
    """The request's ``mcp`` tools for the proxy to run, with what the conversation already
    holds: each server's listing (not listed again) and the approvals since the last turn."""
    if not isinstance(tools, list):
        return ()
    seen: set[str] = set()
    pending = history.pending()
    specs = []
    for index, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            spec = responses_mcp_tool(tool, f"tools[{index}]", seen)
            specs.append(mcp_spec(spec, history.listed.get(spec.label),
                                  [a for a in pending if a.label == spec.label]))
    return tuple(specs)
