"""upstream_failure.py without a proxy: each cause read from what mitmproxy reports and from
the exceptions real httpx calls raise against loopback servers failing that way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes_failing import UNRESOLVABLE_URL, FailingServer
from mitmproxy import flow as mflow
from mitmproxy.test import tflow

from harmony_groq.records import record_of
from harmony_groq.upstream_failure import (
    Failure,
    client_error,
    failure_of_exception,
    failure_of_flow,
    note,
    note_retry,
    retry_allowed,
)


@pytest.mark.parametrize(("message", "connected", "cause"), [
    ("Certificate verify failed: self-signed certificate", False, "tls"),
    ("The remote server does not speak TLS.", False, "tls"),
    ("tlsv1 alert unknown ca", False, "tls"),
    ("[Errno -2] Name or service not known", False, "dns"),
    ("[Errno -3] Temporary failure in name resolution", False, "dns"),
    ("[Errno 111] Connect call failed ('127.0.0.1', 9)", False, "refused"),
    ("server closed connection", True, "closed"),
    ("Cannot parse HTTP response: Invalid header line: b'\\xff'", True, "bad_headers"),
    ("unexpected server response: b'garbage'", True, "bad_headers"),
    ("something new", True, "other"),
])
def test_cause_of_mitmproxys_error(message: str, connected: bool, cause: str) -> None:
    flow = tflow.tflow(err=True)
    flow.error = mflow.Error(message)
    flow.server_conn.timestamp_tcp_setup = 1.0 if connected else None
    assert failure_of_flow(flow) == Failure(cause, message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def failing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    mode = request.param
    if mode == "dns":
        yield UNRESOLVABLE_URL
    elif mode == "refused":
        yield f"http://127.0.0.1:{_free_port()}"
    else:
        server = FailingServer(mode, tmp_path)
        yield server.url
        server.close()


@pytest.mark.parametrize(("failing", "causes"), [
    ("close", {"closed"}), ("reset", {"reset", "closed"}), ("garbage", {"bad_headers"}),
    ("silent", {"timeout"}), ("tls", {"tls"}), ("dns", {"dns"}), ("refused", {"refused"}),
], indirect=["failing"])
def test_cause_of_an_httpx_failure(failing: str, causes: set[str]) -> None:
    async def post() -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.post(failing + "/v1/completions", json={"prompt": "hi"}, timeout=0.5)

    with pytest.raises(httpx.HTTPError) as info:
        asyncio.run(post())
    assert failure_of_exception(info.value).cause in causes, info.value


@pytest.mark.parametrize(("cause", "status", "code"), [
    ("refused", 503, "upstream_unavailable"), ("dns", 503, "upstream_unavailable"),
    ("timeout", 504, "upstream_timeout"), ("tls", 502, "upstream_error"),
    ("closed", 502, "upstream_error"), ("reset", 502, "upstream_error"),
    ("bad_headers", 502, "upstream_error"), ("other", 502, "upstream_error"),
])
def test_client_error_per_cause(cause: str, status: int, code: str) -> None:
    error = client_error(Failure(cause, "what was seen"), "Groq", timeout=7)
    assert (error.status, error.code) == (status, code)
    assert error.message.startswith("Groq ") and "what was seen" in error.message
    if cause == "timeout":
        assert "within 7 s (UPSTREAM_TIMEOUT)" in error.message


def test_one_retry_and_the_first_cause_recorded() -> None:
    flow = tflow.tflow()
    closed, timeout = Failure("closed", "server closed connection"), Failure("timeout", "late")
    assert retry_allowed(flow, closed) and not retry_allowed(flow, timeout)
    note(flow, closed)
    note_retry(flow, closed, "failed", "closed again")
    note(flow, timeout)  # a later failure never replaces the first
    record = record_of(flow)
    assert record["upstream_failure"] == {"cause": "closed", "detail": "server closed connection"}
    assert record["upstream_retry"] == {"cause": "closed", "outcome": "failed",
                                        "detail": "closed again"}
    assert not retry_allowed(flow, closed)
