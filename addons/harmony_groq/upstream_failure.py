"""An upstream (a model server or Groq) that fails before its response head: the failure
named by its cause, answered in the client API's own error shape, recorded and counted.

mitmproxy forwards streams and Groq's replies itself. When the upstream fails before the
response head (refused, no such host, TLS, closed or reset, unreadable head, no answer in
time), mitmproxy calls the ``error`` hook with ``flow.response`` None and then has its HTTP/1
layer answer the client with its own HTML page (``_http1.make_error_response``), which no
hook can replace. ``UpstreamFailures`` answers first: the dialect's JSON error goes on the
client connection as a whole response with ``connection: close``, and the connection is
marked unwritable for mitmproxy (``ConnectionState.CAN_WRITE``, which its HTTP/1 layer checks
before it writes that page). Where the addon made the call itself (non-streamed gpt-oss
replies, the replica probe) the httpx exception is classified the same way.

A kept-alive connection the upstream closed (or reset) just as the request went out is an
ordinary race with real servers (uvicorn closes idle connections after 5 s): nothing was
generated, so a gpt-oss request goes once more on a fresh connection where the pool cannot
fail over to another replica (``retry_allowed``; the pool's own failover is that retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
from typing import cast

import httpx
from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.flow import Error
from mitmproxy.net.http.http1 import assemble_response

from .dialects.table import DialectTable
from .errors import ProxyError
from .records import client_disconnected, record_of
from .settings import Config, Settings
from .streaming import can_write_chunks, client_writer

logger = logging.getLogger(__name__)

CAUSES = ("refused", "dns", "tls", "closed", "reset", "bad_headers", "timeout", "other")
RETRYABLE = frozenset({"closed", "reset"})  # nothing reached the upstream's application
# mitmproxy's server TLS layer (proxy/layers/tls.py) and the resolver (getaddrinfo)
_TLS_MESSAGES = ("Certificate verify failed", "The remote server does not speak TLS",
                 "The remote server and mitmproxy cannot agree", "OpenSSL ")
_DNS_WORDS = ("name or service not known", "name resolution", "nodename nor servname",
              "no address associated", "errno -")
_STATUS = {"refused": 503, "dns": 503, "timeout": 504}
_CODE = {503: "upstream_unavailable", 504: "upstream_timeout"}
_SAYS = {
    "refused": "is unreachable: it refused the connection",
    "dns": "is unreachable: its host name does not resolve",
    "tls": "failed the TLS handshake",
    "closed": "closed the connection before answering",
    "reset": "reset the connection before answering",
    "bad_headers": "answered with an unreadable response head",
    "timeout": "did not answer in time",
    "other": "failed before answering",
}


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why an upstream gave no response head: one of ``CAUSES``, and what was seen."""

    cause: str
    detail: str

    def __post_init__(self) -> None:
        assert self.cause in CAUSES, self.cause  # the metrics' label values

    @property
    def retryable(self) -> bool:
        return self.cause in RETRYABLE


class UpstreamFailure(ProxyError):
    """The client's error for an upstream ``Failure`` (raised where the addon calls it)."""

    def __init__(self, failure: Failure, error: ProxyError) -> None:
        super().__init__(error.status, error.message, error.code, error.param)
        self.failure = failure


def failure_of_flow(flow: http.HTTPFlow) -> Failure:
    """The cause of mitmproxy's ``flow.error`` for a flow with no response: a connection that
    never opened (mitmproxy's message says why: its TLS layer's, the resolver's, the OS's) or
    one that broke before the response head."""
    message = flow.error.msg if flow.error is not None else "connection lost"
    lowered = message.lower()
    if flow.server_conn.timestamp_tcp_setup is None:  # the connection never opened
        if message.startswith(_TLS_MESSAGES) or "tls" in lowered or "ssl" in lowered \
                or "certificate" in lowered or "handshake" in lowered:
            return Failure("tls", message)
        if any(words in lowered for words in _DNS_WORDS):
            return Failure("dns", message)
        if "timed out" in lowered:
            return Failure("timeout", message)
        return Failure("refused", message)
    if message == "server closed connection":
        return Failure("closed", message)
    if message.startswith(("Cannot parse HTTP response", "unexpected server response")):
        return Failure("bad_headers", message)
    return Failure("other", message)


def failure_of_exception(exc: BaseException) -> Failure:
    """The cause of an exception from a call the addon made (httpx, or a socket connect)."""
    detail = str(exc) or type(exc).__name__
    chain = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None \
            and len(chain) < 8:
        chain.append(cause)
    if any(isinstance(e, (TimeoutError, httpx.TimeoutException)) for e in chain):
        return Failure("timeout", detail)
    if any(isinstance(e, socket.gaierror) for e in chain):
        return Failure("dns", detail)
    if any(isinstance(e, ssl.SSLError) for e in chain) or "SSL" in detail:
        return Failure("tls", detail)
    if isinstance(exc, (httpx.ConnectError, ConnectionRefusedError)):
        dns = any(words in detail.lower() for words in _DNS_WORDS)
        return Failure("dns" if dns else "refused", detail)
    if any(isinstance(e, ConnectionResetError) for e in chain) or \
            "reset by peer" in detail.lower():
        return Failure("reset", detail)
    if isinstance(exc, httpx.RemoteProtocolError):
        closed = "without sending" in detail or "disconnected" in detail
        return Failure("closed" if closed else "bad_headers", detail)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, OSError)):
        return Failure("closed", detail)
    return Failure("other", detail)


def client_error(failure: Failure, upstream: str, timeout: float | None = None) -> ProxyError:
    """The client's error: 503 when the upstream cannot be reached, 504 past the timeout,
    502 for the rest (``upstream`` names it: "The gpt-oss model server at …", "Groq")."""
    status = _STATUS.get(failure.cause, 502)
    says = _SAYS[failure.cause]
    if failure.cause == "timeout" and timeout is not None:
        says = f"did not answer within {timeout:g} s (UPSTREAM_TIMEOUT)"
    message = f"{upstream} {says}: {failure.detail.rstrip('.')}."
    if failure.cause in ("refused", "dns") and upstream.startswith("The gpt-oss"):
        message += " Start it (see docs/backends.md) or set TRANSFORMERS_URL."
    return ProxyError(status, message, code=_CODE.get(status, "upstream_error"))


def note(flow: http.HTTPFlow, failure: Failure) -> dict[str, str]:
    """Record the flow's first upstream failure (a later one, of a retry, does not replace
    it); the metrics count it by cause."""
    return record_of(flow).setdefault("upstream_failure", {"cause": failure.cause,
                                                           "detail": failure.detail})


def note_retry(flow: http.HTTPFlow, failure: Failure, outcome: str, detail: str = "") -> None:
    """Record (and log) the one retry on a fresh connection and how it went."""
    retry = {"cause": failure.cause, "outcome": outcome}
    if detail:
        retry["detail"] = detail
    record_of(flow)["upstream_retry"] = retry
    logger.info("retried %s on a fresh connection after the upstream %s: %s%s",
                flow.request.url, _SAYS[failure.cause], outcome,
                f" ({detail})" if detail else "")


def recorded_failure(flow: http.HTTPFlow) -> Failure | None:
    found = record_of(flow).get("upstream_failure")
    return Failure(found["cause"], found["detail"]) if found else None


def retry_allowed(flow: http.HTTPFlow, failure: Failure) -> bool:
    """One retry per request, and only for a connection closed or reset before any response
    byte."""
    return failure.retryable and "upstream_retry" not in record_of(flow)


def upstream_name(flow: http.HTTPFlow) -> str:
    record = record_of(flow)
    if record.get("route") == "groq":
        return "Groq"
    url = (record.get("upstream_request") or {}).get("url") or flow.request.url
    return f"The gpt-oss model server at {url}"


def answer_in_place(flow: http.HTTPFlow, response: http.Response) -> bool:
    """Send ``response`` whole on the client connection from the ``error`` hook, before
    mitmproxy's own page, which is then never written (HTTP/1 in plain text only: the bytes go
    on the socket as they are). False when that cannot be done here."""
    if not can_write_chunks(flow) or not flow.client_conn.state & ConnectionState.CAN_WRITE:
        return False
    writer = client_writer(flow)
    if writer is None:
        return False
    response.headers["connection"] = "close"  # mitmproxy does not read on from this client
    writer.write(assemble_response(response))
    flow.client_conn.state &= ~ConnectionState.CAN_WRITE
    flow.response = response
    return True


class UpstreamFailures:
    """The last word on a flow its upstream failed before the response head (``error``), and
    the deadline for Groq's response head (``UPSTREAM_TIMEOUT``; a replica's first token has
    the dispatcher's)."""

    def __init__(self, settings: Settings, dialects: DialectTable) -> None:
        self.settings = settings
        self.dialects = dialects
        self.deadlines: dict[str, asyncio.TimerHandle] = {}

    @property
    def config(self) -> Config:
        return cast(Config, self.settings.config)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and record_of(flow).get("route") == "groq":
            timeout = self.config.upstream_timeout
            with contextlib.suppress(RuntimeError):  # no loop: a hook outside mitmproxy
                self.deadlines[flow.id] = asyncio.get_running_loop().call_later(
                    timeout, self._head_deadline, flow, timeout)

    @staticmethod
    def _head_deadline(flow: http.HTTPFlow, timeout: float) -> None:
        """No response head from Groq in time: its connection is closed, and mitmproxy's
        error hook follows (a timer, not a task: one per Groq request)."""
        if flow.response is None and flow.live:
            note(flow, Failure("timeout", f"no response head within {timeout:g} s"))
            writer = client_writer(flow, server=True)
            if writer is not None:
                writer.close()

    def _cancel(self, flow: http.HTTPFlow) -> None:
        timer = self.deadlines.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        record = record_of(flow)
        if flow.response is not None or record.get("route") not in ("gpt-oss", "groq") \
                or client_disconnected(flow):
            return
        failure = recorded_failure(flow) or failure_of_flow(flow)
        note(flow, failure)
        timeout = self.config.upstream_timeout if self.settings.config else None
        error = client_error(failure, upstream_name(flow), timeout)
        dialect = self.dialects.flow_dialect(flow)
        response = error.to_response(None, dialect.error_body(error), dialect.error_status(error))
        if answer_in_place(flow, response):
            # The client's error, which names the first cause, is the flow's error too (the
            # flow log, mitmweb): after a timeout, mitmproxy saw only the connection it closed.
            record["error"] = error.message
            flow.error = Error(error.message, flow.error.timestamp if flow.error else None)

