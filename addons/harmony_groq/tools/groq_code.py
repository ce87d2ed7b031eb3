"""Code execution on the Groq route: Groq's gpt-oss runs ``code_interpreter`` itself.

A Responses or Messages client's code tool becomes Groq's ``{"type": "code_interpreter"}`` on
the chat body sent there (gpt-oss models only: Groq's others have no code execution, a clear
400); the ``executed_tools`` Groq answers with become the same code steps the proxy's own loop
makes, so each API shows its own items and blocks (Chat clients get Groq's reply as it is).
The shape of Groq's code entries (``type`` ``python`` or ``code_interpreter``, ``arguments``
as JSON with ``code``, ``output``) follows Groq's SDK types; how Groq streams them is not
documented: an entry is shown once its ``output`` arrived.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import bad_request
from .base import StepEvent, StepRecord, new_step_id
from .code_history import CHAT_CODE_TYPES
from .code_request import is_code_tool
from .python import KIND

GROQ_CODE_TOOL = {"type": "code_interpreter"}
GROQ_CONTAINER = "groq"  # the container_id of a step Groq ran (none of this proxy's)


def with_groq_code_tool(chat_body: dict[str, Any], client_body: Mapping[str, Any],
                        dialect: str, model: str) -> dict[str, Any]:
    """The chat body for Groq, with Groq's code tool where the client declared its own."""
    tools = client_body.get("tools")
    if not isinstance(tools, list) or not any(is_code_tool(dialect, t) for t in tools):
        return chat_body
    if "gpt-oss" not in model.lower():
        raise bad_request(f"Code execution on Groq is available with its gpt-oss models only, "
                          f"not {model!r}.", param="tools", code="code_execution_unavailable")
    return {**chat_body, "tools": [*(chat_body.get("tools") or []), GROQ_CODE_TOOL]}


def executed_step_events(entries: Any, done: set[int]) -> list[StepEvent]:
    """Groq's ``executed_tools`` entries (whole or a stream's) as code steps, each once
    (``done``: the entries already shown, by index)."""
    events: list[StepEvent] = []
    for position, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or entry.get("type") not in CHAT_CODE_TYPES:
            continue
        index = entry.get("index", position)
        if index in done or entry.get("output") is None:
            continue
        done.add(index)
        try:
            arguments = json.loads(entry.get("arguments") or "{}")
        except (TypeError, ValueError):
            arguments = {}
        code = arguments.get("code") if isinstance(arguments, dict) else None
        output = str(entry["output"])
        step = StepRecord(kind=KIND, action="execute", id=new_step_id("ci"),
                          code=code if isinstance(code, str) else "", status="completed",
                          outputs=[{"type": "logs", "logs": output}], backend="groq",
                          detail={"container_id": GROQ_CONTAINER, "stdout": output,
                                  "stderr": "", "return_code": 0})
        events += [StepEvent(step, "started"), StepEvent(step, "finished")]
    return events
