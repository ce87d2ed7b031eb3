"""Anthropic Messages request → the chat conversation form (for harmony, or Groq's chat API).

``system`` (Claude Code's per-prompt billing line dropped, so the prompt prefix stays
cacheable) and ``role: "system"`` messages become one leading system message; ``tool_result``
blocks become ``tool`` messages ahead of their message's text (the renderer pairs them with
their calls by id); ``thinking`` blocks the assistant turn's ``reasoning``; ``tool_use`` blocks
its ``tool_calls`` (``shared/reference/anthropic-messages.md`` §4, §5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from ..chat_request import ServerToolSpec, require_messages, require_model
from ..errors import bad_request
from ..tools.browser.browser import browser_spec
from ..tools.browser.history import search_results_text, server_call, server_result
from ..tools.browser.items import decode_encrypted
from ..tools.code_history import CODE_TOOL_NAME, server_code_call, server_code_result
from ..tools.code_request import is_code_tool
from ..tools.mcp.history import mcp_result_text, mcp_use
from ..tools.mcp.spec import messages_mcp_servers
from ..tools.mcp.tool import mcp_spec

BILLING_PREFIX = "x-anthropic-billing-header:"
ROLES = ("user", "assistant", "system")
# Thinking budgets (Anthropic's ``budget_tokens``) → harmony reasoning effort, upper bounds.
BUDGET_EFFORT = ((4096, "low"), (16384, "medium"))
EFFORTS = ("low", "medium", "high", "xhigh", "max")
# What user images become: refused (gpt-oss is text-only), passed on (Groq's vision models), or
# a placeholder (a token estimate).
Images = Literal["refuse", "pass", "placeholder"]


def resolve_model(model: str, claude_map: tuple[tuple[str, str], ...]) -> str:
    """A ``claude…`` name through the ``claude_model_map`` setting; other names as they are.
    Claude Code's sub-agents ask for Claude aliases, which would otherwise go to Groq."""
    if not model.lower().startswith("claude"):
        return model
    for pattern, target in claude_map:
        if fnmatchcase(model.lower(), pattern):
            return target
    raise bad_request(
        f"The model {model!r} is a Claude model name, which this proxy does not serve. Map "
        "Claude names to a proxy model with the claude_model_map setting (CLAUDE_MODEL_MAP, "
        "e.g. 'claude-*haiku*=gpt-oss-20b,claude-*=gpt-oss-120b'), or set Claude Code's "
        "ANTHROPIC_DEFAULT_{HAIKU,SONNET,OPUS}_MODEL to one.", param="model",
        code="model_not_mapped")


def require_model_and_roles(body: dict[str, Any]) -> str:
    """The checks every route makes: a model and a non-empty list of messages with roles."""
    model = require_model(body)
    require_messages(body, ROLES, "whose 'role' is user, assistant or system")
    return model


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content as a block list: every ``content`` may be a string or blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array of blocks.",
                          param=where)
    for n, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad_request(f"{where}.content[{n}] must be an object with a 'type'.",
                              param=f"{where}.content[{n}]")
    return content


def _text(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise bad_request(f"{where}: a {block['type']} block needs a string '{key}'.",
                          param=where)
    return value


def _image_url(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(
            source.get("data"), str):
        return f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(
            source.get("url"), str):
        return source["url"]
    raise bad_request(f"{where}: an image needs a base64 or url 'source'.", param=where)


def _placeholder(block: dict[str, Any]) -> str:
    """What stands for an image the model cannot see. In a tool result it must not be a 400:
    Claude Code's Read of a PNG stays in every later request, so the session would end."""
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    kind = source.get("media_type") or "image"
    size = len(source.get("data") or "") * 3 // 4
    return f"[{kind} of about {size} bytes omitted: the model cannot see images]"


def _tool_result_text(block: dict[str, Any], where: str) -> str:
    content = block.get("content")
    if content is None:
        return ""
    texts = []
    for n, part in enumerate(_blocks(content, where)):
        if part["type"] == "text":
            texts.append(_text(part, "text", f"{where}.content[{n}]"))
        elif part["type"] == "image":
            texts.append(_placeholder(part))
        else:
            texts.append(f"[{part['type']} block omitted]")
    return "\n".join(texts)


def system_text(body: dict[str, Any]) -> str:
    """``system`` and the ``role: "system"`` messages, joined as the chat path joins leading
    system messages; billing lines dropped."""
    texts = []
    system = body.get("system")
    if system is not None:
        for n, block in enumerate(_blocks(system, "system")):
            if block["type"] != "text":
                raise bad_request(f"system[{n}] must be a text block.", param=f"system[{n}]")
            texts.append(_text(block, "text", f"system[{n}]"))
    for index, message in enumerate(body["messages"]):
        if message["role"] == "system":
            where = f"messages[{index}]"
            for n, block in enumerate(_blocks(message.get("content"), where)):
                if block["type"] != "text":
                    raise bad_request(f"{where}.content[{n}]: system messages hold text only.",
                                      param=where)
                texts.append(_text(block, "text", f"{where}.content[{n}]"))
    return "\n\n".join(t for t in texts if t and not t.startswith(BILLING_PREFIX))


def _user(message: dict[str, Any], where: str, images: Images) -> list[dict[str, Any]]:
    """Tool results first (as Messages servers order them), then the message's own content."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for n, block in enumerate(_blocks(message.get("content"), where)):
        at, kind = f"{where}.content[{n}]", block["type"]
        if kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_request(f"{at}: a tool_result needs a 'tool_use_id'.", param=at)
            results.append({"role": "tool", "tool_call_id": call_id,
                            "content": _tool_result_text(block, at)})
        elif kind == "text":
            parts.append({"type": "text", "text": _text(block, "text", at)})
        elif kind == "image" and images == "pass":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block, at)}})
        elif kind == "image" and images == "placeholder":
            parts.append({"type": "text", "text": _placeholder(block)})
        elif kind == "image":
            raise bad_request(f"{at}: gpt-oss is text-only; send the image to a vision model "
                              "or describe it in text.", param=at,
                              code="unsupported_content_type")
        else:
            raise bad_request(f"{at}: content block type {kind!r} is not supported here.",
                              param=at, code="unsupported_content_type")
    if not parts:
        return results
    if all(p["type"] == "text" for p in parts):
        return [*results, {"role": "user", "content": "\n".join(p["text"] for p in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _assistant(message: dict[str, Any], where: str, server_steps: bool = True
               ) -> list[dict[str, Any]]:
    """One assistant message as chat turns: a new turn after each server tool's result (the
    text after it answers from it), the results as server ``tool`` messages between."""
    out: list[dict[str, Any]] = []
    thinking, texts, calls = [], [], []
    uses: dict[str, tuple[str, dict[str, Any]]] = {}

    def close() -> None:
        if not (thinking or texts or calls):
            return
        turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if thinking:
            turn["reasoning"] = "\n".join(thinking)
        if calls:
            turn["tool_calls"] = list(calls)
        out.append(turn)
        thinking.clear(), texts.clear(), calls.clear()

    for n, block in enumerate(_blocks(message.get("content"), where)):
        at, kind = f"{where}.content[{n}]", block["type"]
        if kind == "thinking":  # the signature is ours or foreign: either way not checked
            thinking.append(_text(block, "thinking", at))
        elif kind == "text":
            texts.append(_text(block, "text", at))
        elif kind == "server_tool_use" and block.get("name") == CODE_TOOL_NAME:
            call = server_code_call(block, at)  # the proxy's code execution (tools/)
            uses[call["id"]] = ("python", {})
            if server_steps:
                calls.append(call)
        elif kind == "code_execution_tool_result":
            if server_steps:
                close()
                out.append(server_code_result(block, at))
        elif kind == "server_tool_use":
            use_id, name = block.get("id"), block.get("name")
            if not isinstance(use_id, str) or not isinstance(name, str):
                raise bad_request(f"{at}: a server_tool_use needs an 'id' and a 'name'.",
                                  param=at)
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            uses[use_id] = (SERVER_RECIPIENTS.get(name, f"browser.{name}"), arguments)
            if server_steps:
                calls.append(server_call(use_id, *uses[use_id]))
        elif kind == "mcp_tool_use":
            use_id, recipient, arguments = mcp_use(block, at)
            uses[use_id] = (recipient, arguments)
            if server_steps:
                calls.append(server_call(use_id, recipient, arguments))
        elif kind.endswith("_tool_result") and kind != "tool_result":
            use_id = block.get("tool_use_id")
            if not isinstance(use_id, str) or use_id not in uses:
                raise bad_request(f"{at}: a {kind} must follow its server_tool_use.", param=at)
            if server_steps:
                close()
                recipient, arguments = uses[use_id]
                text = mcp_result_text(block) if kind == "mcp_tool_result" else (
                    server_result_text(block, arguments))
                out.append(server_result(use_id, recipient, text))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise bad_request(f"{at}: a tool_use needs an 'id' and a 'name'.", param=at)
            arguments = block.get("input", {})
            calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"],
                "arguments": json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))}})
        elif kind != "redacted_thinking":
            raise bad_request(f"{at}: content block type {kind!r} is not supported in an "
                              "assistant message.", param=at, code="unsupported_content_type")
    close()
    return out or [{"role": "assistant", "content": ""}]


SERVER_RECIPIENTS = {"web_search": "browser.search", "web_fetch": "browser.open"}


def server_result_text(block: dict[str, Any], arguments: dict[str, Any]) -> str:
    """What a returned result block told the model: the search's links (read back from
    ``encrypted_content``), or its error."""
    content = block.get("content")
    if isinstance(content, dict):
        return f"Error: {content.get('error_code') or 'unavailable'}"
    results = []
    for item in content if isinstance(content, list) else []:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            kept = decode_encrypted(item.get("encrypted_content"))
            results.append({"url": item["url"], "title": item.get("title") or kept.get("title"),
                            "snippet": kept.get("snippet", "")})
    return search_results_text(str(arguments.get("query", "")), results)


def server_tools(body: dict[str, Any]) -> tuple[ServerToolSpec, ...]:
    """The tools the proxy runs: the MCP connector's ``mcp_servers``, and Anthropic's web
    search and web fetch as harmony's browser."""
    mcp = tuple(mcp_spec(spec) for spec in messages_mcp_servers(body.get("mcp_servers")))
    return web_tools(body) + mcp


def web_tools(body: dict[str, Any]) -> tuple[ServerToolSpec, ...]:
    """Web search and web fetch as harmony's browser: ``max_uses`` (searches),
    ``allowed_domains`` / ``blocked_domains``."""
    tools = body.get("tools")
    declared = [t for t in tools if isinstance(t, dict) and is_web_tool(t.get("type"))] \
        if isinstance(tools, list) else []
    if not declared:
        return ()
    options: dict[str, Any] = {}
    for tool in declared:
        if tool.get("allowed_domains") and tool.get("blocked_domains"):
            raise bad_request("allowed_domains and blocked_domains cannot both be set.",
                              param="tools")
        if str(tool.get("type")).startswith("web_search") and isinstance(
                tool.get("max_uses"), int):
            options["max_uses"] = tool["max_uses"]
        for key in ("allowed_domains", "blocked_domains"):
            if tool.get(key):
                options[key] = tool[key]
    return (browser_spec(options),)


def is_web_tool(kind: Any) -> bool:
    return isinstance(kind, str) and kind.startswith(("web_search_", "web_fetch_"))


def forced_server_tool(body: dict[str, Any]) -> str | None:
    """The server tool ``tool_choice`` forces (Claude Code's WebSearch side request forces
    ``web_search``), as its harmony recipient."""
    choice = body.get("tool_choice")
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    for tool in tools:
        if isinstance(tool, dict) and is_web_tool(tool.get("type")) and tool.get(
                "name") == choice.get("name"):
            return SERVER_RECIPIENTS.get(tool["name"], "browser.search")
    return None


def chat_messages(body: dict[str, Any], images: Images) -> list[dict[str, Any]]:
    """The conversation as chat messages; images inside tool results become a short
    placeholder whatever ``images`` says about the user's own."""
    system = system_text(body)
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for index, message in enumerate(body["messages"]):
        where = f"messages[{index}]"
        if message["role"] == "user":
            out += _user(message, where, images)
        elif message["role"] == "assistant":
            out += _assistant(message, where, images != "pass")
    return out


@dataclass(frozen=True)
class ToolSet:
    """The tools as chat ``tools``, ``tool_choice`` and ``parallel_tool_calls``."""

    tools: list[dict[str, Any]]
    choice: Any = None
    parallel: bool | None = None


def _schema(tool: dict[str, Any], where: str) -> dict[str, Any]:
    schema = tool.get("input_schema")
    if schema is None:
        return {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise bad_request(f"{where}.input_schema must be an object.", param=where)
    schema = {k: v for k, v in schema.items() if k != "$schema"}
    schema.setdefault("type", "object")
    return schema


def tool_set(body: dict[str, Any]) -> ToolSet:
    """Custom tools as functions; ``defer_loading`` tools (Claude Code's placeholder, "never
    call this tool") left out; Anthropic's server tools refused."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array.", param="tools")
    functions = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool[
                "name"]:
            raise bad_request(f"{where} must be an object with a 'name'.", param=where)
        if (is_web_tool(tool.get("type")) or is_code_tool("messages", tool)
                or tool.get("type") == "mcp_toolset"):
            continue  # run by the proxy (server_tools; code: tools/code_request.py; an MCP
            # toolset is its mcp_servers)
        if tool.get("type") not in (None, "custom"):
            raise bad_request(f"{where}: Anthropic's server tool {tool['type']!r} is not "
                              "available here; declare it as a custom tool with an "
                              "input_schema.", param=where)
        if tool.get("defer_loading") is True:
            continue
        description = tool.get("description") or ""
        if not isinstance(description, str):
            raise bad_request(f"{where}.description must be a string.", param=where)
        functions.append({"type": "function", "function": {
            "name": tool["name"], "description": description,
            "parameters": _schema(tool, where),
            **({"strict": True} if tool.get("strict") is True else {})}})  # structured outputs
    return ToolSet(functions, *_tool_choice(body.get("tool_choice"), functions))


def _tool_choice(choice: Any, functions: list[dict[str, Any]]) -> tuple[Any, bool | None]:
    if choice is None:
        return None, None
    if not isinstance(choice, dict):
        raise bad_request("tool_choice must be an object with a 'type'.", param="tool_choice")
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    if kind in ("auto", "none"):
        return kind, parallel
    if kind == "any":
        return "required", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        if choice["name"] in SERVER_RECIPIENTS:  # a server tool: forced in the prompt instead
            return "auto", parallel
        if not any(f["function"]["name"] == choice["name"] for f in functions):
            raise bad_request("tool_choice names a tool that is not in 'tools'.",
                              param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise bad_request("tool_choice must be {'type': 'auto' | 'any' | 'none'} or "
                      "{'type': 'tool', 'name': …}.", param="tool_choice")


def effort(body: dict[str, Any]) -> str | None:
    """``output_config.effort``, else the ``thinking`` budget; ``None`` leaves the default."""
    config = body.get("output_config")
    value = config.get("effort") if isinstance(config, dict) else None
    if value is not None:
        if value not in EFFORTS:
            raise bad_request(f"output_config.effort {value!r} is not supported: use "
                              f"{', '.join(EFFORTS)}.", param="output_config.effort")
        return value
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "disabled":
        return "low"  # gpt-oss cannot switch its reasoning off
    budget = thinking.get("budget_tokens") if kind == "enabled" else None
    if isinstance(budget, int) and not isinstance(budget, bool):
        return next((level for limit, level in BUDGET_EFFORT if budget < limit), "high")
    return None


def thinking_hidden(body: dict[str, Any]) -> bool:
    """``thinking: {type: "disabled"}`` asks for no thinking blocks in the reply."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "disabled"


def stop_sequences(body: dict[str, Any]) -> list[str] | None:
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list)
                              or not all(isinstance(s, str) for s in stops)):
        raise bad_request("'stop_sequences' must be an array of strings.",
                          param="stop_sequences")
    return stops or None


def require_max_tokens(body: dict[str, Any]) -> None:
    """Anthropic's API requires ``max_tokens`` on ``/v1/messages`` (not on count_tokens): a
    client that works here must work there, so it is refused here as Anthropic words it."""
    if body.get("max_tokens") is None:
        raise bad_request("max_tokens: Field required", param="max_tokens")


def chat_body(body: dict[str, Any], model: str, images: Images) -> dict[str, Any]:
    """The request as a chat-completions body (``None`` fields left out)."""
    tools = tool_set(body)
    fields: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(body, images),
        "stream": body.get("stream") is True,
        "tools": tools.tools or None,
        "tool_choice": tools.choice if tools.tools else None,
        "parallel_tool_calls": tools.parallel,
        "reasoning_effort": effort(body),
        "stop": stop_sequences(body),
        "max_tokens": body.get("max_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
    }
    return {k: v for k, v in fields.items() if v is not None}
