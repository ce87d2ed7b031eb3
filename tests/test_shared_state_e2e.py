"""Several proxies, one conversation: two real mitmdump processes sharing a real Redis
(``STATE_STORE``, its password from the environment) behind a round-robin split.

Every chained Responses turn (gpt-oss and Groq, whole and streamed) and every reasoning
carry-over lands on the other proxy than the one that stored it, and on two fresh proxies after
both restarted; the real OpenAI Agents SDK chains across both. A store killed mid-run costs no
500 and no hang: chains get the clear 400, /health and /metrics say so, and both proxies use the
store again once it is back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from proxy_process import ProxyProcess
from redis_server import PASSWORD, QUOTED_PASSWORD, RedisServer
from responses_grammar import check_grammar, parse_sse
from test_carry_over_e2e import STEPS, ask

ANSWERS = ("One.", "Two.", "Three.", "Four.")
GROQ_MODEL = "llama-3.3-70b-versatile"
DRIVER = Path(__file__).parent / "sdk_drivers" / "agents_chain.py"
Start = Callable[..., ProxyProcess]


def start_pair(start_proxy: Start, redis: RedisServer) -> list[ProxyProcess]:
    """Two proxies on one store; the URL (with its password) only in the environment. The
    store may take a second on this busy test machine (a dead one fails at once: refused)."""
    env = {"STATE_STORE": redis.url, "GROQ_API_KEY": GROQ_KEY}
    return [start_proxy(options={"state_store_timeout_ms": "1000"}, env=env)
            for _ in range(2)]


def respond(proxy: ProxyProcess, body: dict[str, Any], stream: bool) -> httpx.Response:
    return httpx.post(f"{proxy.base_url}/responses", json={**body, "stream": stream},
                      headers={"authorization": "Bearer sk-client"}, timeout=20)


def turn(proxy: ProxyProcess, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """One Responses turn: the final response object (a stream checked against the grammar)."""
    response = respond(proxy, body, stream)
    assert response.status_code == 200, response.text
    return check_grammar(parse_sse(response.content)) if stream else response.json()


def text_of(response: dict[str, Any]) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"])


def chain(proxies: list[ProxyProcess], model: str, turns: range, stream: bool,
          previous: str | None = None) -> str:
    """Turns ``Say n`` for n in ``turns``, turn n on proxy n mod 2; the last response id."""
    for n in turns:
        body: dict[str, Any] = {"model": model, "input": f"Say {n}"}
        if previous is not None:
            body["previous_response_id"] = previous
        response = turn(proxies[n % 2], body, stream)
        assert response["previous_response_id"] == previous
        previous = response["id"]
    assert previous is not None
    return previous


def harmony_answers(fake: FakeTransformers, turns: range = range(4)) -> None:
    fake.script(*(f"<|channel|>analysis<|message|>Count {n}.<|end|><|start|>assistant"
                  f"<|channel|>final<|message|>{ANSWERS[n]}<|return|>" for n in turns))


def groq_messages(fake: FakeGroq) -> list[dict[str, Any]]:
    request = [r for r in fake.requests if r["path"].endswith("/chat/completions")][-1]
    return json.loads(request["raw"])["messages"]


def loop_across(clients: list[openai.OpenAI], stream: bool, first: int = 0) -> str:
    """Continue's loop (the assistant turn sent back without its reasoning), each turn through
    the next client in turn."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Lyon?"}]
    for n in range(len(STEPS)):
        reply = ask(clients[(first + n) % len(clients)], messages, stream)
        if not reply["tool_calls"]:
            return reply["content"]
        messages.append({"role": "assistant", "content": reply["content"],
                         "tool_calls": reply["tool_calls"]})
        for call in reply["tool_calls"]:
            city = json.loads(call["function"]["arguments"])["city"]
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": f"sunny in {city}"})
    raise AssertionError("the loop never got an answer")


def clients_of(proxies: list[ProxyProcess]) -> list[openai.OpenAI]:
    return [openai.OpenAI(base_url=p.base_url, api_key="sk-client", max_retries=0, timeout=20)
            for p in proxies]


def restored(proxy: ProxyProcess) -> list[int]:
    """Per gpt-oss flow so far, the messages restored."""
    records = [r for r in proxy.log_records(wait_for=proxy.log_mark())
               if r.get("route") == "gpt-oss"]
    return [len(r.get("restored_reasoning", [])) for r in records]


def assert_carried_over(fake: FakeTransformers) -> None:
    prompts = fake.prompts[-3:]
    assert "Paris first." in prompts[1]
    assert "Paris first." in prompts[2] and "Paris is sunny; now Lyon." in prompts[2]


# -- chains and carry-over across two proxies -----------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_gpt_oss_chain_alternates_between_two_proxies(
        start_proxy: Start, redis_server: RedisServer, fake_transformers: FakeTransformers,
        stream: bool) -> None:
    proxies = start_pair(start_proxy, redis_server)
    harmony_answers(fake_transformers)
    chain(proxies, "gpt-oss-20b", range(4), stream)
    last = fake_transformers.prompts[-1]
    for n in range(3):
        assert f"<|start|>user<|message|>Say {n}<|end|>" in last
        assert f"<|channel|>final<|message|>{ANSWERS[n]}<|end|>" in last
    assert [len(restored(p)) for p in proxies] == [2, 2]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_groq_chain_alternates_between_two_proxies(
        start_proxy: Start, redis_server: RedisServer, fake_groq: FakeGroq,
        stream: bool) -> None:
    proxies = start_pair(start_proxy, redis_server)
    last = chain(proxies, GROQ_MODEL, range(4), stream)
    # (the fake streams word by word, each with a space after it)
    contents = [(m["role"], m["content"].strip()) for m in groq_messages(fake_groq)]
    assert contents == [pair for n in range(4) for pair in
                        [("user", f"Say {n}"), ("assistant", f"groq says: Say {n}")]][:-1]
    stored = httpx.get(f"{proxies[0].base_url}/responses/{last}", timeout=10)
    assert stored.status_code == 200 and text_of(stored.json()).strip() == "groq says: Say 3"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_reasoning_issued_by_one_proxy_is_restored_by_the_other(
        start_proxy: Start, redis_server: RedisServer, fake_transformers: FakeTransformers,
        stream: bool) -> None:
    proxies = start_pair(start_proxy, redis_server)
    fake_transformers.script(*STEPS)
    assert loop_across(clients_of(proxies), stream) == "Sunny in both."
    assert_carried_over(fake_transformers)
    # Turn 1 on the second proxy restored the first's analysis; turn 2 on the first restored
    # both, the second one issued by the other proxy.
    assert restored(proxies[0]) == [0, 2] and restored(proxies[1]) == [1]


def test_nothing_is_lost_when_both_proxies_restart(
        start_proxy: Start, redis_server: RedisServer, fake_transformers: FakeTransformers,
        fake_groq: FakeGroq) -> None:
    before = start_pair(start_proxy, redis_server)
    harmony_answers(fake_transformers, range(2))
    oss = chain(before, "gpt-oss-20b", range(2), stream=False)
    groq = chain(before, GROQ_MODEL, range(2), stream=True)
    clients = clients_of(before)
    fake_transformers.script(STEPS[0])
    first = ask(clients[0], [{"role": "user", "content": "Weather in Paris and Lyon?"}], False)
    for proxy in before:
        assert proxy.stop() == 0

    after = start_pair(start_proxy, redis_server)
    harmony_answers(fake_transformers, range(2, 4))
    chain(after, "gpt-oss-20b", range(2, 4), stream=True, previous=oss)
    last = fake_transformers.prompts[-1]
    assert all(f"<|message|>{answer}<|end|>" in last for answer in ANSWERS[:3])
    chain(after, GROQ_MODEL, range(2, 3), stream=False, previous=groq)
    assert [m["content"].strip() for m in groq_messages(fake_groq)][:4] == [
        "Say 0", "groq says: Say 0", "Say 1", "groq says: Say 1"]
    # The tool call issued before the restart gets its analysis back after it.
    fake_transformers.script(*STEPS[1:])
    messages = [{"role": "user", "content": "Weather in Paris and Lyon?"},
                {"role": "assistant", "content": "", "tool_calls": first["tool_calls"]},
                {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"],
                 "content": "sunny in Paris"}]
    ask(clients_of(after)[1], messages, False)
    assert "Paris first." in fake_transformers.prompts[-1]


def test_a_tls_store_off_localhost_style_works_the_same(
        start_proxy: Start, redis_executable: str, tmp_path: Path,
        fake_transformers: FakeTransformers) -> None:
    """``rediss://`` with a password (what a store on another machine needs): the CA in the
    URL's query, the password in the environment only."""
    (tmp_path / "tls").mkdir()
    server = RedisServer(redis_executable, tmp_path / "tls", tls=True)
    try:
        proxies = start_pair(start_proxy, server)
        harmony_answers(fake_transformers, range(3))
        chain(proxies, "gpt-oss-20b", range(3), stream=False)
        assert all(f"<|message|>{answer}<|end|>" in fake_transformers.prompts[-1]
                   for answer in ANSWERS[:2])
        store = health(proxies[1])["state_store"]
        assert store["status"] == "ok"
        assert store["url"].startswith("rediss://default:***redacted***@127.0.0.1:")
    finally:
        server.stop()


# -- the store killed mid-run -----------------------------------------------------------------

def health(proxy: ProxyProcess) -> dict[str, Any]:
    response = httpx.get(f"{proxy.root_url}/health", timeout=10)
    assert response.status_code == 200
    return response.json()


def metric(proxy: ProxyProcess, name: str) -> float:
    text = httpx.get(f"{proxy.root_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_a_store_killed_mid_run_degrades_and_recovers(
        start_proxy: Start, redis_server: RedisServer, fake_transformers: FakeTransformers
        ) -> None:
    proxies = start_pair(start_proxy, redis_server)
    harmony_answers(fake_transformers, range(2))
    previous = chain(proxies, "gpt-oss-20b", range(2), stream=False)
    assert health(proxies[0])["state_store"]["status"] == "ok"
    redis_server.kill()

    for stream in (False, True):
        started = time.monotonic()
        response = respond(proxies[1], {"model": "gpt-oss-20b", "input": "Go on",
                                        "previous_response_id": previous}, stream)
        assert time.monotonic() - started < 5
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "previous_response_not_found"
    fake_transformers.script(f"<|channel|>final<|message|>{ANSWERS[0]}<|return|>", *STEPS)
    assert text_of(turn(proxies[0], {"model": "gpt-oss-20b", "input": "Fresh"}, True)) == "One."
    assert loop_across(clients_of(proxies), False) == "Sunny in both."  # nothing restored
    assert "Paris first." not in fake_transformers.prompts[-2]
    for proxy in proxies:
        body = health(proxy)
        assert body["status"] == "degraded" and body["state_store"]["status"] == "degraded"
        assert "***redacted***" in body["state_store"]["url"]
        assert PASSWORD not in json.dumps(body) and QUOTED_PASSWORD not in json.dumps(body)
        # The carry-over this proxy skipped is counted.
        assert metric(proxy, 'harmony_groq_state_store_errors_total{namespace="reason",'
                             'op="get"') >= 1
        assert metric(proxy, "harmony_groq_state_store_up") == 0

    redis_server.start()  # back, empty
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            health(p)["state_store"]["status"] != "ok" for p in proxies):
        time.sleep(0.1)
    assert [health(p)["status"] for p in proxies] == ["ok", "ok"]
    harmony_answers(fake_transformers, range(3))
    chain(proxies, "gpt-oss-20b", range(3), stream=True)
    fake_transformers.script(*STEPS)
    assert loop_across(clients_of(proxies), True, first=1) == "Sunny in both."
    assert_carried_over(fake_transformers)
    for proxy in proxies:
        assert metric(proxy, "harmony_groq_state_store_up") == 1
        assert proxy.process.poll() is None
        records = proxy.log_records(wait_for=proxy.log_mark())
        assert [r for r in records if (r.get("status") or 0) >= 500] == []
        output = "".join(proxy.output)
        log = proxy.log_path.read_text()
        assert "Traceback" not in output and "***redacted***" in log
        for secret in (PASSWORD, QUOTED_PASSWORD):
            assert secret not in output and secret not in log


# -- the real OpenAI Agents SDK ---------------------------------------------------------------

WEATHER_CALL = ("<|channel|>analysis<|message|>{thought}<|end|><|start|>assistant<|channel|>"
                "commentary to=functions.get_weather <|constrain|>json<|message|>"
                '{{"city": "{city}"}}<|call|>')


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_agents_sdk_chains_across_two_proxies(
        start_proxy: Start, redis_server: RedisServer, fake_transformers: FakeTransformers,
        tmp_path: Path, stream: bool) -> None:
    proxies = start_pair(start_proxy, redis_server)
    fake_transformers.script(
        WEATHER_CALL.format(thought="Paris first.", city="Paris"),
        "<|channel|>final<|message|>Sunny in Paris.<|return|>",
        WEATHER_CALL.format(thought="Now Lyon.", city="Lyon"),
        "<|channel|>final<|message|>Sunny in Lyon too.<|return|>")
    done = subprocess.run([sys.executable, str(DRIVER), proxies[0].base_url, proxies[1].base_url,
                           "gpt-oss-20b", *(["--stream"] if stream else [])],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["outputs"] == ["Sunny in Paris.", "Sunny in Lyon too."]
    sent = result["sent"]
    assert [s["port"] for s in sent] == [proxies[n % 2].port for n in range(4)]
    assert [s["status"] for s in sent] == [200] * 4
    # What the SDK sends: the first request whole, then only the new items after the response
    # it continues, which the other proxy must read from the shared store.
    assert sent[0]["previous_response_id"] is None
    assert all(s["previous_response_id"] for s in sent[1:])
    assert {s["store"] for s in sent} == {None}  # left to the API's default: stored
    assert sent[1]["input_types"] == ["function_call_output"]
    assert sent[2]["input_types"] == ["message"]
    last = fake_transformers.prompts[-1]
    for fragment in ("Weather in Paris?", "sunny in Paris", "Sunny in Paris.", "And in Lyon?",
                     "Now Lyon.", "sunny in Lyon"):
        assert fragment in last
