"""MCP steps in each client API's shapes.

Responses (``shared/reference/server-tools.md`` §3): ``mcp_list_tools`` (``mcpl_…``; the tools
the model was shown, ``error`` when listing failed), ``mcp_call`` (``mcp_…``; ``arguments`` a
JSON string, ``output``, ``error``, ``status``) with ``response.mcp_call_arguments.delta/.done``
and ``response.mcp_call.in_progress/.completed/.failed``, and ``mcp_approval_request``
(``mcpr_…``). Messages (the MCP connector): ``mcp_tool_use`` and ``mcp_tool_result`` blocks,
whole and streamed (the use's input as ``input_json_delta``, the result whole).
Each is a ``StepRecord`` whose ``detail`` holds ``server_label``, ``name``, ``arguments``,
``output`` (and ``tools`` for a listing).
"""

from __future__ import annotations

import json
from typing import Any

from ..base import StepRecord

CALL = "mcp"  # a tools/call step
LISTING = "mcp_list_tools"  # the tools shown to the model (once per conversation)
APPROVAL = "mcp_approval_request"  # a call held for the client's approval


def listing_item(step: StepRecord, status: str = "completed") -> dict[str, Any]:
    item = {"type": "mcp_list_tools", "id": step.id,
            "server_label": step.detail.get("server_label"),
            "tools": step.detail.get("tools", []) if status != "in_progress" else [],
            "error": step.message if step.status == "failed" else None}
    return item


def call_item(step: StepRecord, status: str) -> dict[str, Any]:
    done = status != "in_progress"
    detail = step.detail
    return {"type": "mcp_call", "id": step.id, "server_label": detail.get("server_label"),
            "name": detail.get("name"), "arguments": detail.get("arguments", "{}"),
            "output": detail.get("output") if done else None,
            "error": step.message if done and step.status == "failed" else None,
            "status": ("failed" if step.status == "failed" else "completed") if done
            else "in_progress",
            "approval_request_id": detail.get("approval_request_id")}


def approval_item(step: StepRecord, status: str = "completed") -> dict[str, Any]:
    detail = step.detail
    return {"type": "mcp_approval_request", "id": step.id,
            "server_label": detail.get("server_label"), "name": detail.get("name"),
            "arguments": detail.get("arguments", "{}")}


class ListingResponses:
    def item(self, step: StepRecord, status: str) -> dict[str, Any]:
        return listing_item(step, status)

    def progress(self, step: StepRecord, phase: str) -> list[tuple[str, dict[str, Any]]]:
        if phase == "started":
            return [("response.mcp_list_tools.in_progress", {})]
        ended = "failed" if step.status == "failed" else "completed"
        return [(f"response.mcp_list_tools.{ended}", {})]


class CallResponses:
    def item(self, step: StepRecord, status: str) -> dict[str, Any]:
        return call_item(step, status)

    def progress(self, step: StepRecord, phase: str) -> list[tuple[str, dict[str, Any]]]:
        if phase == "started":
            arguments = step.detail.get("arguments", "{}")
            return [("response.mcp_call_arguments.delta", {"delta": arguments}),
                    ("response.mcp_call_arguments.done", {"arguments": arguments}),
                    ("response.mcp_call.in_progress", {})]
        ended = "failed" if step.status == "failed" else "completed"
        return [(f"response.mcp_call.{ended}", {})]


class ApprovalResponses:
    def item(self, step: StepRecord, status: str) -> dict[str, Any]:
        return approval_item(step)

    def progress(self, step: StepRecord, phase: str) -> list[tuple[str, dict[str, Any]]]:
        return []


class CallMessages:
    """Messages (the MCP connector): ``mcp_tool_use`` and ``mcp_tool_result``; not counted in
    ``usage.server_tool_use``."""

    name = "mcp"
    usage_key = ""

    def use_input(self, step: StepRecord) -> dict[str, Any] | None:
        try:
            value = json.loads(step.detail.get("arguments") or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def use_block(self, step: StepRecord, tool_input: dict[str, Any]) -> dict[str, Any]:
        return {"type": "mcp_tool_use", "id": "mcptoolu_" + step.id.split("_", 1)[-1],
                "name": step.detail.get("name"), "server_name": step.detail.get("server_label"),
                "input": tool_input}

    def result(self, step: StepRecord, tool_use_id: str) -> dict[str, Any]:
        failed = step.status == "failed"
        text = (step.message or "The call failed.") if failed else (
            step.detail.get("output") or "")
        return {"type": "mcp_tool_result", "tool_use_id": tool_use_id, "is_error": failed,
                "content": [{"type": "text", "text": text}]}


class HiddenMessages:
    """A listing is not a block in Messages (Anthropic shows none)."""

    name = "mcp"
    usage_key = ""

    def use_input(self, step: StepRecord) -> dict[str, Any] | None:
        return None

    def result(self, step: StepRecord, tool_use_id: str) -> dict[str, Any]:
        return {}
