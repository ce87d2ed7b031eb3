"""harmony's built-in ``python`` tool, run in a sandboxed stateful container.

Clients ask for it as OpenAI's ``code_interpreter`` (Responses), Anthropic's
``code_execution_*`` (Messages) and Groq's ``{"type": "code_interpreter"}`` (Chat). The model
sees the trained declaration (``ToolNamespaceConfig.python()``: a stateful Jupyter notebook,
``/mnt/data``) with the real timeout and no internet; each call runs in the request's
container (``CodeSession``) and its output goes back as the ``python`` tool message.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass, field

from openai_harmony import ToolNamespaceConfig

from ..chat_request import ServerToolSpec
from .base import ServerCall, StepRecord, ToolOutput, new_step_id
from .containers import Container, ContainerPool, ContainersFull

KIND = "code_interpreter"


def python_config(timeout_s: int) -> ToolNamespaceConfig:
    """The trained declaration, telling the real timeout and that there is no internet."""
    trained = ToolNamespaceConfig.python()
    description = (trained.description
                   .replace("120.0 seconds", f"{float(timeout_s)} seconds")
                   .replace("Internet access for this session is UNKNOWN. Depends on the "
                            "cluster.", "Internet access for this session is disabled."))
    return ToolNamespaceConfig(name=trained.name, description=description, tools=trained.tools)


@dataclass
class CodeSession:
    """The container one request's code runs in: named by the client, found by the
    conversation's key, or new. Its id is fixed when the request starts (the items carry it);
    the sandbox starts at the first call, so a reply that runs no code starts nothing."""

    pool: ContainerPool
    container_id: str = ""
    key: str | None = None
    _container: Container | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.container_id:
            found = self.pool.find_key(self.key) if self.key is not None else None
            self.container_id = found.id if found else self.pool.new_id()

    async def container(self) -> Container:
        if self._container is None or not self._container.alive:
            self._container = await self.pool.get_or_create(self.container_id, self.key)
        return self._container


def code_of(call: ServerCall) -> str:
    """The code of a call: its raw body, or ``{"code": …}`` when the model wrote JSON."""
    body = call.arguments
    if body.lstrip().startswith("{"):
        try:
            parsed = json.loads(body)
        except ValueError:
            return body
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), str):
            return parsed["code"]
    return body


class PythonTool:
    """The ``python`` namespace for one request."""

    namespace = "python"
    kind = KIND

    def __init__(self, session: CodeSession) -> None:
        self.session = session

    def started(self, call: ServerCall) -> StepRecord:
        return StepRecord(kind=KIND, action="execute", id=new_step_id("ci"),
                          code=code_of(call), backend="bwrap",
                          detail={"container_id": self.session.container_id})

    async def run(self, call: ServerCall, step: StepRecord) -> ToolOutput:
        began = time.perf_counter()
        try:
            container = await self.session.container()
        except ContainersFull as error:
            step.fail("unavailable", str(error))
            return ToolOutput(f"[code execution unavailable: {error}]", step)
        execution = await container.execute(step.code or "")
        text = execution.text
        step.status = "completed"
        step.outputs = [{"type": "logs", "logs": text}]
        step.detail.update(stdout=execution.stdout, stderr=execution.stderr,
                           return_code=execution.return_code, note=execution.note)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
            seconds=self.session.pool.idle_s)  # idle from now on
        step.detail["expires_at"] = expires.isoformat(timespec="seconds").replace("+00:00", "Z")
        if execution.timed_out:
            step.error, step.message = "execution_time_exceeded", execution.note
        step.bytes = len(text.encode())
        step.duration_ms = (time.perf_counter() - began) * 1000
        return ToolOutput(text, step)


def code_spec(timeout_s: int, **options: object) -> ServerToolSpec:
    """The request's declaration of the tool (options: the client's container choice)."""
    return ServerToolSpec(namespace="python", config=python_config(timeout_s), kind=KIND,
                          options=dict(options))
