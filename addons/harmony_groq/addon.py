"""The gateway: answers the local endpoints and routes each client API's requests.

``Gateway`` builds the parts a request passes through and hands mitmproxy's flow hooks to its
two sides, along the data flow: ``RequestSide`` (request_side.py: local answers, the dialect
from the path, the route from the model, the request rewritten for Groq or rendered for a
model-server replica) and ``ReplySide`` (reply_side.py: stream translators, whole replies,
broken streams). ``GroqKeyInjector`` adds the Groq key at the last moment. ``addons/harmony.py``
wires the gateway with ``Settings``, the state store, the metrics and the flow log.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from mitmproxy import ctx

from .dialects.table import DialectTable
from .key_injector import GroqKeyInjector
from .local import LocalEndpoints
from .pool.capacity import PoolCapacity
from .pool.dispatch import Dispatcher
from .pool.fair import FairShare
from .pool.pool import Pools
from .reasoning_memory import ReasoningMemory
from .reply_side import ReplySide
from .request_side import InFlight, RequestSide
from .response_store import ResponseStore
from .settings import Config, Settings
from .spill import Spillover
from .state.addon import State
from .toolloop import ToolLoop
from .tools.code_addon import CodeExecution
from .tools.options import ToolOptions
from .upstream import ModelServerClient

logging.getLogger("httpx").setLevel(logging.WARNING)


class Gateway:
    """Builds the gateway's parts and runs their lifecycle; its flow hooks are the two sides'
    (``requests`` and ``replies``, on the entry addon's list in that order)."""

    def __init__(self, settings: Settings, state: State | None = None) -> None:
        self.settings = settings
        self.state = state or State(settings)  # harmony.py passes the one it loads as an addon
        self.upstream = ModelServerClient()
        self.local = LocalEndpoints(settings, self.upstream.client)
        self.pools = Pools(self.upstream.client, self.upstream.fresh)
        fair = FairShare(lambda: self.config.spillover_max_inflight,
                         lambda: self.config.fair_share_queue)
        dispatcher = Dispatcher(self.pools, self.upstream, fair)
        dialects = DialectTable(ResponseStore(self.state.responses))
        memory = ReasoningMemory(self.state.reasoning)
        self.injector = GroqKeyInjector(settings)
        self.spill = Spillover(settings, lambda: memory,  # an addon after this one
                               sticky=self.state.spill, capacity=PoolCapacity(
                                   self.pools, lambda: self.config.spillover_max_inflight, fair))
        in_flight = InFlight()
        self.code = CodeExecution()  # harmony's python tool: sandbox and containers
        self.requests = RequestSide(settings, self.state, dialects, self.local, self.pools,
                                    dispatcher, memory, self.injector, self.spill, in_flight,
                                    self.code)
        self.tool_options = ToolOptions()  # an addon before this one (harmony.py)
        self.tools = ToolLoop(self.tool_options, dispatcher, self.upstream.client,
                              lambda: self.config.upstream_timeout, self.state.settle,
                              dialects.flow_dialect)
        self.requests.prepare_tools = self.tools.prepare
        self.replies = ReplySide(settings, self.state, dialects, dispatcher,
                                 self.upstream.client, in_flight, self.tools)
        self._startup_check: asyncio.Task | None = None

    @property
    def config(self) -> Config:
        # Set by Settings.configure before any flow; mitmproxy may read this attribute earlier.
        return cast(Config, self.settings.config)

    def configure(self, updated: set[str]) -> None:
        self.local.configure(updated)
        if self.settings.config is not None:
            self.pools.configure(self.config.model_servers, self.config.routing)

    def running(self) -> None:
        # Where flows are shown (mitmweb's view), the key injector must see them after every
        # other addon, so it joins the end of mitmproxy's chain rather than this script's
        # list. mitmdump shows no flow before it is sent: the key goes in with the request
        # hook there, which spares mitmproxy one more addon to call on every event.
        self.requests.late_key = ctx.master.addons.get("view") is not None
        if self.requests.late_key and self.injector not in ctx.master.addons.chain:
            ctx.master.addons.add(self.injector)
        if self.settings.config is not None:
            self._startup_check = asyncio.get_running_loop().create_task(
                self.local.check_server())
            self.local.fetch_groq_models()  # Groq's output limits, before the first request
            self.pools.start()

    def done(self) -> None:
        if self.injector in ctx.master.addons.chain:
            ctx.master.addons.remove(self.injector)
        self.pools.stop()
        self.upstream.close()
