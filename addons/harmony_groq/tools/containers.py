"""Stateful containers: one sandboxed kernel per container, kept between calls.

gpt-oss was trained on a "stateful Jupyter notebook": variables and ``/mnt/data`` files stay
between calls. A container is found again by its id (``cntr_…``, OpenAI's and Anthropic's
``container`` field) or by a conversation key the dialect derives; it ends after
``CODE_IDLE_S`` idle seconds, and when ``CODE_MAX_CONTAINERS`` are live the oldest idle one
makes room. Containers live in the proxy process that started them (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass

from .sandbox import SandboxLimits, bwrap_command, outside_uid

logger = logging.getLogger(__name__)

GRACE_S = 3  # past the kernel's own timeout, the container is stopped from outside


class ContainerNotFound(LookupError):
    """A named container this proxy does not hold (expired, or made by another proxy)."""


class ContainersFull(RuntimeError):
    """Every live container is busy and none may be ended to make room."""


@dataclass(frozen=True)
class Execution:
    """What one call printed, as the kernel reported it (or the container's end)."""

    stdout: str
    stderr: str
    return_code: int
    note: str = ""  # truncation, timeout or a stopped container, said to the model and client
    timed_out: bool = False

    @property
    def text(self) -> str:
        return tool_text(self.stdout, self.stderr, self.note)


def tool_text(*parts: str) -> str:
    """The tool message the model reads: the outputs in order (the reference's wording when
    there is none). History items are rendered back with it, as the model first read them."""
    parts = tuple(part for part in parts if part)
    if not parts:
        return ("[WARN] No output available. Use print() to output anything to stdout to "
                "receive the output")
    return "\n".join(part.rstrip("\n") for part in parts)


def _truncation(name: str, shown: str, total: int) -> str:
    if total <= len(shown.encode("utf-8", "replace")):
        return ""
    return f"[{name} truncated: {total} bytes in all, the first {len(shown)} characters shown]"


class Container:
    """One running kernel in its sandbox; one call at a time."""

    def __init__(self, container_id: str, key: str | None, slot: int,
                 limits: SandboxLimits) -> None:
        self.id, self.key, self.slot, self.limits = container_id, key, slot, limits
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, uid_base: int) -> None:
        uid = outside_uid(uid_base, self.slot)
        self.process = await asyncio.create_subprocess_exec(
            *bwrap_command(self.limits), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd="/", env={},
            user=uid, group=uid, extra_groups=[] if uid is not None else None,
            limit=self.limits.output_chars * 8 + 65536)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def execute(self, code: str) -> Execution:
        """Run ``code``; the kernel stops it at the timeout, the proxy ``GRACE_S`` later."""
        async with self.lock:
            self.last_used = time.monotonic()
            try:
                return await self._execute(code)
            finally:
                self.last_used = time.monotonic()

    async def _execute(self, code: str) -> Execution:
        process = self.process
        if process is None or process.returncode is not None:
            return Execution("", "", 1, "[the container has stopped; its state is lost]")
        timeout = self.limits.timeout_s
        request = {"code": code, "timeout": timeout, "output_limit": self.limits.output_chars}
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), timeout + GRACE_S)
            answer = json.loads(line)
        except TimeoutError:
            await self.stop()
            return Execution("", "", 1, f"[execution timed out after {timeout} s and did not "
                                        "stop; the container was ended, its state is lost]",
                             timed_out=True)
        except (OSError, ValueError, asyncio.LimitOverrunError, ConnectionError):
            await self.stop()
            return Execution("", "", 1, "[the container ended during the call (a limit was "
                                        "hit); its state is lost]")
        notes = [_truncation("stdout", answer["stdout"], answer["stdout_bytes"]),
                 _truncation("stderr", answer["stderr"], answer["stderr_bytes"])]
        if answer["timed_out"]:
            notes.append(f"[execution timed out after {timeout} s; the container's state is "
                         "kept]")
        return Execution(answer["stdout"], answer["stderr"], answer["return_code"],
                         "\n".join(note for note in notes if note), answer["timed_out"])

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5)


class ContainerPool:
    """The live containers of this proxy, by id and by conversation key."""

    def __init__(self, limits: SandboxLimits, uid_base: int, max_live: int,
                 idle_s: int) -> None:
        self.limits, self.uid_base = limits, uid_base
        self.max_live, self.idle_s = max_live, idle_s
        self._by_id: dict[str, Container] = {}
        self._creating = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    @staticmethod
    def new_id() -> str:
        return f"cntr_{secrets.token_hex(12)}"

    def find(self, container_id: str) -> Container:
        container = self._by_id.get(container_id)
        if container is None or not container.alive:
            raise ContainerNotFound(container_id)
        return container

    def alive(self, container_id: str) -> bool:
        container = self._by_id.get(container_id)
        return container is not None and container.alive

    def find_key(self, key: str) -> Container | None:
        """The live container of a conversation key."""
        return next((c for c in self._by_id.values() if c.key == key and c.alive), None)

    async def get_or_create(self, container_id: str, key: str | None = None) -> Container:
        """The live container ``container_id``, started under that id if it is not live."""
        async with self._creating:
            container = self._by_id.get(container_id)
            if container is not None and container.alive:
                return container
            return await self._create(container_id, key)

    async def create(self, key: str | None = None) -> Container:
        async with self._creating:
            return await self._create(self.new_id(), key)

    async def _create(self, container_id: str, key: str | None) -> Container:
        await self.expire()
        if len(self._by_id) >= self.max_live:
            await self._end_oldest_idle()
        used = {container.slot for container in self._by_id.values()}
        slot = next(n for n in range(1, self.max_live + 2) if n not in used)
        container = Container(container_id, key, slot, self.limits)
        await container.start(self.uid_base)
        self._by_id[container.id] = container
        logger.info("code container %s started (%d live)", container.id, len(self._by_id))
        return container

    async def _end_oldest_idle(self) -> None:
        idle = [c for c in self._by_id.values() if not c.lock.locked()]
        if not idle:
            raise ContainersFull(f"all {self.max_live} code containers are busy")
        await self.end(min(idle, key=lambda c: c.last_used).id, "oldest idle, room needed")

    async def end(self, container_id: str, why: str) -> None:
        container = self._by_id.pop(container_id, None)
        if container is not None:
            await container.stop()
            logger.info("code container %s ended (%s)", container_id, why)

    async def expire(self) -> None:
        """End the containers idle for ``idle_s`` and those whose kernel has stopped."""
        now = time.monotonic()
        for container in list(self._by_id.values()):
            stale = now - container.last_used > self.idle_s and not container.lock.locked()
            if stale or not container.alive:
                await self.end(container.id, "idle" if stale else "stopped")

    async def close(self) -> None:
        for container_id in list(self._by_id):
            await self.end(container_id, "proxy stopping")
