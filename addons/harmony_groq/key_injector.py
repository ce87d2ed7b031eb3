"""The Groq key, added to a routed flow at the last moment (an addon of its own, so it can sit
at the very end of mitmproxy's chain)."""

from __future__ import annotations

from mitmproxy import http

from .records import META
from .settings import Settings


class GroqKeyInjector:
    """Adds the Groq key to a routed flow at the last moment.

    mitmproxy runs the ``update`` hook across the chain right after ``request`` and sends the
    request once it returns. Sitting at the very end of the chain, this runs after mitmweb's
    view has published the flow, so the key never reaches a browser; ``ReplySide`` masks it
    again in ``responseheaders`` once it went upstream.
    """

    name = "harmony_groq_key_injector"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def update(self, flows: list[http.HTTPFlow]) -> None:
        for flow in flows:
            # An intercepted flow waits in mitmweb: inject on the update its resume triggers.
            if (isinstance(flow, http.HTTPFlow) and flow.response is None
                    and not flow.intercepted
                    and flow.metadata.get(META, {}).pop("inject_key", False)):
                self.inject(flow)

    def inject(self, flow: http.HTTPFlow) -> None:
        config = self.settings.config
        if config is not None:
            flow.request.headers["authorization"] = f"Bearer {config.groq_api_key}"
