"""Keys per person, end to end: keys made with ``./run.sh keys`` as a user types it, checked
by real mitmdump proxies (one with ``KEYS_FILE``, two sharing a real redis-server), driven by
the real openai and anthropic SDKs, whose typed errors prove each API's shape.

A key works on both proxies at once, a revoked one fails on both within a second; an rpm
limit of N lets exactly N requests through across both; tpm settles to the tokens replies
used; a key's Groq tokens per day run out; the flow log, /metrics and Redis name the key and
never hold it (Redis only its hash); ``./run.sh usage`` reports per key.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import redis

from fakes import DEFAULT_ANSWER, GROQ_KEY, FakeGroq, FakeTransformers, Scripted
from proxy_process import ProxyProcess
from redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
GROQ_MODEL = "llama-3.3-70b-versatile"
Start = Callable[..., ProxyProcess]


def run(tmp: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``./run.sh ARGS`` in ``tmp`` with ``env``, as a user types it."""
    full = {k: v for k, v in os.environ.items() if k not in ("STATE_STORE", "KEYS_FILE")}
    return subprocess.run([str(ROOT / "run.sh"), *args], cwd=tmp, env={**full, **env},
                          capture_output=True, text=True, timeout=120)


def new_key(tmp: Path, env: dict[str, str], name: str, *options: str) -> str:
    done = run(tmp, env, "keys", "add", name, *options)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-hgg-") and len(key) > 40
    return key


def chat(proxy: ProxyProcess, key: str, model: str = "gpt-oss-20b") -> str:
    client = openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=20)
    reply = client.chat.completions.create(model=model,
                                           messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content or ""


def status(proxy: ProxyProcess, key: str, model: str = "gpt-oss-20b") -> int:
    return httpx.post(f"{proxy.base_url}/chat/completions", timeout=20,
                      headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
                      ).status_code


def known(proxy: ProxyProcess, key: str) -> bool:
    """Whether the proxy has read ``key`` from the book yet (it polls every 0.5 s): a model
    list costs no tokens, so the limits under test are not touched."""
    return httpx.get(f"{proxy.base_url}/models", timeout=20,
                     headers={"authorization": f"Bearer {key}"}).status_code != 401


def until(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check`` holds (bounded); raises past ``seconds``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def test_file_keys_every_api_shape(start_proxy: Start, tmp_path: Path,
                                   fake_transformers: FakeTransformers,
                                   fake_groq: FakeGroq) -> None:
    keys_file = tmp_path / "keys.json"
    env = {"KEYS_FILE": str(keys_file)}
    proxy = start_proxy(env={**env, "GROQ_API_KEY": GROQ_KEY,
                             "PROXY_API_KEY": "sk-admin-0123456789"})
    assert status(proxy, "sk-admin-0123456789") == 200  # no keys yet: as before
    assert status(proxy, "sk-wrong-0123456789") == 401
    alice = new_key(tmp_path, env, "alice", "--models", "gpt-oss*", "--rpm", "4")
    new_key(tmp_path, env, "old", "--expires", "2020-01-01")
    until(lambda: status(proxy, alice) == 200, 2)  # the proxy polls the file
    assert status(proxy, "sk-admin-0123456789") == 200  # PROXY_API_KEY still works, unlimited
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    assert alice not in keys_file.read_text()

    oai = openai.OpenAI(base_url=proxy.base_url, api_key=alice, max_retries=0, timeout=20)
    ant = anthropic.Anthropic(base_url=proxy.root_url, api_key=alice, max_retries=0,
                              timeout=20)
    assert ant.messages.create(model="gpt-oss-20b", max_tokens=64, messages=[
        {"role": "user", "content": "hi"}]).content
    assert oai.responses.create(model="gpt-oss-20b", input="hi").output_text
    assert chat(proxy, alice)  # alice's fourth request this minute: the last her rpm allows
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="gpt-oss-20b", messages=[{"role": "user",
                                                                    "content": "hi"}])
    headers = limited.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "4"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < int(headers["retry-after"]) <= 60
    assert limited.value.body["code"] == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as limited_ant:
        ant.messages.create(model="gpt-oss-20b", max_tokens=64,
                            messages=[{"role": "user", "content": "hi"}])
    ant_headers = limited_ant.value.response.headers
    assert ant_headers["anthropic-ratelimit-requests-limit"] == "4"
    assert ant_headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert limited_ant.value.body["error"]["type"] == "rate_limit_error"

    # a model the key may not use: the permission error of each API
    bob = new_key(tmp_path, env, "bob", "--models", "gpt-oss-120b")
    until(lambda: status(proxy, bob, "gpt-oss-120b") == 200, 2)
    bob_oai = openai.OpenAI(base_url=proxy.base_url, api_key=bob, max_retries=0, timeout=20)
    bob_ant = anthropic.Anthropic(base_url=proxy.root_url, api_key=bob, max_retries=0,
                                  timeout=20)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        bob_oai.chat.completions.create(model=GROQ_MODEL,
                                        messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["code"] == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        bob_oai.responses.create(model="gpt-oss-20b", input="hi")
    with pytest.raises(anthropic.PermissionDeniedError) as denied_ant:
        bob_ant.messages.create(model="gpt-oss-20b", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}])
    assert denied_ant.value.body["error"]["type"] == "permission_error"

    # unknown, expired, missing: 401 in each API's shape
    for key in ("sk-hgg-unknown-key-0000000000000000000000000000", "", "old"):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=proxy.base_url, api_key=key or "x", max_retries=0
                          ).chat.completions.create(model="gpt-oss-20b",
                                                    messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            anthropic.Anthropic(base_url=proxy.root_url, api_key=key or "x", max_retries=0
                                ).messages.create(model="gpt-oss-20b", max_tokens=8,
                                                  messages=[{"role": "user", "content": "x"}])
        assert unknown.value.body["error"]["type"] == "authentication_error"
    assert httpx.get(f"{proxy.base_url}/models").status_code == 401
    assert httpx.get(f"{proxy.root_url}/health").status_code == 200  # open, as before

    # revoked: 401 within a second; the others' keys go on working
    assert run(tmp_path, env, "keys", "revoke", "bob").returncode == 0
    assert until(lambda: status(proxy, bob, "gpt-oss-120b") == 401, 1.5) < 1.5
    listed = run(tmp_path, env, "keys", "list").stdout
    assert "alice" in listed and "bob" not in listed and alice not in listed
    # rotate: the old key stops, the new one works
    rotated = run(tmp_path, env, "keys", "rotate", "old").stdout.strip().splitlines()[-1]
    assert rotated.startswith("sk-hgg-")

    # the log and /metrics name the key, never hold it
    records = proxy.log_records(wait_for=proxy.log_mark())
    assert {"alice", "bob", "PROXY_API_KEY"} <= {r.get("key") for r in records}
    log_text = proxy.log_path.read_text()
    metrics = httpx.get(f"{proxy.root_url}/metrics",
                        headers={"authorization": "Bearer sk-admin-0123456789"}).text
    for secret in (alice, bob, rotated):
        assert secret not in log_text and secret not in metrics
    assert 'harmony_groq_key_requests_total{key="alice",route="gpt-oss"} 4.0' in metrics
    assert 'harmony_groq_key_tokens_total{key="alice",kind="completion",route="gpt-oss"}' \
        in metrics

    report = run(tmp_path, {}, "usage", "--log", str(proxy.log_path), "--by", "key", "--json")
    assert report.returncode == 0, report.stderr
    rows = {row["key"]: row for row in json.loads(report.stdout)}
    assert rows["alice"]["requests"] == 6 and rows["alice"]["errors"] == 2
    assert rows["alice"]["completion"] > 0
    csv_report = run(tmp_path, {}, "usage", "--log", str(proxy.log_path), "--by", "route",
                     "--csv", "--since", "1h")
    assert csv_report.stdout.splitlines()[0] == "route,requests,errors,prompt,cached,completion"


def start_pair(start_proxy: Start, redis_server: RedisServer) -> list[ProxyProcess]:
    env = {"STATE_STORE": redis_server.url, "GROQ_API_KEY": GROQ_KEY}
    return [start_proxy(options={"state_store_timeout_ms": "1000"}, env=env)
            for _ in range(2)]


def test_two_proxies_share_keys_and_limits(start_proxy: Start, redis_server: RedisServer,
                                           tmp_path: Path, fake_transformers: FakeTransformers,
                                           fake_groq: FakeGroq) -> None:
    proxies = start_pair(start_proxy, redis_server)
    env = {"STATE_STORE": redis_server.url}
    assert status(proxies[0], "anything") == 200  # no keys yet: open, as before
    carol = new_key(tmp_path, env, "carol", "--rpm", "5")
    for proxy in proxies:  # both see the book within a second: from then on a key is needed
        until(lambda p=proxy: status(p, "sk-hgg-nobody") == 401, 1.5)
    assert [status(p, carol) for p in proxies] == [200, 200]  # works on both
    # carol spent 2 of her 5; ten more, alternating: exactly 3 pass in the window
    codes = [status(proxies[n % 2], carol) for n in range(10)]
    assert codes.count(200) == 3 and codes.count(429) == 7, codes

    # tpm: the estimate (the body's bytes / 4, ~25) settled to what the reply used (~83 with
    # the harmony system prompt): then even a small request is over the 80, on either proxy
    store = redis.Redis.from_url(redis_server.url)
    dave = new_key(tmp_path, env, "dave", "--tpm", "80")
    until(lambda: status(proxies[0], dave) == 200, 2)
    used = next(r["usage"]["total_tokens"] for r in reversed(proxies[0].log_records(
        wait_for=proxies[0].log_mark())) if r.get("key") == "dave")
    buckets = f"hgg:v1:limit:{hashlib.sha256(dave.encode()).hexdigest()}:tpm"
    until(lambda: sum(int(v) for v in store.hvals(buckets)) == used, 1)
    assert used > 80
    until(lambda: known(proxies[1], dave), 2)  # proxy 0 may have read the book first
    limited = httpx.post(f"{proxies[1].base_url}/chat/completions", timeout=20,
                         headers={"authorization": f"Bearer {dave}"},
                         json={"model": "gpt-oss-20b", "messages": [{"role": "user",
                                                                     "content": "x"}]})
    assert limited.status_code == 429, limited.text
    assert limited.headers["x-ratelimit-limit-tokens"] == "80"
    assert limited.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "tokens per minute" in limited.json()["error"]["message"]

    # in flight: one at a time across both proxies; the slot frees when the stream ends
    fay = new_key(tmp_path, env, "fay", "--max-inflight", "1")
    until(lambda: status(proxies[0], fay) == 200, 2)
    until(lambda: known(proxies[1], fay), 2)
    fake_transformers.script(Scripted(DEFAULT_ANSWER, delay_headers=1.5))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(status, proxies[0], fay)
        leases = f"hgg:v1:limit:{hashlib.sha256(fay.encode()).hexdigest()}:inflight"
        until(lambda: store.zcard(leases) == 1, 1)  # proxy 0 holds fay's one slot
        assert status(proxies[1], fay) == 429
        assert slow.result() == 200
    until(lambda: status(proxies[1], fay) == 200, 1)

    # a proxy killed mid-request: what it counted stays counted
    gus = new_key(tmp_path, env, "gus", "--rpm", "2")
    until(lambda: status(proxies[1], "sk-hgg-nobody") == 401 and status(proxies[1], gus) == 200,
          2)
    third = start_pair(start_proxy, redis_server)[0]
    fake_transformers.script(Scripted(DEFAULT_ANSWER, delay_headers=5))
    with ThreadPoolExecutor(1) as pool:
        sent = len(fake_transformers.prompts)
        doomed = pool.submit(status, third, gus)
        # counted, and at the model server (which holds it 5 s): then the proxy dies
        until(lambda: len(fake_transformers.prompts) > sent, 3)
        assert store.zcard(f"hgg:v1:limit:{hashlib.sha256(gus.encode()).hexdigest()}:rpm") == 2
        third.process.kill()
        with pytest.raises(httpx.HTTPError):
            doomed.result()  # the client lost its proxy
    assert status(proxies[1], gus) == 429

    # Groq tokens per day: the first Groq reply (17 tokens) spends the 10; gpt-oss goes on
    erin = new_key(tmp_path, env, "erin", "--groq-tokens-per-day", "10")
    until(lambda: status(proxies[1], erin, GROQ_MODEL) == 200, 2)
    until(lambda: known(proxies[0], erin), 2)
    # the reply's tokens are settled once it was sent: refused from then on, on either proxy
    until(lambda: status(proxies[0], erin, GROQ_MODEL) == 429, 2)
    assert status(proxies[0], erin) == 200

    # revoked: both proxies refuse it within a second
    assert run(tmp_path, env, "keys", "revoke", "carol").returncode == 0
    start = time.monotonic()
    for proxy in proxies:
        until(lambda p=proxy: status(p, carol) == 401, 1.0)
    assert time.monotonic() - start < 1.5

    # Redis holds hashes and names, never a key
    dump = b"".join(name + b"".join(
        [store.dump(name) or b""]) for name in store.scan_iter(count=1000))
    for secret in (carol, dave, erin, fay, gus):
        assert secret.encode() not in dump
    assert hashlib.sha256(dave.encode()).hexdigest().encode() in dump
    for proxy in proxies:
        assert all(secret not in proxy.log_path.read_text() for secret in (carol, dave, erin))


def test_fair_share_decides_who_spills(start_proxy: Start, tmp_path: Path,
                                       fake_transformers: FakeTransformers,
                                       fake_groq: FakeGroq) -> None:
    """SPILLOVER=saturated with one slot: the key holding it spills, a light key stays local."""
    env = {"KEYS_FILE": str(tmp_path / "keys.json")}
    proxy = start_proxy(options={"spillover": "saturated", "spillover_max_inflight": "1"},
                        env={**env, "GROQ_API_KEY": GROQ_KEY})
    heavy, light = new_key(tmp_path, env, "heavy"), new_key(tmp_path, env, "light")
    # the proxy may read the book between the two keys: wait for both
    until(lambda: known(proxy, heavy) and known(proxy, light), 2)

    def served_by(key: str) -> str:
        reply = httpx.post(f"{proxy.base_url}/chat/completions", timeout=20,
                           headers={"authorization": f"Bearer {key}"},
                           json={"model": "gpt-oss-20b", "messages": [
                               {"role": "user", "content": f"hi {time.monotonic_ns()}"}]})
        assert reply.status_code == 200, reply.text
        return reply.headers["x-harmony-groq-served-by"]

    sent = len(fake_transformers.prompts)
    fake_transformers.script(Scripted(DEFAULT_ANSWER, delay_headers=3))
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(served_by, heavy)  # the one local slot, for 3 s
        until(lambda: len(fake_transformers.prompts) > sent, 2)
        assert served_by(heavy) == "groq"  # full, and heavy holds it: spills
        assert served_by(light) == "local"  # below its share: goes first, locally
        assert served_by(heavy) == "groq"
        assert held.result() == "local"
    records = proxy.log_records(wait_for=proxy.log_mark())
    assert [r["key"] for r in records if r.get("served_by") == "groq"] == ["heavy", "heavy"]
