"""Reading harmony prompts and writing harmony completions, for rules of the fake model server.

A rule (``FakeTransformers.respond``) sees the rendered prompt the proxy sent and returns what
gpt-oss would generate. These helpers find what a rule decides on (the declared tools, the
last message and its author) and build the two answers agents need (a final answer, a tool
call), so a rule reads like the decision it makes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MESSAGE = re.compile(r"<\|start\|>(.*?)<\|message\|>(.*?)(?:<\|end\|>|<\|call\|>|<\|return\|>|$)",
                     re.S)
TOOL_TYPE = re.compile(r"^type (\w+) = ", re.M)


@dataclass(frozen=True)
class PromptMessage:
    """One rendered message: ``author`` is ``user``, ``assistant``, ``functions.NAME``…"""

    author: str
    channel: str | None
    content: str


def messages(prompt: str) -> list[PromptMessage]:
    """The prompt's messages in order (the trailing ``<|start|>assistant`` has none)."""
    found = []
    for header, content in MESSAGE.findall(prompt):
        head, _, channel = header.partition("<|channel|>")
        found.append(PromptMessage(head.split(" to=")[0].strip(),
                                   channel.split(" ")[0] or None, content))
    return found


def tool_names(prompt: str) -> list[str]:
    """The functions declared in the developer message's ``namespace functions``."""
    start = prompt.find("namespace functions {")
    if start < 0:
        return []
    end = prompt.find("} // namespace functions", start)
    return TOOL_TYPE.findall(prompt[start:end])


def last_message(prompt: str) -> PromptMessage:
    return messages(prompt)[-1]


def last_user_text(prompt: str) -> str:
    return next(m.content for m in reversed(messages(prompt)) if m.author == "user")


def final(answer: str, thinking: str = "Answering.") -> str:
    """A completion that reasons, then answers on the final channel."""
    return (f"<|channel|>analysis<|message|>{thinking}<|end|><|start|>assistant"
            f"<|channel|>final<|message|>{answer}<|return|>")


def tool_call(name: str, arguments: dict[str, Any], thinking: str = "Using a tool.") -> str:
    """A completion that reasons, then calls ``functions.NAME`` with JSON arguments."""
    return (f"<|channel|>analysis<|message|>{thinking}<|end|><|start|>assistant"
            f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
            f"{json.dumps(arguments)}<|call|>")


def browser_call(action: str, arguments: dict[str, Any], thinking: str = "Let me look.") -> str:
    """A completion that reasons, then calls harmony's built-in browser (``browser.search``,
    ``browser.open``, ``browser.find``) on the analysis channel, as gpt-oss does."""
    return (f"<|channel|>analysis<|message|>{thinking}<|end|><|start|>assistant"
            f"<|channel|>analysis to=browser.{action} code<|message|>"
            f"{json.dumps(arguments)}<|call|>")


def browser_declared(prompt: str) -> bool:
    """The system message declares harmony's browser (built-in tools live there)."""
    system = prompt.split("<|end|>", 1)[0]
    return "## browser" in system and "namespace browser {" in system


def mcp_call(recipient: str, arguments: dict[str, Any], thinking: str = "Asking the server."
             ) -> str:
    """A completion that reasons, then calls an MCP server's tool (``LABEL.TOOL``), as gpt-oss
    calls a namespace declared in the system message."""
    return (f"<|channel|>analysis<|message|>{thinking}<|end|><|start|>assistant"
            f"<|channel|>commentary to={recipient} <|constrain|>json<|message|>"
            f"{json.dumps(arguments)}<|call|>")
