"""Code execution steps in each client API's own shapes (registered with ``items.register``).

- Responses: a ``code_interpreter_call`` item (``code``, ``container_id``, ``outputs`` logs)
  with ``response.code_interpreter_call.in_progress``, ``…_code.delta`` / ``…_code.done``,
  ``.interpreting`` and ``.completed``; outputs always included (OpenAI includes them on
  ``include: ["code_interpreter_call.outputs"]``; a proxy has no reason to hide them).
- Messages: ``server_tool_use`` named ``code_execution`` with ``{"code"}`` and a
  ``code_execution_tool_result`` (stdout, stderr with the proxy's notes, return_code) or,
  when no container could run the code, its error form (``unavailable``). A timeout is a
  result whose stderr says so: what the code printed before it is kept.
- Chat: an ``executed_tools`` entry as Groq writes one for code (type ``python``, JSON
  ``arguments`` with the code, ``output``).
"""

from __future__ import annotations

import json
from typing import Any

from . import items
from .base import StepRecord
from .python import KIND


def _logs(step: StepRecord) -> str:
    return "".join(output.get("logs", "") for output in step.outputs)


class ResponsesCode:
    def item(self, step: StepRecord, status: str) -> dict[str, Any]:
        running = status == "in_progress"
        return {"type": "code_interpreter_call", "id": step.id, "status": status,
                "code": step.code, "container_id": step.detail.get("container_id", ""),
                "outputs": None if running else [{"type": "logs", "logs": _logs(step)}]}

    def progress(self, step: StepRecord, phase: str) -> list[tuple[str, dict[str, Any]]]:
        if phase == "started":
            return [("response.code_interpreter_call.in_progress", {}),
                    ("response.code_interpreter_call_code.delta", {"delta": step.code or ""}),
                    ("response.code_interpreter_call_code.done", {"code": step.code or ""}),
                    ("response.code_interpreter_call.interpreting", {})]
        return [("response.code_interpreter_call.completed", {})]


class MessagesCode:
    name = "code_execution"
    usage_key = "code_execution_requests"  # not in Anthropic's usage today; shown as counted

    def use_input(self, step: StepRecord) -> dict[str, Any]:
        return {"code": step.code or ""}

    def result(self, step: StepRecord, tool_use_id: str) -> dict[str, Any]:
        if step.status == "failed":  # no container could run it
            content: dict[str, Any] = {"type": "code_execution_tool_result_error",
                                       "error_code": step.error or "unavailable"}
        else:
            detail = step.detail
            stderr, note = detail.get("stderr", ""), detail.get("note", "")
            if note:  # the proxy's notes (truncation, timeout) after what the code wrote
                stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + note
            content = {"type": "code_execution_result", "stdout": detail.get("stdout", ""),
                       "stderr": stderr, "return_code": detail.get("return_code", 1),
                       "content": []}
        return {"type": "code_execution_tool_result", "tool_use_id": tool_use_id,
                "content": content}


class ChatCode:
    def executed_tool(self, step: StepRecord, index: int) -> dict[str, Any]:
        return {"index": index, "type": "python",
                "arguments": json.dumps({"code": step.code or ""}), "output": _logs(step)}


items.register(KIND, responses=ResponsesCode(), messages=MessagesCode(), chat=ChatCode())
