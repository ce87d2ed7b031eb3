"""The MCP credentials a client body carries, kept out of everything but their server.

A Responses ``mcp`` tool has ``headers`` and ``authorization``, a Messages ``mcp_servers``
entry ``authorization_token``. The flow log, mitmweb's views and stored responses see the body
with those values masked (``masked``); ``values`` lists them so any echo (Groq's response
object repeats ``tools``) is masked in the flow's log record too.
"""

from __future__ import annotations

from typing import Any

from ...redact import REDACTED

MIN_SECRET = 4  # shorter values are masked where they stand, not searched for elsewhere


def _secret_fields(body: Any) -> list[tuple[dict[str, Any], str]]:
    """(object, key) for every secret-holding field of ``body``."""
    found: list[tuple[dict[str, Any], str]] = []
    if not isinstance(body, dict):
        return found
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            if isinstance(tool.get("headers"), dict):
                found += [(tool["headers"], name) for name in tool["headers"]]
            if "authorization" in tool:
                found.append((tool, "authorization"))
    servers = body.get("mcp_servers")
    for server in servers if isinstance(servers, list) else []:
        if isinstance(server, dict) and "authorization_token" in server:
            found.append((server, "authorization_token"))
    return found


def values(body: Any) -> list[str]:
    """The secret strings in ``body`` long enough to be searched for in other text."""
    return [value for holder, key in _secret_fields(body)
            if isinstance(value := holder[key], str) and len(value) >= MIN_SECRET]


def masked(body: Any) -> Any:
    """``body`` with its MCP secrets masked (a copy where needed; the body itself unchanged)."""
    if not _secret_fields(body):
        return body
    copy = dict(body)
    if isinstance(body.get("tools"), list):
        copy["tools"] = [_masked_tool(t) for t in body["tools"]]
    if isinstance(body.get("mcp_servers"), list):
        copy["mcp_servers"] = [
            {**s, "authorization_token": REDACTED}
            if isinstance(s, dict) and "authorization_token" in s else s
            for s in body["mcp_servers"]]
    return copy


def _masked_tool(tool: Any) -> Any:
    if not isinstance(tool, dict) or tool.get("type") != "mcp":
        return tool
    tool = dict(tool)
    if isinstance(tool.get("headers"), dict):
        tool["headers"] = dict.fromkeys(tool["headers"], REDACTED)
    if "authorization" in tool:
        tool["authorization"] = REDACTED
    return tool


def public_tools(tools: Any) -> Any:
    """A request's ``tools`` as a response object echoes them: without MCP credentials."""
    return masked({"tools": tools})["tools"] if isinstance(tools, list) else tools
