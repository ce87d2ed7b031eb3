"""Who gets in, where traffic may go, and what never leaks (issue: reliability and security)."""

from __future__ import annotations

import json
import os
import stat

import httpx
import openai
import pytest

from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from proxy_process import run_to_exit

PROXY_KEY = "proxy-key-7d1e0c9a4b2f"
CLIENT_KEY = "sk-client-secret-abcdefghijklmnop"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("mode", "message"), [
    ("reverse:http://127.0.0.1:9@0.0.0.0:0", "refusing to listen on 0.0.0.0 without PROXY_API_KEY"),
    ("reverse:http://127.0.0.1:9@0", "refusing to listen on all interfaces without PROXY_API_KEY"),
    ("regular@0.0.0.0:0", "refusing to run an open regular proxy on 0.0.0.0"),
])
def test_exposed_listener_without_key_refuses_to_start(tmp_path, mode: str, message: str) -> None:
    result = run_to_exit(tmp_path, ["--mode", mode], env={"GROQ_API_KEY": GROQ_KEY})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert message in output
    assert "Traceback" not in output and GROQ_KEY not in output


def test_proxy_key_required(start_proxy, fake_groq: FakeGroq,
                            fake_transformers: FakeTransformers) -> None:
    proxy = start_proxy(env={"GROQ_API_KEY": GROQ_KEY, "PROXY_API_KEY": PROXY_KEY})
    assert httpx.get(f"{proxy.root_url}/health").status_code == 200
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": PROXY_KEY[:-1]}):
        for model in ("gpt-oss-20b", "llama-3.3-70b-versatile"):
            response = httpx.post(f"{proxy.base_url}/chat/completions", headers=headers,
                                  json={"model": model, "messages": HI})
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{proxy.base_url}/models", headers=headers).status_code == 401
    # Nothing a refused client sent went on; the proxy fetches Groq's model list on its own
    # (at start-up, with the server key) for the models' output limits.
    assert [r["path"] for r in fake_groq.requests] in ([], ["/openai/v1/models"])
    assert fake_transformers.requests == []
    for headers in ({"authorization": f"Bearer {PROXY_KEY}"}, {"x-api-key": PROXY_KEY},
                    {"api-key": PROXY_KEY}):
        response = httpx.post(f"{proxy.base_url}/chat/completions", headers=headers,
                              json={"model": "llama-3.3-70b-versatile", "messages": HI})
        assert response.status_code == 200
    client = openai.OpenAI(base_url=proxy.base_url, api_key=PROXY_KEY, max_retries=0)
    assert client.chat.completions.create(model="gpt-oss-20b", messages=HI).choices
    # The proxy's own key is never forwarded either.
    assert PROXY_KEY not in json.dumps([r["headers"] for r in fake_groq.requests])
    proxy.log_mark()  # every flow above is in the log
    assert PROXY_KEY not in proxy.log_path.read_text()


def test_requests_cannot_steer_the_proxy(proxy, fake_groq: FakeGroq,
                                         fake_transformers: FakeTransformers) -> None:
    """Host headers and absolute-form URLs never choose the upstream."""
    with httpx.Client(timeout=10) as client:
        for model, fake in (("gpt-oss-20b", fake_transformers), ("llama-3.3-70b-versatile",
                                                                fake_groq)):
            before = len(fake.requests)
            response = client.post(f"{proxy.base_url}/chat/completions",
                                   headers={"host": "evil.example:1", "x-forwarded-host":
                                            "evil.example"},
                                   json={"model": model, "messages": HI})
            assert response.status_code == 200
            assert len(fake.requests) == before + 1
    # An absolute-form request line to another host is answered, not forwarded there.
    import socket

    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        body = json.dumps({"model": "gpt-oss-20b", "messages": HI}).encode()
        sock.sendall(b"POST http://169.254.169.254/v1/chat/completions HTTP/1.1\r\n"
                     b"Host: 169.254.169.254\r\ncontent-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n"
                     b"connection: close\r\n\r\n" + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and b"Hello!" in reply
    assert fake_transformers.requests[-1]["path"] == "/v1/completions"


def test_groq_key_goes_only_to_groq(client: openai.OpenAI, proxy, fake_groq: FakeGroq,
                                    fake_transformers: FakeTransformers) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-oss-20b", messages=HI)
    assert GROQ_KEY not in json.dumps(dict(raw.headers)) + raw.text
    raw = client.chat.completions.with_raw_response.create(model="llama-3.3-70b-versatile",
                                                           messages=HI)
    assert GROQ_KEY not in json.dumps(dict(raw.headers)) + raw.text
    for request in fake_transformers.requests:
        assert GROQ_KEY not in json.dumps(request["headers"]) + request["raw"].decode()
        assert CLIENT_KEY not in json.dumps(request["headers"])
    assert all(r["headers"].get("authorization") == f"Bearer {GROQ_KEY}"
               for r in fake_groq.requests)


def test_nothing_leaks_into_logs_or_errors(start_proxy, fake_groq: FakeGroq,
                                           fake_transformers: FakeTransformers) -> None:
    """Keys in headers, bodies, errors and rotated files: never written in clear."""
    proxy = start_proxy(options={"log_max_bytes": "4000", "log_backups": "3"},
                        env={"GROQ_API_KEY": GROQ_KEY, "PROXY_API_KEY": PROXY_KEY})
    headers = {"authorization": f"Bearer {PROXY_KEY}", "x-api-key": PROXY_KEY,
               "cookie": f"session={CLIENT_KEY}"}
    with httpx.Client(timeout=10, headers=headers) as client:
        for n in range(6):
            client.post(f"{proxy.base_url}/chat/completions", json={
                "model": "gpt-oss-20b" if n % 2 else "llama-3.3-70b-versatile",
                "messages": [{"role": "user", "content": f"{GROQ_KEY} {CLIENT_KEY} {n}"}]})
        fake_groq.next_status.append((401, {}))
        error = client.post(f"{proxy.base_url}/chat/completions",
                            json={"model": "llama-3.3-70b-versatile", "messages": HI})
        assert error.status_code == 401
        bad = client.post(f"{proxy.base_url}/chat/completions", content=b"{" + CLIENT_KEY.encode())
        assert bad.status_code == 400 and CLIENT_KEY not in bad.text
        wrong = httpx.post(f"{proxy.base_url}/chat/completions", headers={
            "authorization": f"Bearer {CLIENT_KEY}"}, json={"model": "x", "messages": HI})
        assert wrong.status_code == 401 and CLIENT_KEY not in wrong.text
    proxy.log_mark()  # every flow above is written
    files = sorted(proxy.log_path.parent.glob(proxy.log_path.name + "*"))
    assert len(files) > 1, "the log should have rotated"
    for path in files:
        text = path.read_text()
        for secret in (GROQ_KEY, PROXY_KEY, CLIENT_KEY):
            assert secret not in text, f"{secret} leaked into {path.name}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    output = "".join(proxy.output)
    for secret in (GROQ_KEY, PROXY_KEY, CLIENT_KEY):
        assert secret not in output
