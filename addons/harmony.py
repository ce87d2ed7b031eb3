"""mitmproxy entry script: ``mitmdump -s addons/harmony.py``.

Thin on purpose: the logic lives in the ``harmony_groq`` package next to this file. mitmproxy's
chain gets one addon (``HarmonyGroq``, entry.py) that calls the parts below in this order.
"""

import os
import sys

from mitmproxy import contentviews

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harmony_groq.addon import Gateway  # noqa: E402
from harmony_groq.entry import HarmonyGroq  # noqa: E402
from harmony_groq.labels import FlowLabels  # noqa: E402
from harmony_groq.metrics import Metrics, MetricsEndpoint  # noqa: E402
from harmony_groq.pool.collector import PoolCollector  # noqa: E402
from harmony_groq.records import FlowLog  # noqa: E402
from harmony_groq.settings import Settings  # noqa: E402
from harmony_groq.state.addon import State  # noqa: E402
from harmony_groq.views import HarmonyContentview  # noqa: E402

contentviews.add(HarmonyContentview)

_settings = Settings()
_metrics = Metrics(_settings)
_state = State(_settings, _metrics.registry)  # stored Responses, reasoning memory, spill-over
_gateway = Gateway(_settings, _state)
_metrics.spill_status = _gateway.spill.status
_metrics.registry.register(PoolCollector(_gateway.pools))
# MetricsEndpoint answers /metrics before the gateway's request side routes; Spillover's hooks
# see the replies the gateway's reply side wrote; FlowLabels labels what was answered; the flow
# log and the metrics read the finished flow once its reply was sent.
addons = [HarmonyGroq(
    [_settings, _gateway.tool_options, _state,
     MetricsEndpoint(_settings, _metrics, _gateway.local.health), _gateway, _gateway.requests,
     _gateway.replies, _gateway.spill, FlowLabels()],
    bookkeeping=[FlowLog(_settings, _metrics.flow_log_failed), _metrics])]
