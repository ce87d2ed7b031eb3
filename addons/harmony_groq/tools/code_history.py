"""Code execution items a client sends back in its history, as the chat messages the renderer
turns into harmony: the model's ``python`` call (a ``server`` tool call) and the tool's message
(a ``server`` tool message), as the model first saw them.

Responses ``code_interpreter_call`` items, Messages ``server_tool_use`` (``code_execution``) +
``code_execution_tool_result`` blocks, and Chat assistant messages with ``executed_tools``.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import bad_request
from .containers import tool_text

CODE_TOOL_NAME = "code_execution"
CHAT_CODE_TYPES = ("python", "code_interpreter")


def server_call(call_id: str, code: str) -> dict[str, Any]:
    return {"id": call_id, "type": "server",
            "function": {"name": "python", "arguments": code}}


def server_output(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "name": "python", "server": True,
            "content": text}


def _code(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{where}: a code execution item needs its code as a string.",
                          param=where)
    return value


def server_code_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A Messages ``server_tool_use`` block named ``code_execution``."""
    arguments = block.get("input")
    if not isinstance(block.get("id"), str) or not isinstance(arguments, dict):
        raise bad_request(f"{where}: a server_tool_use needs an 'id' and an 'input'.",
                          param=where)
    return server_call(block["id"], _code(arguments.get("code"), where))


def server_code_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A Messages ``code_execution_tool_result`` block."""
    call_id, content = block.get("tool_use_id"), block.get("content")
    if not isinstance(call_id, str) or not isinstance(content, dict):
        raise bad_request(f"{where}: a code_execution_tool_result needs a 'tool_use_id' and "
                          "its 'content'.", param=where)
    if content.get("type") == "code_execution_tool_result_error":
        text = f"[code execution failed: {content.get('error_code', 'unavailable')}]"
    else:
        text = tool_text(str(content.get("stdout") or ""), str(content.get("stderr") or ""))
    return server_output(call_id, text)


def responses_code_turn(item: dict[str, Any], where: str) -> tuple[dict[str, Any],
                                                                   dict[str, Any]]:
    """A Responses ``code_interpreter_call`` item: its call and its output (its logs)."""
    call_id = item.get("id") if isinstance(item.get("id"), str) else f"ci_{where}"
    outputs = item.get("outputs") if isinstance(item.get("outputs"), list) else []
    logs = "".join(str(o.get("logs") or "") for o in outputs
                   if isinstance(o, dict) and o.get("type") == "logs")
    return server_call(call_id, _code(item.get("code"), where)), server_output(
        call_id, logs or tool_text())


def chat_executed(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A Chat assistant message with code in ``executed_tools``: the calls and outputs first,
    then the message itself (its answer came after them)."""
    executed = message.get("executed_tools")
    if not isinstance(executed, list):
        return [message]
    turns: list[dict[str, Any]] = []
    rest = {key: value for key, value in message.items() if key != "executed_tools"}
    for n, entry in enumerate(executed):
        if not isinstance(entry, dict) or entry.get("type") not in CHAT_CODE_TYPES:
            continue
        at = f"{where}.executed_tools[{n}]"
        try:
            arguments = json.loads(entry.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise bad_request(f"{at}.arguments must be a JSON string.", param=at) from None
        code = arguments.get("code") if isinstance(arguments, dict) else None
        call_id = at  # unique in the request; harmony shows no call ids
        turns += [{"role": "assistant", "content": "",
                   "tool_calls": [server_call(call_id, _code(code, at))]},
                  server_output(call_id, str(entry.get("output") or "") or tool_text())]
    if turns and rest.get("reasoning"):  # the reasoning came before the first call
        turns[0]["reasoning"] = rest.pop("reasoning")
    return [*turns, rest]
