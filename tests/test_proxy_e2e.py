"""End to end through the real mitmdump: both routes, local endpoints, errors, log, proxy mode."""

from __future__ import annotations

import gzip
import json
import os
import socket
import ssl
import stat

import httpx
import openai
import pytest

from fakes import GROQ_KEY, FakeGroq, FakeTransformers, Scripted
from proxy_process import ProxyProcess, run_to_exit

CLIENT_KEY = "sk-client-key-should-not-leak-123"
HI = [{"role": "user", "content": "hi"}]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gpt_oss_non_stream(client: openai.OpenAI, fake_transformers: FakeTransformers) -> None:
    reply = client.chat.completions.create(model="gpt-oss-20b", messages=HI, max_tokens=100,
                                           temperature=0.5)
    message = reply.choices[0].message
    assert message.content == "Hello!"
    assert message.model_extra["reasoning"] == "User says hi."
    assert message.model_extra["reasoning_content"] == "User says hi."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "gpt-oss-20b"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    sent = fake_transformers.requests[-1]
    body = json.loads(sent["raw"])
    assert set(body) == {"prompt", "stream", "max_tokens", "temperature"}
    assert body["prompt"].endswith("<|start|>user<|message|>hi<|end|><|start|>assistant")
    assert "authorization" not in {k.lower() for k in sent["headers"]}


def test_gpt_oss_stream(client: openai.OpenAI, fake_transformers: FakeTransformers) -> None:
    chunks = list(client.chat.completions.create(model="gpt-oss-20b", messages=HI, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning") or ""
                        for c in chunks if c.choices)
    assert (content, reasoning) == ("Hello!", "User says hi.")
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert json.loads(fake_transformers.requests[-1]["raw"])["stream"] is True


def test_groq_non_stream_injects_key_and_passes_headers(proxy: ProxyProcess,
                                                        fake_groq: FakeGroq) -> None:
    client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0,
                           default_headers={"x-api-key": CLIENT_KEY, "api-key": CLIENT_KEY})
    raw = client.chat.completions.with_raw_response.create(
        model="llama-3.3-70b-versatile", messages=HI)
    reply = raw.parse()
    assert reply.choices[0].message.content == "groq says: hi"
    assert raw.headers["x-ratelimit-remaining-tokens"] == "17990"
    assert raw.headers["x-request-id"] == "req_01fake"
    seen = {k.lower(): v for k, v in fake_groq.requests[-1]["headers"].items()}
    assert seen["authorization"] == f"Bearer {GROQ_KEY}"
    assert "x-api-key" not in seen and "api-key" not in seen
    assert CLIENT_KEY not in json.dumps(fake_groq.requests[-1]["headers"])


def test_groq_stream_and_prefix(client: openai.OpenAI, fake_groq: FakeGroq) -> None:
    stream = client.chat.completions.create(model="groq/openai/gpt-oss-20b", messages=HI,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "groq says: hi "
    assert chunks[-1].usage.total_tokens == 17
    assert json.loads(fake_groq.requests[-1]["raw"])["model"] == "openai/gpt-oss-20b"


@pytest.mark.parametrize("stream", [False, True])
def test_groq_reasoning_offered_under_both_names(client: openai.OpenAI, fake_groq: FakeGroq,
                                                 stream: bool) -> None:
    """Groq says `reasoning`; Cline reads only `reasoning_content`: the proxy offers both."""
    if stream:
        chunks = list(client.chat.completions.create(model="qwen/qwen3-32b", messages=HI,
                                                     stream=True))
        deltas = [c.choices[0].delta.model_extra for c in chunks if c.choices]
        reasoning = "".join(d.get("reasoning") or "" for d in deltas)
        reasoning_content = "".join(d.get("reasoning_content") or "" for d in deltas)
    else:
        message = client.chat.completions.create(model="qwen/qwen3-32b",
                                                 messages=HI).choices[0].message
        reasoning = message.model_extra["reasoning"]
        reasoning_content = message.model_extra["reasoning_content"]
    assert reasoning == reasoning_content == "Thinking it over."


def test_groq_rejected_fields_are_sanitised(client: openai.OpenAI, fake_groq: FakeGroq) -> None:
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "thought"},
                {"role": "user", "content": "again"}]
    reply = client.chat.completions.create(model="llama-3.3-70b-versatile", messages=messages,
                                           stop=["1", "2", "3", "4", "5"],
                                           extra_body={"reasoning": {"effort": "low"}})
    assert reply.choices[0].message.content == "groq says: again"
    sent = json.loads(fake_groq.requests[-1]["raw"])
    assert sent["messages"][1] == {"role": "assistant", "content": "a", "reasoning": "thought"}
    assert len(sent["stop"]) == 4


def test_groq_errors_pass_through(proxy: ProxyProcess, fake_groq: FakeGroq) -> None:
    fake_groq.next_status.append((429, {"retry-after": "7"}))
    response = httpx.post(f"{proxy.base_url}/chat/completions",
                          json={"model": "llama-3.3-70b-versatile", "messages": HI})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-limit-requests"] == "14400"
    assert response.json()["error"]["message"] == "scripted 429"


def test_no_groq_key_is_a_clear_error(start_proxy, fake_groq: FakeGroq) -> None:
    proxy = start_proxy()
    response = httpx.post(f"{proxy.base_url}/chat/completions",
                          json={"model": "llama-3.3-70b-versatile", "messages": HI})
    assert response.status_code == 503
    assert "GROQ_API_KEY is not configured" in response.json()["error"]["message"]
    assert fake_groq.requests == []
    models = httpx.get(f"{proxy.base_url}/models").json()["data"]
    assert [m["id"] for m in models] == ["gpt-oss-20b", "gpt-oss-120b"]
    assert httpx.get(f"{proxy.root_url}/health").json()["groq"]["key_configured"] is False


def test_health(proxy: ProxyProcess, start_proxy) -> None:
    health = httpx.get(f"{proxy.root_url}/health").json()
    assert health["status"] == "ok"
    assert health["transformers"]["reachable"] is True
    assert health["groq"]["key_configured"] is True
    down = start_proxy(options={"transformers_url": f"http://127.0.0.1:{closed_port()}"})
    health = httpx.get(f"{down.root_url}/health").json()
    assert health["transformers"]["reachable"] is False


def test_models_merge_local_and_groq(proxy: ProxyProcess, fake_groq: FakeGroq) -> None:
    client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["gpt-oss-20b", "gpt-oss-120b"]
    assert "llama-3.3-70b-versatile" in ids
    assert "groq/openai/gpt-oss-20b" in ids  # would otherwise route to the local server
    groq_calls = [r for r in fake_groq.requests if r["path"].endswith("/models")]
    assert all(r["headers"].get("authorization") == f"Bearer {GROQ_KEY}" for r in groq_calls)


def test_models_when_groq_fails(start_proxy, fake_groq: FakeGroq) -> None:
    fake_groq.models_status = 500
    proxy = start_proxy(env={"GROQ_API_KEY": GROQ_KEY})
    ids = [m["id"] for m in httpx.get(f"{proxy.base_url}/models").json()["data"]]
    assert ids == ["gpt-oss-20b", "gpt-oss-120b"]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("POST", "/v1/chat/completions", b"{oops", 400, None),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', 400,
     None),
    ("POST", "/v1/chat/completions", b'{"model": "gpt-oss-20b"}', 400, None),
    ("POST", "/v1/chat/completions", b'{"model": "gpt-oss-20b", "messages": "hi"}', 400, None),
    ("GET", "/v1/chat/completions", b"", 405, "method_not_allowed"),
    ("POST", "/v1/models", b"", 405, "method_not_allowed"),
    ("GET", "/v1/embeddings", b"", 404, "not_found"),
    ("POST", "/v1/completions", b"{}", 404, "not_found"),
])
def test_errors_are_openai_json(proxy: ProxyProcess, fake_transformers: FakeTransformers,
                                method: str, path: str, body: bytes, status: int,
                                code: str | None) -> None:
    response = httpx.request(method, proxy.root_url + path, content=body,
                             headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["code"] == code
    assert fake_transformers.requests == []


def test_body_over_limit_is_413(start_proxy, fake_transformers: FakeTransformers) -> None:
    proxy = start_proxy(options={"max_body_size": "2000"})
    big = [{"role": "user", "content": "x" * 5000}]
    response = httpx.post(f"{proxy.base_url}/chat/completions",
                          json={"model": "gpt-oss-20b", "messages": big})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert fake_transformers.requests == []


def test_compressed_bodies(start_proxy, fake_groq: FakeGroq) -> None:
    """A gzip body is decoded, bounded by MAX_BODY_SIZE once decoded (a small bomb is a 413),
    and sent on uncompressed."""
    proxy = start_proxy(options={"max_body_size": "4000"}, env={"GROQ_API_KEY": GROQ_KEY})
    body = {"model": "llama-3.3-70b-versatile", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    response = httpx.post(f"{proxy.base_url}/chat/completions", headers=headers,
                          content=gzip.compress(json.dumps(body).encode()))
    assert response.status_code == 200, response.text
    sent = fake_groq.requests[-1]
    assert json.loads(sent["raw"])["messages"] == body["messages"]
    assert "content-encoding" not in {k.lower() for k in sent["headers"]}
    bomb = gzip.compress(json.dumps({**body, "pad": "x" * 50_000}).encode())
    assert len(bomb) < 4000
    response = httpx.post(f"{proxy.base_url}/chat/completions", headers=headers, content=bomb)
    assert response.status_code == 413


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_model_server_is_503(start_proxy, stream: bool) -> None:
    proxy = start_proxy(options={"transformers_url": f"http://127.0.0.1:{closed_port()}"})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-oss-20b", messages=HI, stream=stream)
    assert info.value.status_code == 503
    assert "unreachable" in info.value.message


def test_slow_model_server_is_504(start_proxy, fake_transformers: FakeTransformers) -> None:
    proxy = start_proxy(options={"upstream_timeout": "1"})
    fake_transformers.script(Scripted(fake_transformers.default.text, delay_headers=2.5))
    response = httpx.post(f"{proxy.base_url}/chat/completions", timeout=10,
                          json={"model": "gpt-oss-20b", "messages": HI})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


def test_backend_rejection_is_explained(client: openai.OpenAI,
                                        fake_transformers: FakeTransformers) -> None:
    fake_transformers.script(Scripted("", status=422))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-oss-20b", messages=HI)
    assert info.value.status_code == 502
    assert "model server answered 422" in info.value.message


def test_flow_log_records_and_redaction(proxy: ProxyProcess, client: openai.OpenAI,
                                        fake_groq: FakeGroq) -> None:
    before = proxy.log_mark()
    client.chat.completions.create(model="gpt-oss-20b", messages=HI)
    client.chat.completions.create(model="llama-3.3-70b-versatile",
                                   messages=[{"role": "user", "content": f"my key {GROQ_KEY}"}])
    list(client.chat.completions.create(model="llama-3.3-70b-versatile", messages=HI,
                                        stream=True))
    records = proxy.log_records(wait_for=before + 3)[before:]
    harmony, groq, groq_stream = records[-3:]
    assert harmony["route"] == "gpt-oss" and harmony["status"] == 200
    assert harmony["prompt"].endswith("<|start|>assistant")
    assert harmony["upstream_response"]["text"].startswith("<|channel|>analysis")
    assert harmony["client_response"]["body"]["choices"][0]["message"]["content"] == "Hello!"
    assert harmony["usage"]["completion_tokens"] > 0
    assert harmony["ttfb_ms"] >= 0 and harmony["total_ms"] >= harmony["ttfb_ms"]
    assert groq["route"] == "groq" and groq["model"] == "llama-3.3-70b-versatile"
    assert groq["upstream_request"]["url"].endswith("/openai/v1/chat/completions")
    assert groq["upstream_response"]["headers"]["x-ratelimit-remaining-tokens"] == "17990"
    assert groq_stream["client_response"]["message"]["content"] == "groq says: hi "
    assert groq_stream["client_response"]["stream"] is True
    text = proxy.log_path.read_text()
    assert GROQ_KEY not in text and CLIENT_KEY not in text
    assert "***redacted***" in text
    assert stat.S_IMODE(os.stat(proxy.log_path).st_mode) == 0o600


def test_regular_proxy_mode(start_proxy, fake_transformers: FakeTransformers,
                            fake_groq: FakeGroq) -> None:
    proxy = start_proxy(mode="regular@127.0.0.1:0", env={"GROQ_API_KEY": GROQ_KEY})
    proxy_url = f"http://127.0.0.1:{proxy.port}"
    with httpx.Client(proxy=proxy_url, timeout=10) as http_client:
        client = openai.OpenAI(base_url="http://api.openai.invalid/v1", api_key=CLIENT_KEY,
                               http_client=http_client, max_retries=0)
        reply = client.chat.completions.create(model="gpt-oss-20b", messages=HI)
        assert reply.choices[0].message.content == "Hello!"
        reply = client.chat.completions.create(model="llama-3.3-70b-versatile", messages=HI)
        assert reply.choices[0].message.content == "groq says: hi"
        assert client.responses.create(model="gpt-oss-20b", input="hi").output_text == "Hello!"
        # Anything else passes through untouched, credentials included.
        passthrough = http_client.get(f"{fake_groq.base_url}/models",
                                      headers={"authorization": f"Bearer {GROQ_KEY}"})
        assert passthrough.status_code == 200 and passthrough.json()["data"]
        assert http_client.get(f"{fake_groq.base_url}/models").status_code == 401
    ca = proxy.tmp / "confdir" / "mitmproxy-ca-cert.pem"
    trust = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(proxy=proxy_url, verify=trust, timeout=10) as https_client:
        client = openai.OpenAI(base_url="https://api.openai.invalid/v1", api_key=CLIENT_KEY,
                               http_client=https_client, max_retries=0)
        reply = client.chat.completions.create(model="gpt-oss-20b", messages=HI)
        assert reply.choices[0].message.content == "Hello!"


def test_bad_setting_fails_startup(tmp_path) -> None:
    result = run_to_exit(tmp_path, ["--mode", "reverse:http://127.0.0.1:9@127.0.0.1:0",
                                    "--set", "reasoning_field=thoughts"])
    assert result.returncode == 1
    assert "reasoning_field='thoughts': choose one of" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_hot_reload_keeps_one_addon_and_one_log_record(start_proxy,
                                                       fake_transformers: FakeTransformers,
                                                       fake_groq: FakeGroq, tmp_path) -> None:
    """mitmproxy re-runs the script when it changes: no doubled handlers, hooks or records."""
    import shutil
    import time

    from proxy_process import ADDON

    script = tmp_path / "addons" / "harmony.py"
    shutil.copytree(ADDON.parent, script.parent, ignore=shutil.ignore_patterns("__pycache__"))
    proxy = start_proxy(script=script, env={"GROQ_API_KEY": GROQ_KEY})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0)
    assert client.chat.completions.create(model="gpt-oss-20b", messages=HI).choices
    script.write_text(script.read_text() + "\n# touched\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(
            "Loading script" in line for line in proxy.output) < 2:
        time.sleep(0.1)
    assert sum("Loading script" in line for line in proxy.output) == 2, "".join(proxy.output)
    time.sleep(0.5)
    before = proxy.log_mark()
    reply = client.chat.completions.create(model="gpt-oss-20b", messages=HI)
    assert reply.choices[0].message.content == "Hello!"
    reply = client.chat.completions.create(model="llama-3.3-70b-versatile", messages=HI)
    assert reply.choices[0].message.content == "groq says: hi"
    assert fake_groq.requests[-1]["headers"]["authorization"] == f"Bearer {GROQ_KEY}"
    time.sleep(0.5)
    records = proxy.log_records(wait_for=before + 2)
    assert len(records) == before + 2, "one record per flow after a reload"
    assert "Traceback" not in "".join(proxy.output)
