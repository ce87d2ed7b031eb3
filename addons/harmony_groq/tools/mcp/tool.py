"""MCP servers as server tools of the loop: listed and declared before the prompt is rendered
(``prepare``), called when the model calls one (``McpServerTool``).

``prepare`` runs in the request hook, before rendering: each declared server's tools come from
the conversation's earlier ``mcp_list_tools`` (OpenAI lists once per conversation) or from the
server (a ``mcp_list_tools`` step opens the reply); calls the client approved since the last
turn run now (their ``mcp_call`` steps open the reply too) and join the history the model sees.
A server that cannot be reached is declared without tools, with the reason for the model, and
its listing item carries the error: the reply goes on. A ``server_url`` the URL policy refuses
(private, loopback or link-local, unless ``ALLOW_PRIVATE_URLS`` lists it) is a 400.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ...chat_request import ChatRequest, ServerToolSpec
from ...errors import ProxyError
from ...render import neutralize_special_tokens
from ...settings import OptionSpec
from ..base import ServerCall, StepRecord, ToolOutput, new_step_id
from ..items import register
from ..options import ToolConfig, declare
from ..registry import ToolContext, register_preparer, register_tool
from ..urls import UnsafeUrl, UrlPolicy
from .client import McpError, McpLimits, McpServer, McpSessions, McpTool
from .history import Approved, server_call
from .items import (
    APPROVAL,
    CALL,
    LISTING,
    ApprovalResponses,
    CallMessages,
    CallResponses,
    HiddenMessages,
    ListingResponses,
)
from .spec import Declared, McpToolSpec, declaration, safe_name

KIND = "mcp"
UNREACHABLE = ("This MCP server could not be reached ({reason}); it offers no tools in this "
               "response.")
DECLINED = "The user declined this call{reason}. Do not call it again unless asked."


@dataclass
class McpPlan:
    """One server's part of a request, as the dialect read it (``ServerToolSpec.options``)."""

    spec: McpToolSpec
    listed: list[McpTool] | None = None  # from the conversation's mcp_list_tools
    approved: list[Approved] = field(default_factory=list)  # answers to run before generating
    declared: Declared | None = None  # after prepare
    opening: list[StepRecord] = field(default_factory=list)  # steps before the generation


def mcp_spec(spec: McpToolSpec, listed: list[McpTool] | None = None,
             approved: list[Approved] | None = None) -> ServerToolSpec:
    """The loop's spec for one MCP server; its declaration is filled in by ``prepare``."""
    plan = McpPlan(spec, listed, list(approved or []))
    return ServerToolSpec(safe_name(spec.label), declaration(spec, []).config(), KIND,
                          {"mcp": plan})


def recipient(declared_namespace: str, tool: str) -> str:
    return f"{declared_namespace}.{safe_name(tool)}"


def _pinned(server: McpServer, address: Any) -> McpServer:
    """An ``http`` server reached at the address that was checked (a DNS answer that changes
    after the check cannot move the session); ``https`` keeps the name, which TLS binds."""
    parts = urlsplit(server.url)
    if parts.scheme != "http" or parts.hostname is None:
        return server
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    headers = (*server.headers, ("Host", parts.netloc.rsplit("@", 1)[-1]))
    return McpServer(server.label, urlunsplit((parts.scheme, netloc, parts.path, parts.query,
                                               "")), headers)


async def _reachable(spec: McpToolSpec, policy: UrlPolicy) -> McpToolSpec:
    try:
        _, address = await policy.check(spec.server.url)
    except UnsafeUrl as exc:
        status = 400 if exc.code in ("blocked_url", "invalid_url") else 424
        raise ProxyError(status, f"MCP server {spec.label!r}: {exc.message}",
                         param="tools", code="mcp_server_url_refused" if status == 400
                         else "mcp_server_unreachable") from None
    return dataclasses.replace(spec, server=_pinned(spec.server, address))


def _step(kind: str, prefix: str, spec: McpToolSpec, **detail: Any) -> StepRecord:
    return StepRecord(kind=kind, action=detail.get("name", "list_tools"), id=new_step_id(prefix),
                      backend=spec.label, detail={"server_label": spec.label, **detail})


async def _list(plan: McpPlan, sessions: McpSessions) -> list[McpTool]:
    spec = plan.spec
    step = _step(LISTING, "mcpl", spec)
    begun = time.monotonic()
    try:
        tools = await sessions.list_tools(spec.server)
    except McpError as exc:
        step.fail("unavailable", str(exc))
        tools = []
    else:
        step.status = "completed"
        step.detail["tools"] = [tool.item() for tool in spec.visible(tools)]
        step.outputs = [{"name": tool.name} for tool in spec.visible(tools)]
    step.duration_ms = (time.monotonic() - begun) * 1000
    plan.opening.append(step)
    return tools


async def call_tool(spec: McpToolSpec, sessions: McpSessions, step: StepRecord) -> str:
    """Run a ``tools/call`` step: the text for the model; ``step`` gets output or error."""
    name = step.detail["name"]
    begun = time.monotonic()
    try:
        arguments = json.loads(step.detail.get("arguments") or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("not an object")
    except ValueError:
        step.fail("invalid_tool_input", "The arguments are not a JSON object.")
        return f"Error: the arguments of {name} must be a JSON object."
    step.detail["input"] = arguments
    try:
        result = await sessions.call(spec.server, name, arguments)
    except McpError as exc:
        step.fail("unavailable", str(exc))
        text = f"Error: {exc}"
    else:
        step.detail["output"] = result.text
        step.bytes = len(result.text.encode())
        if result.is_error:
            step.fail("tool_error", result.text)
        text = result.text
    step.duration_ms = (time.monotonic() - begun) * 1000
    if step.status == "in_progress":
        step.status = "completed"
    return text


async def prepare(request: ChatRequest, sessions: McpSessions, policy: UrlPolicy
                  ) -> ChatRequest:
    """List (or recall) each server's tools, declare them, run the approved calls."""
    specs = []
    plans: list[McpPlan] = []
    for server_tool in request.server_tools:
        plan = server_tool.options.get("mcp")
        if server_tool.kind != KIND or not isinstance(plan, McpPlan):
            specs.append(server_tool)
            continue
        plan.spec = await _reachable(plan.spec, policy)
        tools = plan.listed if plan.listed is not None else await _list(plan, sessions)
        plan.declared = declaration(plan.spec, tools)
        config = plan.declared.config()
        failed = plan.opening and plan.opening[-1].status == "failed"
        if failed:
            reason = neutralize_special_tokens(plan.opening[-1].message or "")
            config = config.model_copy(update={"description": UNREACHABLE.format(
                reason=reason)})
        specs.append(dataclasses.replace(server_tool, config=config))
        plans.append(plan)
    messages = list(request.messages)
    for plan in plans:
        messages += await _answered(plan, sessions)
    return dataclasses.replace(request, server_tools=tuple(specs), messages=messages)


async def _answered(plan: McpPlan, sessions: McpSessions) -> list[dict[str, Any]]:
    """The approved calls run (declined ones told), as history for the model."""
    messages: list[dict[str, Any]] = []
    assert plan.declared is not None
    for answer in plan.approved:
        name = recipient(plan.declared.namespace, answer.name)
        if answer.approve:
            step = _step(CALL, "mcp", plan.spec, name=answer.name, arguments=answer.arguments,
                         approval_request_id=answer.request_id)
            output = await call_tool(plan.spec, sessions, step)
            plan.opening.append(step)
        else:
            output = DECLINED.format(reason=f" ({answer.reason})" if answer.reason else "")
        messages += server_call(answer.request_id, name, answer.arguments, output)
    return messages


def opening_steps(request: ChatRequest) -> list[StepRecord]:
    """The steps ``prepare`` ran, in order: each reply shows them first."""
    return [step for spec in request.server_tools
            if isinstance(plan := spec.options.get("mcp"), McpPlan) for step in plan.opening]


class McpServerTool:
    """One MCP server's namespace in a response's tool session; ``opening``: the steps
    ``prepare`` ran for it (its listing, approved calls), which the reply shows first."""

    kind = KIND

    def __init__(self, spec: ServerToolSpec, sessions: McpSessions) -> None:
        self.namespace = spec.namespace
        plan = spec.options["mcp"]
        assert isinstance(plan, McpPlan) and plan.declared is not None
        self.spec = plan.spec
        self.declared = plan.declared
        self.opening = plan.opening
        self.sessions = sessions

    def started(self, call: ServerCall) -> StepRecord:
        tool = self.declared.tools.get(call.action)
        name = tool.name if tool else call.action
        arguments = call.arguments.strip() or "{}"
        if tool is not None and self.spec.approval.needed(name):
            return _step(APPROVAL, "mcpr", self.spec, name=name, arguments=arguments)
        return _step(CALL, "mcp", self.spec, name=name, arguments=arguments)

    async def run(self, call: ServerCall, step: StepRecord) -> ToolOutput:
        if call.action not in self.declared.tools:
            message = f"{call.recipient!r} is not a tool of this server."
            step.fail("invalid_tool_input", message)
            return ToolOutput(f"Error: {message}", step)
        if step.kind == APPROVAL:  # the reply ends here; the client answers the request
            step.status = "completed"
            return ToolOutput("", step, ends_reply=True)
        return ToolOutput(await call_tool(self.spec, self.sessions, step), step)


SESSIONS = McpSessions()  # the proxy's MCP sessions, shared by every response


def _limits(config: ToolConfig) -> None:
    SESSIONS.configure(McpLimits(timeout=float(config["mcp_timeout"]),
                                 session_ttl=float(config["mcp_session_ttl"]),
                                 max_result_bytes=config["mcp_max_result_bytes"]))


declare(
    OptionSpec("mcp_timeout", "MCP_TIMEOUT", int, 30,
               "Seconds an MCP server may take to connect and list its tools, and per call; "
               "past it the model and the client are told."),
    OptionSpec("mcp_session_ttl", "MCP_SESSION_TTL", int, 60,
               "Seconds an idle MCP session (per server URL and headers) stays open for reuse."),
    OptionSpec("mcp_max_result_bytes", "MCP_MAX_RESULT_BYTES", int, 64 * 1024,
               "Largest MCP tool result passed to the model, in bytes (more is cut)."),
    check=_limits)


async def _prepare(request: ChatRequest, context: ToolContext) -> ChatRequest:
    return await prepare(request, SESSIONS, context.config.policy)


register_tool(KIND, lambda spec, context: McpServerTool(spec, SESSIONS))
register_preparer(KIND, _prepare)
register(CALL, responses=CallResponses(), messages=CallMessages())
register(LISTING, responses=ListingResponses(), messages=HiddenMessages())
register(APPROVAL, responses=ApprovalResponses())
