"""MCP items a client sends back (Responses ``input``, or a stored response's output), read
into what the renderer and ``prepare`` take.

``mcp_list_tools`` says which tools a server was shown with (not listed again: once per
conversation); ``mcp_call`` is a server-tool call and its answer in the history;
``mcp_approval_request`` waits for its ``mcp_approval_response``: approved, the call runs
before the next generation (once: a later ``mcp_call`` naming the request means it ran),
declined, the model is told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import bad_request
from ..browser.history import server_result
from .client import McpTool
from .spec import safe_name


@dataclass(frozen=True)
class Approved:
    """A call the client answered with ``mcp_approval_response``."""

    request_id: str
    label: str
    name: str
    arguments: str
    approve: bool
    reason: str | None = None


ITEMS = ("mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response")


def server_call(call_id: str, recipient: str, arguments: str, output: str
                ) -> list[dict[str, Any]]:
    """An MCP call and its answer in the chat form the renderer takes (the arguments as the
    model wrote them: the prompt stays the one a backend's prefix cache holds)."""
    return [{"role": "assistant", "content": "", "tool_calls": [
                {"id": call_id, "type": "server",
                 "function": {"name": recipient, "arguments": arguments}}]},
            server_result(call_id, recipient, output)]


def _tools(item: dict[str, Any], where: str) -> list[McpTool]:
    tools = item.get("tools")
    if not isinstance(tools, list):
        raise bad_request(f"{where}.tools must be an array.", param=where)
    listed = []
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise bad_request(f"{where}.tools entries need a 'name'.", param=where)
        schema = tool.get("input_schema")
        listed.append(McpTool(tool["name"], tool.get("description") or "",
                              schema if isinstance(schema, dict) else {},
                              tool.get("annotations") if isinstance(tool.get("annotations"),
                                                                     dict) else None))
    return listed


def _string(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where} needs a string '{key}'.", param=where)
    return value


@dataclass
class McpHistory:
    """The MCP items of one conversation, in order."""

    listed: dict[str, list[McpTool]] = field(default_factory=dict)  # by server label
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # pending approvals
    answers: list[Approved] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)  # approval ids whose call is in the history

    def add(self, kind: str, item: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """Read one item; the chat messages it stands for (a past call and its answer)."""
        if kind == "mcp_list_tools":
            if item.get("error") is None:  # a failed listing is listed again
                self.listed[_string(item, "server_label", where)] = _tools(item, where)
            return []
        if kind == "mcp_call":
            label, name = _string(item, "server_label", where), _string(item, "name", where)
            arguments = item.get("arguments") if isinstance(item.get("arguments"), str) else "{}"
            output = item.get("output") if isinstance(item.get("output"), str) else None
            error = item.get("error")
            text = output if output is not None else f"Error: {error or 'no output'}"
            if isinstance(item.get("approval_request_id"), str):
                self.ran.add(item["approval_request_id"])
            call_id = item.get("id") if isinstance(item.get("id"), str) else f"mcp_{len(self.ran)}"
            return server_call(call_id, f"{safe_name(label)}.{safe_name(name)}", arguments,
                               text)
        if kind == "mcp_approval_request":
            self.requests[_string(item, "id", where)] = {
                "label": _string(item, "server_label", where),
                "name": _string(item, "name", where),
                "arguments": item.get("arguments") if isinstance(item.get("arguments"), str)
                else "{}"}
            return []
        request_id = _string(item, "approval_request_id", where)
        request = self.requests.get(request_id)
        if request is None:
            raise bad_request(f"{where}: approval_request_id {request_id!r} answers no "
                              "mcp_approval_request in the conversation (send it in 'input' "
                              "or continue with previous_response_id).", param=where,
                              code="unknown_approval_request")
        approve = item.get("approve")
        if not isinstance(approve, bool):
            raise bad_request(f"{where}.approve must be true or false.", param=where)
        reason = item.get("reason") if isinstance(item.get("reason"), str) else None
        self.answers.append(Approved(request_id, request["label"], request["name"],
                                     request["arguments"], approve, reason))
        return []

    def pending(self) -> list[Approved]:
        """The approval answers whose call has not run yet."""
        return [answer for answer in self.answers if answer.request_id not in self.ran]


def mcp_use(block: dict[str, Any], where: str) -> tuple[str, str, dict[str, Any]]:
    """A Messages ``mcp_tool_use`` block: its id, the harmony recipient, its input."""
    use_id, name, server = block.get("id"), block.get("name"), block.get("server_name")
    if not all(isinstance(v, str) and v for v in (use_id, name, server)):
        raise bad_request(f"{where}: an mcp_tool_use needs 'id', 'name' and 'server_name'.",
                          param=where)
    arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
    return str(use_id), f"{safe_name(str(server))}.{safe_name(str(name))}", arguments


def mcp_result_text(block: dict[str, Any]) -> str:
    """What a Messages ``mcp_tool_result`` told the model: its text, or its error."""
    content = block.get("content")
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(part["text"] for part in content if isinstance(part, dict)
                         and isinstance(part.get("text"), str)) if isinstance(content,
                                                                            list) else ""
    return f"Error: {text}" if block.get("is_error") is True else text
