"""OpenAI-shaped errors (``{"error": {"message", "type", "param", "code"}}``), right status."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mitmproxy import http

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
}


@dataclass
class ProxyError(Exception):
    """An error answered to the client as OpenAI-style JSON."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None

    def __str__(self) -> str:
        return self.message

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "api_error")

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self, extra_headers: dict[str, str] | None = None,
                    body: dict | None = None, status: int | None = None) -> http.Response:
        """The error as a JSON response: OpenAI's shape and status unless a dialect gives its
        own."""
        headers = {"content-type": "application/json"}
        if extra_headers:
            headers.update(extra_headers)
        return http.Response.make(status or self.status, json.dumps(body or self.body()).encode(),
                                  headers)

    def sse_event(self) -> bytes:
        """The error as a terminal SSE event pair, for failures after a stream started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\ndata: [DONE]\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ProxyError:
    return ProxyError(400, message, code=code, param=param)
