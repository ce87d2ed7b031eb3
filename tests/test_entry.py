"""The one addon on mitmproxy's chain: its parts' hooks in order, the bookkeeping after the
reply, and a failing part that does not stop the others."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest
from mitmproxy.test import tflow

from harmony_groq.entry import HarmonyGroq


class Part:
    def __init__(self, name: str, calls: list[str], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def response(self, flow) -> None:  # noqa: ANN001
        self.calls.append(f"{self.name}.response")
        if self.fail:
            raise RuntimeError("broken part")

    async def request(self, flow) -> None:  # noqa: ANN001
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}.request")


class Book:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def response(self, flow) -> None:  # noqa: ANN001
        self.calls.append("book.response")

    def done(self) -> None:
        self.calls.append("book.done")


def test_parts_in_order_bookkeeping_after_the_step_and_failures_contained(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    entry = HarmonyGroq([Part("a", calls, fail=True), Part("b", calls)], [Book(calls)])
    flow = tflow.tflow(resp=True)

    async def run() -> None:
        await entry.request(flow)
        entry.response(flow)
        calls.append("reply sent")  # what mitmproxy does in the same event-loop step
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    assert calls == ["a.request", "b.request", "a.response", "b.response", "reply sent",
                     "book.response"]
    assert "broken part" in caplog.text


def test_done_runs_the_bookkeeping_still_pending() -> None:
    calls: list[str] = []
    entry = HarmonyGroq([], [Book(calls)])

    async def run() -> None:
        entry.response(tflow.tflow(resp=True))
        entry.done()  # before the loop got to the deferred step

    asyncio.run(run())
    assert calls == ["book.response", "book.done"]


def test_running_freezes_what_start_up_loaded() -> None:
    """Start-up's objects live as long as the process: full collections skip them."""
    gc.unfreeze()
    calls: list[str] = []
    HarmonyGroq([Part("a", calls)], [Book(calls)]).running()
    try:
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
