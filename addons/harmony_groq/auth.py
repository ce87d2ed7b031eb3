"""The proxy's own API key (``PROXY_API_KEY``), checked by every addon that answers requests."""

from __future__ import annotations

import hmac

from mitmproxy import http

from .errors import ProxyError


def check_proxy_key(flow: http.HTTPFlow, expected: str) -> None:
    """Raise a 401 unless the request carries ``expected`` (no key configured: anyone may).

    Clients send it the way their SDK sends an API key: ``Authorization: Bearer``, ``x-api-key``
    (Anthropic) or ``api-key`` (Azure). Compared in constant time."""
    if not expected:
        return
    headers = flow.request.headers
    given = headers.get("x-api-key") or headers.get("api-key") or ""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ProxyError(401, "Missing or wrong API key for this proxy (PROXY_API_KEY).",
                         code="invalid_api_key")
