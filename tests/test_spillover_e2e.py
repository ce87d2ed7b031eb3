"""Spill-over to Groq's gpt-oss twin through the real mitmdump: a fake local model server that
goes down (stopped) or is full (requests held), the fake Groq; every dialect, whole and
streamed."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harmony_groq.pool.pool import PROBE_SECONDS

from conftest import PINNED_DATE
from fakes import GROQ_KEY, FakeGroq, FakeTransformers, Scripted
from proxy_process import ProxyProcess
from spill_clients import DIALECTS, send

MODEL = "gpt-oss-20b"
TWIN = "openai/gpt-oss-20b"
TOOL_CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant"
             "<|channel|>commentary to=functions.lookup <|constrain|>json<|message|>"
             '{"city":"Paris"}<|call|>')
BOTH = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
EACH = pytest.mark.parametrize("dialect", DIALECTS)


class Local:
    """The fake local model server, stoppable and restartable on its port."""

    def __init__(self) -> None:
        self.fake = FakeTransformers()
        self.up = True

    def down(self) -> None:
        """Stopped like a killed process: no listener, no open (keep-alive) connection."""
        if self.up:
            self.fake.close()
            self.fake.drop_connections()
            self.up = False

    def start(self) -> None:
        if not self.up:
            self.fake.restart()
            self.up = True
            time.sleep(PROBE_SECONDS + 0.1)  # the proxy's last probe saying "down" has expired


@pytest.fixture(scope="module")
def local_server() -> Iterator[Local]:
    local = Local()
    yield local
    local.down()


@pytest.fixture()
def local(local_server: Local) -> Local:
    local_server.start()
    local_server.fake.reset_state()
    return local_server


@pytest.fixture(scope="module")
def spill_proxy(tmp_path_factory: pytest.TempPathFactory, local_server: Local,
                groq_server: FakeGroq) -> Iterator[Callable[..., ProxyProcess]]:
    """Start a proxy with spill-over options in front of the fake local server (module-wide,
    one per distinct set of options)."""
    started: dict[tuple, ProxyProcess] = {}

    def start(fresh: str = "", **options: str) -> ProxyProcess:
        """``fresh`` names a proxy of its own (its limits and budget untouched by others)."""
        key = (fresh, *sorted(options.items()))
        if key not in started:
            merged = {"transformers_url": local_server.fake.url,
                      "groq_base_url": groq_server.base_url, "harmony_date": PINNED_DATE,
                      "upstream_timeout": "5", **options}
            started[key] = ProxyProcess(tmp_path_factory.mktemp("spill"),
                                        upstream=local_server.fake.url, options=merged,
                                        env={"GROQ_API_KEY": GROQ_KEY})
        return started[key]

    yield start
    for process in started.values():
        process.stop()


@pytest.fixture()
def down_proxy(spill_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    return spill_proxy(spillover="down")


def groq_chats(fake: FakeGroq) -> list[dict[str, Any]]:
    return [json.loads(r["raw"]) for r in fake.requests
            if r["path"] == "/openai/v1/chat/completions"]


def records_with(proxy: ProxyProcess, needle: str, count: int = 1) -> list[dict[str, Any]]:
    """The flow records whose client request holds ``needle``, once ``count`` are written
    (the log is written by a thread after the reply; a flow's record also means its last
    hook, Spillover's included, has run)."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in proxy.log_records()
                 if needle in json.dumps(r.get("client_request"), ensure_ascii=False)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def unique(text: str) -> str:
    return f"{text} #{time.monotonic_ns()}"


@EACH
@BOTH
def test_spills_when_local_is_down(down_proxy: ProxyProcess, local: Local, fake_groq: FakeGroq,
                                   dialect: str, stream: bool) -> None:
    local.down()
    question = unique("What is up?")
    reply = send(down_proxy.base_url, dialect, MODEL, user(question), stream,
                 reasoning_effort="high") if dialect == "chat" else send(
        down_proxy.base_url, dialect, MODEL, user(question), stream)
    assert reply.status == 200, reply.body
    assert reply.served_by == "groq"
    assert reply.message["content"].strip() == f"groq says: {question}"
    assert reply.message["reasoning"] == "Thinking it over."
    (sent,) = groq_chats(fake_groq)
    assert sent["model"] == TWIN and sent["stream"] is stream
    assert sent["reasoning_effort"] == ("high" if dialect == "chat" else "medium")
    assert sent["messages"][-1] == {"role": "user", "content": question}
    (record,) = records_with(down_proxy, question)
    assert (record["route"], record["served_by"], record["model"]) == ("groq", "groq", MODEL)
    assert record["spill"]["reason"] == "down" and record["spill"]["twin"] == TWIN
    assert GROQ_KEY not in str(record)


@EACH
@BOTH
def test_reply_has_the_local_shape(down_proxy: ProxyProcess, local: Local, fake_groq: FakeGroq,
                                   dialect: str, stream: bool) -> None:
    here = send(down_proxy.base_url, dialect, MODEL, user(unique("hi")), stream)
    assert here.status == 200 and here.served_by == "local"
    local.down()
    there = send(down_proxy.base_url, dialect, MODEL, user(unique("hi")), stream)
    assert there.status == 200 and there.served_by == "groq"
    assert there.shape == here.shape
    assert set(there.message) == set(here.message)


@EACH
def test_nothing_spills_when_off(spill_proxy: Callable[..., ProxyProcess], local: Local,
                                 fake_groq: FakeGroq, dialect: str) -> None:
    proxy = spill_proxy()
    local.down()
    reply = send(proxy.base_url, dialect, MODEL, user("hi"), stream=True)
    assert reply.status == 503
    assert "unreachable" in str(reply.body)
    assert groq_chats(fake_groq) == []


def _hold_one(proxy: ProxyProcess, local: Local, dialect: str) -> threading.Thread:
    """A slow local reply in flight (the fake holds it 2 s before its headers)."""
    local.fake.script(Scripted("<|channel|>final<|message|>slow<|return|>", delay_headers=2))
    results: list[Any] = []
    needle = unique("slow")
    thread = threading.Thread(target=lambda: results.append(
        send(proxy.base_url, dialect, MODEL, user(needle), stream=True)))
    thread.start()
    deadline = time.monotonic() + 10
    while not local.fake.prompts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert local.fake.prompts, "the held request never reached the local server"
    thread.results, thread.needle = results, needle  # type: ignore[attr-defined]
    return thread


@EACH
@BOTH
def test_spills_when_saturated(spill_proxy: Callable[..., ProxyProcess], local: Local,
                               fake_groq: FakeGroq, dialect: str, stream: bool) -> None:
    proxy = spill_proxy(spillover="saturated", spillover_max_inflight="1")
    held = _hold_one(proxy, local, dialect)
    reply = send(proxy.base_url, dialect, MODEL, user(unique("now")), stream)
    assert reply.status == 200 and reply.served_by == "groq"
    assert held.is_alive()  # the new conversation did not wait for the full local server
    assert reply.message["content"].startswith("groq says:")
    held.join(10)
    assert held.results[0].served_by == "local"  # type: ignore[attr-defined]
    assert records_with(proxy, held.needle)  # type: ignore[attr-defined] # its flow is over
    after = send(proxy.base_url, dialect, MODEL, user(unique("later")), stream)
    assert after.served_by == "local"  # nothing in flight: local again


@EACH
def test_down_mode_queues_when_saturated(spill_proxy: Callable[..., ProxyProcess],
                                         local: Local, fake_groq: FakeGroq,
                                         dialect: str) -> None:
    proxy = spill_proxy(spillover="down", spillover_max_inflight="1")
    held = _hold_one(proxy, local, dialect)
    reply = send(proxy.base_url, dialect, MODEL, user(unique("now")), stream=False)
    held.join(10)
    assert reply.status == 200 and reply.served_by == "local"
    assert groq_chats(fake_groq) == []


@EACH
def test_sticky_then_new_conversations_local(down_proxy: ProxyProcess, local: Local,
                                             fake_groq: FakeGroq, dialect: str) -> None:
    local.down()
    convo = user(unique("first"))
    first = send(down_proxy.base_url, dialect, MODEL, convo, stream=True)
    assert first.served_by == "groq"
    calls = [{"role": "system", "content": unique("tools")},
             {"role": "user", "content": "call lookup {\"city\":\"Oslo\"}"}]
    called = send(down_proxy.base_url, dialect, MODEL, calls, stream=False, tools=("lookup",))
    assert called.served_by == "groq"
    (call,) = called.message["tool_calls"]
    assert call["id"].startswith("call_") and call["id"] != "call_groq0001"  # the proxy's id
    local.start()
    # Later turns of both conversations stay on Groq; a new conversation goes local.
    convo += [first.message, {"role": "user", "content": "and then?"}]
    second = send(down_proxy.base_url, dialect, MODEL, convo, stream=False)
    assert second.served_by == "groq" and second.message["content"].startswith("groq says")
    calls += [called.message, {"role": "tool", "tool_call_id": call["id"], "content": "cold"}]
    result = send(down_proxy.base_url, dialect, MODEL, calls, stream=True, tools=("lookup",))
    assert result.served_by == "groq"
    fresh = send(down_proxy.base_url, dialect, MODEL, user(unique("new")), stream=True)
    assert fresh.served_by == "local" and fresh.message["content"] == "Hello!"
    reasons = [[r.get("spill", {}).get("reason") for r in records_with(down_proxy, needle, 2)]
               for needle in (convo[1]["content"], calls[0]["content"])]
    assert reasons == [["down", "sticky"]] * 2


@EACH
@BOTH
def test_tool_round_trip_spills_between_turns(down_proxy: ProxyProcess, local: Local,
                                              fake_groq: FakeGroq, dialect: str,
                                              stream: bool) -> None:
    convo = user(unique("hi"))
    greeting = send(down_proxy.base_url, dialect, MODEL, convo, stream)
    assert greeting.message == {"role": "assistant", "content": "Hello!",
                                "reasoning": "User says hi."}
    convo += [greeting.message, {"role": "user", "content": "Weather in Paris?"}]
    local.fake.script(TOOL_CALL)
    called = send(down_proxy.base_url, dialect, MODEL, convo, stream, tools=("lookup",))
    assert called.served_by == "local" and called.message["reasoning"] == "Need the weather."
    (call,) = called.message["tool_calls"]
    turn = dict(called.message)
    if dialect == "chat":
        del turn["reasoning"]  # a chat client that drops it: the proxy remembers it
    convo += [turn, {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
    local.down()
    answer = send(down_proxy.base_url, dialect, MODEL, convo, stream, tools=("lookup",))
    assert answer.status == 200 and answer.served_by == "groq"
    (sent,) = groq_chats(fake_groq)
    assistants = [m for m in sent["messages"] if m["role"] == "assistant"]
    # The closed exchange's reasoning is left out (harmony drops it too); the open chain's
    # reasoning travels as Groq's assistant `reasoning`.
    assert "reasoning" not in assistants[0] and assistants[0]["content"] == "Hello!"
    assert assistants[1]["reasoning"] == "Need the weather."
    assert assistants[1]["tool_calls"][0]["id"] == call["id"]
    assert sent["messages"][-1]["role"] == "tool" and sent["messages"][-1]["content"] == "sunny"
    assert sent["tools"][0]["function"]["name"] == "lookup"
    record = records_with(down_proxy, convo[1]["content"], 3)[-1]
    notes = record["spill"]["notes"]
    assert any(n.startswith("dropped: messages[2] reasoning (13 characters), before the last "
                            "final answer") for n in notes), notes


def test_previous_response_id_across_a_spill(down_proxy: ProxyProcess, local: Local,
                                             fake_groq: FakeGroq) -> None:
    """Stored Responses chain across local → Groq → (local back) Groq: the spilled reply is
    stored like a local one, and the chain stays on Groq."""
    url = f"{down_proxy.root_url}/v1/responses"

    def ask(text: str, previous: str | None) -> httpx.Response:
        body = {"model": MODEL, "input": text, **({"previous_response_id": previous}
                                                  if previous else {})}
        return httpx.post(url, json=body, timeout=30)

    first = ask(unique("hi"), None)
    assert first.headers["x-harmony-groq-served-by"] == "local"
    local.down()
    second = ask("more", first.json()["id"])
    assert second.status_code == 200 and second.headers["x-harmony-groq-served-by"] == "groq"
    (sent,) = groq_chats(fake_groq)
    assert [m["role"] for m in sent["messages"]][-3:] == ["user", "assistant", "user"]
    assert sent["messages"][-2]["content"] == "Hello!"
    local.start()
    third = ask("again", second.json()["id"])
    assert third.headers["x-harmony-groq-served-by"] == "groq"
    assert third.json()["output"][-1]["content"][0]["text"].startswith("groq says: again")
    assert httpx.get(f"{url}/{third.json()['id']}", timeout=5).json()["id"] == third.json()["id"]


@EACH
def test_groq_429_pauses_spill_until_retry_after(spill_proxy: Callable[..., ProxyProcess],
                                                 local: Local, fake_groq: FakeGroq,
                                                 dialect: str) -> None:
    proxy = spill_proxy(f"429-{dialect}", spillover="down")
    local.down()
    fake_groq.next_status.append((429, {"retry-after": "2"}))
    limited = send(proxy.base_url, dialect, MODEL, user(unique("a")), stream=True)
    assert limited.status == 429 and limited.headers["retry-after"] == "2"
    started = time.monotonic()
    refused = send(proxy.base_url, dialect, MODEL, user(unique("b")), stream=False)
    assert refused.status == 503 and refused.served_by == "none"
    assert "rate limited" in str(refused.body) and "spill-over to Groq is paused" in str(
        refused.body)
    assert len(groq_chats(fake_groq)) == 1  # the refused request never reached Groq
    spill = httpx.get(f"{proxy.root_url}/health", timeout=5).json()["spillover"]
    assert spill["mode"] == "down" and "rate limited" in spill["paused"]
    time.sleep(max(0.0, 2.1 - (time.monotonic() - started)))
    again = send(proxy.base_url, dialect, MODEL, user(unique("c")), stream=False)
    assert again.status == 200 and again.served_by == "groq"
    assert httpx.get(f"{proxy.root_url}/health", timeout=5).json()["spillover"]["paused"] is None


def test_near_the_token_limit_no_spill(spill_proxy: Callable[..., ProxyProcess], local: Local,
                                       fake_groq: FakeGroq) -> None:
    proxy = spill_proxy("near-limit", spillover="down")
    local.down()
    fake_groq.rate_overrides = {"x-ratelimit-remaining-tokens": "20",
                                "x-ratelimit-reset-tokens": "1.5s"}
    assert send(proxy.base_url, "chat", MODEL, user(unique("a"))).served_by == "groq"
    refused = send(proxy.base_url, "messages", MODEL, user(unique("b")))
    assert refused.status == 503 and "x-ratelimit-remaining-tokens: 20" in str(refused.body)
    assert refused.body["type"] == "error"  # Anthropic's error shape
    fake_groq.rate_overrides = {}
    time.sleep(1.6)
    assert send(proxy.base_url, "chat", MODEL, user(unique("c"))).served_by == "groq"


def _metric(proxy: ProxyProcess, name: str, labels: str) -> float:
    text = httpx.get(f"{proxy.root_url}/metrics", timeout=5).text
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", text, re.M)
    assert match, f"{name}{{{labels}}} not in /metrics"
    return float(match.group(1))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_budget_is_never_exceeded(spill_proxy: Callable[..., ProxyProcess], local: Local,
                                  fake_groq: FakeGroq, stream: bool) -> None:
    budget = 2000
    proxy = spill_proxy(f"budget-{stream}", spillover="down",
                        spillover_budget_tokens=str(budget), spillover_budget_window="hour")
    local.down()
    fake_groq.completion_tokens = 500
    served, tag = 0, unique("budget")
    for n, dialect in enumerate(DIALECTS * 3):  # bounded: 9 requests at most
        reply = send(proxy.base_url, dialect, MODEL, user(f"{tag} q{n}"), stream)
        if reply.status != 200:
            assert reply.status == 503 and "SPILLOVER_BUDGET_TOKENS" in str(reply.body)
            break
        served += 1
    else:
        pytest.fail("the budget never ran out")
    assert served >= 2
    health = httpx.get(f"{proxy.root_url}/health", timeout=5).json()["spillover"]
    assert health["budget"]["limit"] == budget and "SPILLOVER_BUDGET_TOKENS" in health["paused"]
    spent = _metric(proxy, "harmony_groq_spill_budget_tokens", 'kind="spent"')
    assert _metric(proxy, "harmony_groq_spill_budget_tokens", 'kind="limit"') == budget
    records = [r for r in records_with(proxy, tag, served + 1) if r["served_by"] == "groq"]
    assert sum(r["spill"]["spent_tokens"] for r in records) == spent
    assert sum(r["usage"]["total_tokens"] for r in records) == spent <= budget
    # The last requests were capped to what the budget had left, and that is in the log.
    assert any("capped by SPILLOVER_BUDGET_TOKENS" in note
               for r in records for note in r["spill"]["notes"])


def test_failover_after_a_local_5xx(down_proxy: ProxyProcess, local: Local,
                                    fake_groq: FakeGroq) -> None:
    local.fake.script(Scripted("", status=500))
    question = unique("x")
    reply = send(down_proxy.base_url, "responses", MODEL, user(question))
    assert reply.status == 200 and reply.served_by == "groq"
    (record,) = records_with(down_proxy, question)
    assert record["spill"]["reason"] == "failover"
    assert "answered 500" in record["local_failure"]
    text = httpx.get(f"{down_proxy.root_url}/metrics", timeout=5).text
    assert re.search(r'harmony_groq_gpt_oss_served_total\{dialect="responses",model="gpt-oss-20b",'
                     r'reason="failover",served_by="groq"\} [1-9]', text)


def test_bad_spillover_settings_fail_at_start(tmp_path: Path) -> None:
    from proxy_process import run_to_exit
    result = run_to_exit(tmp_path, ["--set", "spillover_models=gpt-oss-20b"])
    assert "spillover_models entry 'gpt-oss-20b' is not LOCAL=GROQ" in (
        result.stdout + result.stderr)


def test_settings_from_the_environment(tmp_path: Path, local: Local,
                                       groq_server: FakeGroq) -> None:
    """SPILLOVER, SPILLOVER_MODELS, SPILLOVER_MAX_INFLIGHT as environment variables; a model
    without a twin never spills."""
    groq_server.reset_state()
    proxy = ProxyProcess(tmp_path, upstream=local.fake.url, options={
        "transformers_url": local.fake.url, "groq_base_url": groq_server.base_url,
        "harmony_date": PINNED_DATE},
        env={"GROQ_API_KEY": GROQ_KEY, "SPILLOVER": "saturated", "SPILLOVER_MAX_INFLIGHT": "1",
             "SPILLOVER_MODELS": "gpt-oss-120b=openai/gpt-oss-120b"})
    try:
        local.down()
        big = send(proxy.base_url, "chat", "gpt-oss-120b", user(unique("a")))
        assert big.served_by == "groq" and groq_chats(groq_server)[0]["model"] == (
            "openai/gpt-oss-120b")
        small = send(proxy.base_url, "chat", MODEL, user(unique("b")))
        assert small.status == 503, (small.served_by, small.body, small.message)
        assert small.body["error"]["code"] == "upstream_unavailable"
        assert len(groq_chats(groq_server)) == 1
    finally:
        proxy.stop()


def test_a_request_with_mcp_servers_is_not_spilled(down_proxy: ProxyProcess, local: Local,
                                                   fake_groq: FakeGroq) -> None:
    """The proxy runs MCP servers for the local model only: Groq's chat API cannot."""
    local.down()
    before = len(groq_chats(fake_groq))
    response = httpx.post(f"{down_proxy.base_url}/responses", timeout=30, json={
        "model": MODEL, "input": unique("with tools"), "tools": [{
            "type": "mcp", "server_label": "calc", "server_url": "https://mcp.example/mcp",
            "require_approval": "never"}]})
    assert response.status_code == 503
    assert "MCP servers" in response.json()["error"]["message"]
    assert len(groq_chats(fake_groq)) == before
