"""Read-your-writes across proxies: the end of a reply waits for the store writes it made.

A client that gets the end of a reply (``[DONE]``, ``response.completed``, ``message_stop``, a
whole JSON body) may send its next turn at once, to another proxy; that turn reads what this
reply wrote (the stored response, the analysis before its tool calls, spill-over stickiness).
A shared store writes in the background (``StateStore.put`` never waits, so the per-token path
can call it), so the reply's end must wait for those writes. The code that writes the end
collects them (``collect_writes``, around the synchronous call that makes the end and the
writes); ``State.settle`` (state/addon.py) then waits for them, at most the store's timeout.
The in-process store writes at once: nothing is collected and nothing waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_collecting: ContextVar[Writes | None] = ContextVar("harmony_groq_state_writes", default=None)


class Writes:
    """The store writes under way that one reply made, by namespace."""

    def __init__(self) -> None:
        self.under_way: list[tuple[str, asyncio.Future]] = []

    def pending(self) -> bool:
        return any(not write.done() for _, write in self.under_way)

    async def wait(self, timeout: float) -> list[str]:
        """Wait until every write is done or ``timeout`` passed; the namespaces of the writes
        still under way then (they go on in the background)."""
        waiting = [write for _, write in self.under_way if not write.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)
        return sorted({name for name, write in self.under_way if not write.done()})


@contextmanager
def collect_writes() -> Iterator[Writes]:
    """The writes made inside the ``with`` block (synchronous code: the context is this
    task's until the block ends)."""
    writes = Writes()
    token = _collecting.set(writes)
    try:
        yield writes
    finally:
        _collecting.reset(token)


def note_write(namespace: str, write: asyncio.Future) -> None:
    """A write under way (``Namespace.put``): the collecting reply, if any, waits for it."""
    writes = _collecting.get()
    if writes is not None:
        writes.under_way.append((namespace, write))
