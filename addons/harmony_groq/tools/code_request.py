"""Which client tool asks for code execution, and which container a request's code runs in.

Declarations: Responses ``{"type": "code_interpreter", "container": …}``, Messages
``{"type": "code_execution_20250522" | "code_execution_20250825" | …}`` and Chat (Groq's)
``{"type": "code_interpreter"}``. The container, first match wins:

1. named by the client: Responses' ``container: "cntr_…"``, Messages' ``container`` (a string
   or ``{"id": …}``);
2. the ``container_id`` of a ``code_interpreter_call`` the Responses input carries back (the
   conversation's earlier call);
3. the conversation's key: a hash of the client's credential header, its ``user`` /
   ``metadata.user_id``, and the conversation's opening (system/instructions and first user
   message), which every later turn of a stateless client resends;
4. a new container.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import bad_request

MESSAGES_PREFIX = "code_execution_"
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


@dataclass(frozen=True)
class CodeChoice:
    """A request's code execution: the container it names (``""``: none; one that is not
    live here is an error), the one its history used (one that ended is replaced), its key."""

    container_id: str
    earlier_id: str
    key: str
    where: str  # the declaration's place in the request, for errors


def is_code_tool(dialect: str, tool: Any) -> bool:
    if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
        return False
    if dialect == "messages":
        return tool["type"].startswith(MESSAGES_PREFIX)
    return tool["type"] == "code_interpreter"


def code_choice(dialect: str, body: Mapping[str, Any],
                headers: Mapping[str, str]) -> CodeChoice | None:
    """The request's code execution, or None when it declares none."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    index = next((n for n, tool in enumerate(tools) if is_code_tool(dialect, tool)), None)
    if index is None:
        return None
    where = f"tools[{index}]"
    return CodeChoice(_named(dialect, body, tools[index], where), _from_history(body),
                      conversation_key(dialect, body, headers), where)


def _named(dialect: str, body: Mapping[str, Any], tool: dict[str, Any], where: str) -> str:
    container = tool.get("container") if dialect == "responses" else body.get("container")
    if container is None or container == {"type": "auto"}:
        return ""
    if isinstance(container, dict) and dialect == "responses" and container.get("type") == "auto":
        return ""  # file_ids / memory_limit: no files API here, one memory limit (CODE_MEMORY_MB)
    if isinstance(container, dict) and dialect == "messages":
        container = container.get("id") or ""
    if not isinstance(container, str):
        param = f"{where}.container" if dialect == "responses" else "container"
        raise bad_request(f"{param} must be a container id or {{\"type\": \"auto\"}}.",
                          param=param)
    return container


def _from_history(body: Mapping[str, Any]) -> str:
    items = body.get("input")
    if not isinstance(items, list):
        return ""
    for item in reversed(items):
        if isinstance(item, dict) and item.get("type") == "code_interpreter_call" and (
                isinstance(item.get("container_id"), str)):
            return item["container_id"]
    return ""


def _opening(dialect: str, body: Mapping[str, Any]) -> list[Any]:
    """What every turn of a conversation resends first: its instructions and first user turn."""
    if dialect == "responses":
        items = body.get("input")
        first = items if isinstance(items, str) else next(
            (item for item in items or [] if isinstance(item, dict)
             and item.get("role") == "user"), None)
        return [body.get("instructions"), first]
    messages = body.get("messages") or []
    first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    system = body.get("system") if dialect == "messages" else [
        m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")]
    return [system, first]


def conversation_key(dialect: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    """One container per conversation and client: never shared by two credentials or users."""
    lowered = {name.lower(): value for name, value in headers.items()}
    metadata = body.get("metadata")
    user = body.get("user") or (metadata.get("user_id") if isinstance(metadata, dict) else None)
    material = [dialect, [lowered.get(name, "") for name in CREDENTIAL_HEADERS], user,
                _opening(dialect, body)]
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()
                          ).hexdigest()
