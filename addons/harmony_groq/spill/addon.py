"""Spill-over: gpt-oss requests go to Groq's hosted twin of the model when the local model
servers are down (``SPILLOVER=down``) or also when they are full (``saturated``), sticky per
conversation, within Groq's rate limits and the proxy's spill budget.

``RequestSide`` hands every gpt-oss request to ``Spillover.route`` with its way to the local
server; ``route`` answers with a ``GroqCall`` when the request goes to Groq instead (before any
local attempt, or after one failed before its first byte), which the gateway sends like any
Groq call. As an addon after the gateway, ``Spillover`` reads Groq's rate-limit headers from
every Groq answer, settles the budget, ends the in-flight count and says who served each
gpt-oss request (``x-harmony-groq-served-by``). Local capacity (capacity.py), limits and
budget (limits.py), stickiness (sticky.py) and the request (request.py) are each behind their
own small interface.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from mitmproxy import http

from ..backends import make_backend
from ..completion import AssembledMessage
from ..dialects.base import Conversation, GroqCall
from ..errors import ProxyError
from ..reasoning_memory import ReasoningMemory
from ..records import record_of
from ..render import render_prompt
from ..settings import Config, Settings
from ..state.base import Namespace
from .capacity import LocalCapacity
from .limits import MIN_COMPLETION, GroqLimits, SpillBudget, prompt_estimate
from .request import SpillReply, spill_body
from .sticky import GROQ, conversation_keys, reply_keys

logger = logging.getLogger(__name__)
SERVED_BY = "x-harmony-groq-served-by"
LocalRoute = Callable[[http.HTTPFlow, Conversation], Awaitable[None]]


class Spillover:
    """Decides local or Groq for each gpt-oss request; keeps what that decision needs."""

    def __init__(self, settings: Settings, memory: Callable[[], ReasoningMemory],
                 sticky: Namespace, capacity: LocalCapacity) -> None:
        self.settings = settings
        self.memory = memory
        self.capacity = capacity
        self.sticky = sticky
        self.limits = GroqLimits()
        self.budget = SpillBudget()

    @property
    def config(self) -> Config:
        return cast(Config, self.settings.config)

    def configure(self, updated: set[str]) -> None:
        if self.settings.config is not None:
            self.budget.limit = self.config.spillover_budget_tokens
            self.budget.window = self.config.spillover_budget_window

    def twin(self, model: str) -> str | None:
        """``model``'s twin on Groq when spill-over may send it there."""
        config = self.config
        if config.spillover == "off" or not config.groq_api_key:
            return None
        twins = dict(config.spillover_models)
        lowered = model.lower()
        return twins.get(lowered) or twins.get(lowered.rsplit("/", 1)[-1])

    # -- the decision ------------------------------------------------------------------------

    async def route(self, flow: http.HTTPFlow, conversation: Conversation,
                    local: LocalRoute) -> GroqCall | None:
        """Send the request the local way (``local``), or return the call for Groq's twin."""
        record = record_of(flow)
        model = conversation.chat.model
        twin = self.twin(model)
        record["served_by"] = "local"
        if twin is not None:
            reason = await self._reason(model, conversation, record.get("key", ""))
            if reason is not None:
                refusal = self._refusal(flow, conversation)
                if refusal is None:
                    return await self._spill(flow, conversation, twin, reason)
                record["spill_refused"] = refusal
                # Saturated: queue locally as without spill-over; sticky: local if it can.
                if reason == "down" or (reason == "sticky"
                                        and not await self.capacity.can_serve(model)):
                    raise _unavailable(flow, refusal)
        self.capacity.begin(flow.id)
        try:
            await local(flow, conversation)
        except ProxyError as exc:
            if twin is None or exc.code != "upstream_unavailable":
                raise
            return await self._failover(flow, conversation, twin, exc.message)
        response = flow.response
        if (twin is not None and response is not None and response.status_code >= 500
                and not conversation.chat.stream):
            flow.response = None
            return await self._failover(flow, conversation, twin,
                                        f"the model server answered {response.status_code}")
        return None

    async def _reason(self, model: str, conversation: Conversation, key_name: str
                      ) -> str | None:
        """Why this request should go to Groq: sticky, down, saturated; None: local."""
        try:
            for key in conversation_keys(conversation.chat.messages):
                if await self.sticky.get(key) == GROQ:
                    return "sticky"
        except Exception:  # noqa: BLE001 - a store that fails (a shared one) is a miss
            logger.warning("spill-over: the sticky store failed; treated as not sticky",
                           exc_info=True)
        if not await self.capacity.can_serve(model):
            return "down"
        if self.config.spillover == "saturated" and self.capacity.all_full(model, key_name):
            return "saturated"
        return None

    async def _failover(self, flow: http.HTTPFlow, conversation: Conversation, twin: str,
                        why: str) -> GroqCall:
        """The local attempt failed before its first byte: Groq, if limits allow."""
        self.capacity.end(flow.id)
        self.capacity.failed(conversation.chat.model)
        record = record_of(flow)
        record["local_failure"] = why
        refusal = self._refusal(flow, conversation)
        if refusal is not None:
            record["spill_refused"] = refusal
            raise _unavailable(flow, refusal)
        return await self._spill(flow, conversation, twin, "failover")

    def _refusal(self, flow: http.HTTPFlow, conversation: Conversation) -> str | None:
        """Why Groq must not take this request now (rate limits, budget), or None; on None the
        budget holds a reservation for it."""
        record = record_of(flow)
        if any(spec.kind == "mcp" for spec in conversation.chat.server_tools):
            return ("it declares MCP servers, which the proxy runs for the local model only "
                    "(Groq's chat API has no MCP)")
        if "prompt_tokens" not in record:
            request = conversation.chat
            transport = make_backend(self.config.backend).text_transport
            record["prompt_tokens"] = len(render_prompt(
                request, self.config.harmony_date, transport).token_ids)
        estimate = prompt_estimate(record["prompt_tokens"])
        refusal = self.limits.refusal(estimate)
        if refusal is None:
            allowance, refusal = self.budget.reserve(flow.id, estimate,
                                                     conversation.chat.max_tokens)
            record["spill_allowance"] = allowance
        return refusal

    async def _spill(self, flow: http.HTTPFlow, conversation: Conversation, twin: str,
                     reason: str) -> GroqCall:
        record = record_of(flow)
        request = conversation.chat
        messages, restored = await self.memory().restore(request.messages)
        if restored:
            record["restored_reasoning"] = restored
        body, names, notes = spill_body(dataclasses.replace(request, messages=messages), twin,
                                        record.pop("spill_allowance", None))
        for note in notes:
            logger.info("spill %s: %s", flow.id, note)
        record.update(route="groq", served_by="groq")
        record["spill"] = {"reason": reason, "twin": twin, "notes": notes,
                           "reserved_tokens": self.budget.reserved.get(flow.id)}

        def done(message: AssembledMessage) -> None:
            self.memory().remember("".join(message.reasoning), message.tool_calls)
            self._stick(reply_keys(messages, message.to_message(())))

        reply = SpillReply(conversation.reply, done)
        return GroqCall("/chat/completions", body, reply, names or None)

    def _stick(self, keys: list[str]) -> None:
        """Mark the conversation as spilled (the store writes in the background, before the
        next turn in practice)."""
        for key in keys:
            self.sticky.put(key, GROQ, self.config.spillover_sticky_seconds)

    # -- hooks (after the gateway's) ------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record = record_of(flow)
        assert flow.response is not None
        if record.get("route") == "groq":
            self.limits.observe(flow.response.status_code, flow.response.headers)
        self._served_by(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._served_by(flow)
        self._over(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._over(flow)

    @staticmethod
    def _served_by(flow: http.HTTPFlow) -> None:
        served = record_of(flow).get("served_by")
        if served and flow.response is not None:
            flow.response.headers[SERVED_BY] = served

    def _over(self, flow: http.HTTPFlow) -> None:
        self.capacity.end(flow.id)
        if flow.id not in self.budget.reserved:
            return
        record = record_of(flow)
        summary = record.get("stream_summary")
        usage = summary.get("usage") if summary else record.get("usage")
        status = flow.response.status_code if flow.response is not None else None
        used = None
        if isinstance(usage, dict):
            used = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        elif status is not None and status != 200:
            used = 0  # Groq refused it: nothing spent
        counted = self.budget.settle(flow.id, used)
        record.setdefault("spill", {})["spent_tokens"] = counted

    def status(self) -> dict[str, Any]:
        """What the metrics scrape shows: the budget's state."""
        return {"budget": self.budget.status()}

    def health(self) -> dict[str, Any]:
        """What ``/health`` shows: the mode, the twins, the budget, and why a spill would be
        refused now (Groq's 429 or its limits; this process's view, like the budget)."""
        config = self.config
        mode = config.spillover if config.groq_api_key else "off"
        paused = self.limits.refusal(0) if mode != "off" else None
        left = self.budget.left()
        if mode != "off" and paused is None and left is not None and left < MIN_COMPLETION:
            paused = (f"the spill budget (SPILLOVER_BUDGET_TOKENS={self.budget.limit} per "
                      f"{self.budget.window}) has {max(left, 0)} tokens left")
        return {"mode": mode, "models": dict(config.spillover_models),
                "budget": self.budget.status(), "paused": paused}


def _unavailable(flow: http.HTTPFlow, refusal: str) -> ProxyError:
    record_of(flow)["served_by"] = "none"
    return ProxyError(503, "gpt-oss is unavailable: the local model server is down or full, "
                      f"and spill-over to Groq is paused: {refusal}.",
                      code="spillover_unavailable")
