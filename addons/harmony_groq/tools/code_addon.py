"""``CodeExecution``: the code-execution settings, the sandbox's start-up self-test, the pool of
containers, and what ``/health`` and the log say about them.

Code execution is offered only when the sandbox passed its self-test: otherwise the model is
never told it has a ``python`` tool (a client's ``code_interpreter`` / ``code_execution`` is
answered as unavailable, docs/server-tools.md) and ``/health`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from mitmproxy import ctx

from ..chat_request import ServerToolSpec
from ..errors import ProxyError
from ..settings import OptionSpec
from .code_request import CodeChoice, code_choice
from .containers import ContainerNotFound, ContainerPool
from .options import declare
from .python import CodeSession, PythonTool, code_spec
from .registry import ToolContext, register_tool
from .sandbox import SANDBOX_MODES, SandboxLimits, problem

logger = logging.getLogger(__name__)

CODE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("code_sandbox", "CODE_SANDBOX", str, "bwrap",
               "Where model-written Python runs: bwrap (bubblewrap) or off (no code "
               "execution).", SANDBOX_MODES),
    OptionSpec("code_timeout_s", "CODE_TIMEOUT_S", int, 120,
               "Wall-clock seconds one code call may run (the model is told)."),
    OptionSpec("code_memory_mb", "CODE_MEMORY_MB", int, 1024,
               "Address space per sandboxed process, in MiB."),
    OptionSpec("code_cpu_s", "CODE_CPU_S", int, 600,
               "CPU seconds one container may use in all its calls together."),
    OptionSpec("code_max_processes", "CODE_MAX_PROCESSES", int, 32,
               "Processes and threads one container may run at once."),
    OptionSpec("code_max_file_mb", "CODE_MAX_FILE_MB", int, 64,
               "Largest file (captured output included) the code may write, in MiB."),
    OptionSpec("code_disk_mb", "CODE_DISK_MB", int, 256,
               "Size of a container's /mnt/data (memory-backed), in MiB."),
    OptionSpec("code_output_chars", "CODE_OUTPUT_CHARS", int, 16000,
               "Characters of stdout and of stderr kept per call; the rest is cut with a note."),
    OptionSpec("code_max_containers", "CODE_MAX_CONTAINERS", int, 16,
               "Containers live at once in this proxy; the oldest idle one ends for a new one."),
    OptionSpec("code_idle_s", "CODE_IDLE_S", int, 1200,
               "Seconds an unused container lives (OpenAI's containers: 20 minutes)."),
    OptionSpec("code_python", "CODE_PYTHON", str, "/usr/bin/python3",
               "The Python the sandbox runs (it must live under /usr, the tree it mounts)."),
    OptionSpec("code_sandbox_uid_base", "CODE_SANDBOX_UID_BASE", int, 200000,
               "When the proxy runs as root: container n runs as this uid + n outside its "
               "namespace (unused uids)."),
)
declare(*CODE_OPTIONS)


class CodeExecution:
    """The self-test and container pool of harmony's ``python`` tool (its options are the
    tools' options, ``ToolOptions``: an addon before this one)."""

    def __init__(self) -> None:
        self.pool: ContainerPool | None = None
        self.unavailable: str | None = "not started yet"
        self._reaper: asyncio.Task | None = None
        register_tool("python", self.tool)

    def tool(self, spec: ServerToolSpec, context: ToolContext) -> PythonTool:
        """The ``python`` tool of one response, in the container its request chose."""
        assert self.pool is not None  # the tool is declared only while the sandbox runs
        return PythonTool(CodeSession(self.pool, spec.options.get("container_id") or "",
                                      spec.options.get("key")))

    def configure(self, updated: set[str]) -> None:
        if not updated & {spec.name for spec in CODE_OPTIONS}:
            return
        options = ctx.options
        limits = SandboxLimits(
            python=options.code_python, timeout_s=options.code_timeout_s,
            memory_mb=options.code_memory_mb, cpu_s=options.code_cpu_s,
            max_processes=options.code_max_processes, max_file_mb=options.code_max_file_mb,
            disk_mb=options.code_disk_mb, output_chars=options.code_output_chars)
        self.unavailable = problem(options.code_sandbox, limits, options.code_sandbox_uid_base)
        old, self.pool = self.pool, None
        if old is not None:
            asyncio.get_event_loop().create_task(old.close())
        if self.unavailable is None:
            self.pool = ContainerPool(limits, options.code_sandbox_uid_base,
                                      options.code_max_containers, options.code_idle_s)
            logger.info("code execution: bwrap sandbox ready (timeout %d s, %d MiB, up to %d "
                        "containers)", limits.timeout_s, limits.memory_mb,
                        options.code_max_containers)
        else:
            logger.warning("code execution is not offered: %s", self.unavailable)

    def running(self) -> None:
        self._reaper = asyncio.get_event_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """End idle containers even when no request comes to notice them."""
        while True:
            await asyncio.sleep(max(1, min(30, ctx.options.code_idle_s // 4)))
            if self.pool is not None:
                await self.pool.expire()

    async def done(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self.pool is not None:
            await self.pool.close()

    def health(self) -> dict[str, Any]:
        if self.pool is None:
            return {"status": "unavailable", "reason": self.unavailable}
        return {"status": "ok", "sandbox": "bwrap", "containers": len(self.pool),
                "max_containers": self.pool.max_live}

    def declare(self, dialect: str, body: Mapping[str, Any], headers: Mapping[str, str]
                ) -> tuple[ServerToolSpec, ...]:
        """The ``python`` tool a request declares (as a client's code tool), if any."""
        choice = code_choice(dialect, body, headers)
        spec = self.spec(choice) if choice is not None else None
        return (spec,) if spec is not None else ()

    def spec(self, choice: CodeChoice) -> ServerToolSpec | None:
        """The request's ``python`` tool, or None (never declared) while the sandbox cannot
        run. A container the client names must be live in this proxy: 404 otherwise."""
        if self.pool is None:
            logger.info("code execution asked for (%s) but not offered: %s", choice.where,
                        self.unavailable)
            return None
        container_id = choice.container_id
        if container_id:
            try:
                self.pool.find(container_id)
            except ContainerNotFound:
                raise ProxyError(404, f"Container {container_id!r} was not found or has "
                                 "expired: containers live in the proxy that started them "
                                 "and end after CODE_IDLE_S idle seconds.",
                                 code="container_not_found") from None
        elif choice.earlier_id and self.pool.alive(choice.earlier_id):
            container_id = choice.earlier_id
        return code_spec(self.pool.limits.timeout_s, container_id=container_id, key=choice.key)
