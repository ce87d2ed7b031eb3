"""What a request asks of its MCP servers, read from either API's declaration.

Responses: ``{"type": "mcp", "server_label", "server_url", "allowed_tools", "require_approval",
"headers", "authorization", "server_description"}``; Messages: ``mcp_servers: [{"type": "url",
"url", "name", "authorization_token", "tool_configuration": {"enabled", "allowed_tools"}}]``.
Both become ``McpToolSpec``; the tools the server lists become a harmony namespace named by the
label (``declaration``), with ``allowed_tools`` applied before the model sees anything and
names made harmony-safe (``[A-Za-z0-9_]``) and mapped back when the model calls one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from openai_harmony import ToolDescription, ToolNamespaceConfig

from ...errors import bad_request
from ...render import neutralize_special_tokens
from ...schema import normalize_schema
from .client import McpServer, McpTool

RESERVED_LABELS = frozenset({"functions", "browser", "python", "assistant", "user", "container"})
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
_DESCRIPTION_CHARS = 2000  # of one tool's description (a server can send a novel)


@dataclass(frozen=True)
class Approval:
    """``require_approval``: the default, and the tools named otherwise."""

    default: bool = True  # OpenAI asks before any call unless told "never"
    always: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()

    def needed(self, tool: str) -> bool:
        if tool in self.always:
            return True
        if tool in self.never:
            return False
        return self.default


@dataclass(frozen=True)
class McpToolSpec:
    """One MCP server a request declares, as this proxy runs it."""

    server: McpServer
    allowed: frozenset[str] | None = None  # None: every tool the server lists
    approval: Approval = field(default_factory=lambda: Approval(default=False))
    description: str = ""

    @property
    def label(self) -> str:
        return self.server.label

    def visible(self, tools: list[McpTool]) -> list[McpTool]:
        """The server's tools the model may see and call."""
        if self.allowed is None:
            return list(tools)
        return [tool for tool in tools if tool.name in self.allowed]


def safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"
    return "_" + safe if safe[0].isdigit() else safe


@dataclass(frozen=True)
class Declared:
    """A server's namespace as the model sees it, and its harmony names mapped back."""

    spec: McpToolSpec
    namespace: str
    tools: dict[str, McpTool]  # harmony-safe tool name → the server's tool

    def config(self) -> ToolNamespaceConfig:
        clean = neutralize_special_tokens  # tool text is the server's: data, never control
        described = []
        for safe, tool in self.tools.items():
            params = normalize_schema(tool.input_schema) if tool.input_schema else None
            if isinstance(params, dict) and not params.get("properties"):
                params = None
            description = clean(tool.description[:_DESCRIPTION_CHARS])
            described.append(ToolDescription.new(safe, description, params))
        description = clean(self.spec.description or f"Tools of the MCP server "
                            f"'{self.spec.label}'.")
        return ToolNamespaceConfig(name=self.namespace, description=description,
                                   tools=described)


def declaration(spec: McpToolSpec, tools: list[McpTool]) -> Declared:
    """The namespace for ``spec``'s allowed tools, each under a harmony-safe unique name."""
    named: dict[str, McpTool] = {}
    for tool in spec.visible(tools):
        safe, n = safe_name(tool.name), 2
        candidate = safe
        while candidate in named:
            candidate, n = f"{safe}_{n}", n + 1
        named[candidate] = tool
    return Declared(spec, safe_name(spec.label), named)


def _names(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{where} must be an array of tool names.", param=where)
    return frozenset(value)


def _allowed(value: Any, where: str) -> frozenset[str] | None:
    """``["a", "b"]`` or ``{"tool_names": [...], "read_only": ...}``; absent: all tools."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("read_only") is True:
            raise bad_request(f"{where}.read_only is not supported here; list the tools "
                              "in tool_names.", param=where)
        return _names(value.get("tool_names", []), f"{where}.tool_names")
    return _names(value, where)


def _approval(value: Any, where: str) -> Approval:
    if value is None or value == "always":
        return Approval(default=True)
    if value == "never":
        return Approval(default=False)
    if isinstance(value, dict):
        groups = {}
        for key in ("always", "never"):
            group = value.get(key)
            if group is None:
                groups[key] = frozenset()
            elif isinstance(group, dict):
                groups[key] = _names(group.get("tool_names", []), f"{where}.{key}.tool_names")
            else:
                raise bad_request(f"{where}.{key} must be an object with 'tool_names'.",
                                  param=where)
        # Tools named in neither group are asked about, as OpenAI does.
        return Approval(default=True, always=groups["always"], never=groups["never"])
    raise bad_request(f"{where} must be 'always', 'never' or an object of tool names.",
                      param=where)


def _label(value: Any, where: str, seen: set[str]) -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise bad_request(f"{where} must be 1-64 letters, digits, '_' or '-'.", param=where)
    if value in RESERVED_LABELS or safe_name(value) in seen:
        raise bad_request(f"{where} {value!r} is taken (reserved, or another server's).",
                          param=where)
    seen.add(safe_name(value))
    return value


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not re.match(r"https?://", value):
        raise bad_request(f"{where} must be an http(s) URL.", param=where)
    return value


def _headers(value: Any, where: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad_request(f"{where} must be an object of string header values.", param=where)
    for name, content in value.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or any(
                c in content for c in "\r\n\0"):
            raise bad_request(f"{where}: header {name!r} is not a valid HTTP header.",
                              param=where)
    return list(value.items())


def responses_mcp_tool(tool: dict[str, Any], where: str, seen: set[str]) -> McpToolSpec:
    """A Responses ``mcp`` tool."""
    label = _label(tool.get("server_label"), f"{where}.server_label", seen)
    if tool.get("server_url") is None and (tool.get("connector_id") or tool.get("tunnel_id")):
        raise bad_request(f"{where}: connectors are OpenAI's own; give a server_url.",
                          param=where, code="unsupported_parameter")
    url = _url(tool.get("server_url"), f"{where}.server_url")
    headers = _headers(tool.get("headers"), f"{where}.headers")
    authorization = tool.get("authorization")
    if authorization is not None:
        if not isinstance(authorization, str) or any(c in authorization for c in "\r\n\0"):
            raise bad_request(f"{where}.authorization must be a token string.", param=where)
        headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        headers.append(("Authorization", f"Bearer {authorization}"))
    description = tool.get("server_description")
    return McpToolSpec(
        McpServer(label, url, tuple(headers)),
        _allowed(tool.get("allowed_tools"), f"{where}.allowed_tools"),
        _approval(tool.get("require_approval"), f"{where}.require_approval"),
        description if isinstance(description, str) else "")


def messages_mcp_servers(servers: Any) -> list[McpToolSpec]:
    """Anthropic's ``mcp_servers`` (the MCP connector): no approvals there."""
    if servers is None:
        return []
    if not isinstance(servers, list):
        raise bad_request("mcp_servers must be an array.", param="mcp_servers")
    seen: set[str] = set()
    specs = []
    for index, server in enumerate(servers):
        where = f"mcp_servers[{index}]"
        if not isinstance(server, dict) or server.get("type", "url") != "url":
            raise bad_request(f"{where} must be an object of type 'url'.", param=where)
        label = _label(server.get("name"), f"{where}.name", seen)
        url = _url(server.get("url"), f"{where}.url")
        token = server.get("authorization_token")
        if token is not None and (not isinstance(token, str)
                                  or any(c in token for c in "\r\n\0")):
            raise bad_request(f"{where}.authorization_token must be a string.", param=where)
        headers = (("Authorization", f"Bearer {token}"),) if token else ()
        config = server.get("tool_configuration") or {}
        if not isinstance(config, dict):
            raise bad_request(f"{where}.tool_configuration must be an object.", param=where)
        if config.get("enabled") is False:
            continue
        allowed = _allowed(config.get("allowed_tools"), f"{where}.tool_configuration"
                           ".allowed_tools")
        specs.append(McpToolSpec(McpServer(label, url, headers), allowed))
    return specs
