"""The interface of a server tool, and the dialect-neutral records a tool step leaves.

Modelled on gpt-oss's reference tools (``gpt_oss/tools/tool.py``): a tool owns a harmony
namespace (``browser``, ``python``, an MCP server's label), declares it with openai-harmony's
own types (``ToolNamespaceConfig``, placed in the system message by the renderer), and runs one
call at a time, answering with the text of the harmony tool message. Each run also returns a
``StepRecord``: what the client APIs show (``items.py`` maps it per dialect), what the flow
log and the metrics keep. Nothing here knows a client API's wire format.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ServerCall:
    """One call the model made to a server tool: ``<|call|>`` with ``to=browser.search``."""

    recipient: str  # "browser.search", "python" (a ``functions.`` prefix removed)
    arguments: str  # the message body as generated (JSON for the browser, code for python)
    channel: str = "analysis"
    content_type: str | None = None

    @property
    def namespace(self) -> str:
        return self.recipient.split(".", 1)[0]

    @property
    def action(self) -> str:
        """The function within the namespace (``search``), or the namespace itself."""
        return self.recipient.split(".", 1)[1] if "." in self.recipient else self.recipient


def new_step_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass
class StepRecord:
    """One tool step as every client API, the flow log and the metrics see it.

    ``kind`` picks the per-dialect mapping (``items.py``); ``action`` is the kind's own verb
    (web search: ``search``, ``open_page``, ``find_in_page``); ``outputs`` are the kind's
    results (web search: ``{"url", "title", "snippet", "page_age"}`` each); ``error`` a short
    code (``unavailable``, ``max_uses_exceeded``, ``invalid_tool_input``, ``blocked_url``…)
    with ``message`` for people. ``backend`` names what served it (never a key)."""

    kind: str
    action: str
    id: str = ""
    status: str = "in_progress"  # then "completed" | "failed"
    query: str | None = None
    url: str | None = None
    pattern: str | None = None
    code: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    message: str | None = None
    backend: str | None = None
    started_at: float = field(default_factory=time.time)
    duration_ms: float = 0.0
    bytes: int = 0
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific extras

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_step_id("ws" if self.kind == "web_search" else "step")

    def fail(self, error: str, message: str) -> StepRecord:
        self.status, self.error, self.message = "failed", error, message
        return self

    def log(self) -> dict[str, Any]:
        """The flow log's (and mitmweb's) entry: no page text, no key."""
        entry = {"kind": self.kind, "action": self.action, "id": self.id,
                 "status": self.status, "backend": self.backend,
                 "duration_ms": round(self.duration_ms, 1), "bytes": self.bytes,
                 "results": len(self.outputs)}
        for key in ("query", "url", "pattern", "error", "message"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        return entry


@dataclass
class ToolOutput:
    """What a run returns: the harmony tool message's text and the step's record;
    ``ends_reply``: the reply ends with this step (an MCP call waiting for the client's
    approval) instead of generating on."""

    text: str
    step: StepRecord
    ends_reply: bool = False


@dataclass(frozen=True)
class Citation:
    """A source the answer cites (harmony's ``【cursor†L4-L7】``), dialect-neutral: each API
    writes it as its own annotation (``url_citation``, ``web_search_result_location``)."""

    url: str
    title: str
    cited_text: str = ""
    start_index: int = 0  # in the answer's text once the marker is removed
    end_index: int = 0


class ServerTool(Protocol):
    """One tool namespace, built per response (it may keep state across the response's
    steps, as the reference browser keeps its page stack)."""

    namespace: str
    kind: str

    def started(self, call: ServerCall) -> StepRecord:
        """The step's record before it runs (its in-progress item: query, url, code)."""
        ...

    async def run(self, call: ServerCall, step: StepRecord) -> ToolOutput:
        """Run the call and fill ``step`` (status, outputs, error, bytes). Never raises for a
        failure the model should hear of: the text tells the model, the step the client."""
        ...


class Citing(Protocol):
    """A tool whose answers are cited in harmony's ``【…】`` form (the browser)."""

    def cite(self, marker: str) -> Citation | None:
        """The source of one marker's inner text (``3†L4-L7``); None for an unknown cursor."""
        ...


@dataclass(frozen=True)
class StepEvent:
    """A tool step in the reply's event stream, between the decoder's events: ``started``
    before the tool runs (an in-progress item), ``finished`` after (its result)."""

    step: StepRecord
    phase: str  # "started" | "finished"


@dataclass(frozen=True)
class CiteEvent:
    """A citation the answer made, placed where its marker was (the marker removed)."""

    citation: Citation
