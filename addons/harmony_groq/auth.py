"""The proxy's own API key (``PROXY_API_KEY``), checked by every addon that answers requests."""

from __future__ import annotations

import hmac

from mitmproxy import http

from .errors import ProxyError
from .records import record_of


def given_key(flow: http.HTTPFlow) -> str:
    """The API key a request carries, the way its SDK sends one: ``Authorization: Bearer``,
    ``x-api-key`` (Anthropic) or ``api-key`` (Azure)."""
    headers = flow.request.headers
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key") or headers.get("api-key") or ""


def check_proxy_key(flow: http.HTTPFlow, expected: str) -> None:
    """Raise a 401 unless the request carries ``expected`` (no key configured: anyone may),
    compared in constant time; a request the key gate admitted (keys/gate.py) passes."""
    if not expected or "key" in record_of(flow):
        return
    if not hmac.compare_digest(given_key(flow).encode(), expected.encode()):
        raise ProxyError(401, "Missing or wrong API key for this proxy (PROXY_API_KEY).",
                         code="invalid_api_key")
