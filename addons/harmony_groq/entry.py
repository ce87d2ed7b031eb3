"""The one addon mitmproxy's chain holds for this project: it calls its parts' hooks in order.

Why one: mitmproxy walks its whole chain for every event of every flow (eight a request),
calling each addon object that has the hook through a context manager and a coroutine; the
parts (``Settings``, ``MetricsEndpoint``, the gateway's two sides, ``FlowLabels``, ``FlowLog``,
``Metrics``: each its own module, by job) are looked up once here instead.

Why deferred: mitmproxy sends a whole reply to the client only once every ``response`` hook
returned. The bookkeeping parts (the flow log and the metrics) read the finished flow and never
change it, so their ``response`` and ``error`` hooks run right after the current event-loop step,
once the reply is on its way; they still run before the proxy reads anything else from the
network (a ``/metrics`` scrape that follows a reply counts it), and ``done`` runs what is left.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http

logger = logging.getLogger(__name__)

FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
LIFECYCLE_HOOKS = ("load", "configure", "running", "done")
AFTER_REPLY = ("response", "error")


class HarmonyGroq:
    """Calls ``parts`` (in order), then ``bookkeeping`` once the reply was sent."""

    def __init__(self, parts: list[Any], bookkeeping: list[Any]) -> None:
        self.parts = parts + bookkeeping
        self.hooks = {name: _bound(parts, name) for name in FLOW_HOOKS}
        self.after = {name: _bound(bookkeeping, name) for name in AFTER_REPLY}
        self.pending: list[tuple[Callable[[http.HTTPFlow], Any], http.HTTPFlow]] = []

    # -- lifecycle: every part, in order ---------------------------------------------------

    def load(self, loader: Any) -> None:
        self._all("load", loader)

    def configure(self, updated: set[str]) -> None:
        self._all("configure", updated)

    def running(self) -> None:
        self._all("running")
        # Everything loaded by now (mitmproxy, the harmony encoding, the parts) lives as long
        # as the process: out of the garbage collector's full collections, which otherwise scan
        # all of it (a pause of ~60 ms every few thousand flows here, ~1.5 ms once frozen).
        gc.freeze()

    def done(self) -> Awaitable[None] | None:
        self._run_pending()
        return _each(_bound(self.parts, "done"))  # the state store finishes its writes

    def _all(self, name: str, *args: Any) -> None:
        for hook in _bound(self.parts, name):
            hook(*args)

    # -- flow hooks -------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        _each(self.hooks["requestheaders"], flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _each(self.hooks["request"], flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _each(self.hooks["responseheaders"], flow)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._then_defer(_each(self.hooks["response"], flow), "response", flow)

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._then_defer(_each(self.hooks["error"], flow), "error", flow)

    def _then_defer(self, waiting: Awaitable[None] | None, name: str, flow: http.HTTPFlow
                    ) -> Awaitable[None] | None:
        """The bookkeeping once the parts' hooks are done (awaited first where one is async)."""
        if waiting is None:
            self._defer(name, flow)
            return None

        async def then() -> None:
            await waiting
            self._defer(name, flow)
        return then()

    def _defer(self, name: str, flow: http.HTTPFlow) -> None:
        hooks = self.after[name]
        if not hooks:
            return
        if not self.pending:
            try:
                asyncio.get_running_loop().call_soon(self._run_pending)
            except RuntimeError:  # no loop (a hook called outside mitmproxy): run them now
                _each(hooks, flow)
                return
        self.pending.extend((hook, flow) for hook in hooks)

    def _run_pending(self) -> None:
        pending, self.pending = self.pending, []
        for hook, flow in pending:
            _each((hook,), flow)


def _each(hooks: list[Callable[..., Any]] | tuple, *args: Any) -> Awaitable[None] | None:
    """Call each hook in order; a failing one is logged and the others still run, as mitmproxy
    does for an addon. Synchronous while the hooks are: from the first that returns an
    awaitable on, an awaitable for mitmproxy to await (the rest run after it, in order)."""
    for index, hook in enumerate(hooks):
        try:
            result = hook(*args)
        except Exception:
            logger.exception("%s failed", hook.__qualname__)
            continue
        if result is not None and inspect.isawaitable(result):
            return _each_awaited(result, hook, hooks[index + 1:], args)
    return None


async def _each_awaited(first: Awaitable[Any], hook: Callable[..., Any],
                        rest: list[Callable[..., Any]] | tuple, args: tuple) -> None:
    try:
        await first
    except Exception:
        logger.exception("%s failed", hook.__qualname__)
    for later in rest:
        try:
            result = later(*args)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("%s failed", later.__qualname__)


def _bound(parts: list[Any], name: str) -> list[Callable[..., Any]]:
    """Each part's hook ``name``, for the parts that have one."""
    return [hook for part in parts if callable(hook := getattr(part, name, None))]
