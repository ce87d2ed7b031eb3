"""Read-your-writes across proxies: a client that gets the end of a reply from one proxy and
at once sends its next turn to another finds there what the reply stored.

Proxy A reaches the shared Redis through a gate that holds every store write back for a while
(store_gate.py); proxy B reaches it directly. Whatever the dialect, whole or streamed, gpt-oss
or Groq, the end of A's reply (the whole body, ``[DONE]``, ``response.completed``,
``message_stop``) reaches the client only after the write was on its way to Redis, so the next
turn on B reads it: the stored response, the analysis before the tool calls, the spill-over
stickiness. A store slower than ``STATE_STORE_TIMEOUT_MS`` delays the end by that much only;
the write lands later and is counted as late.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from store_gate import WriteGate
from test_shared_state_e2e import metric
from test_spillover_e2e import records_with

from conftest import default_options
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from proxy_process import ProxyProcess
from redis_server import RedisServer, free_port
from spill_clients import Reply, send

GROQ_MODEL = "llama-3.3-70b-versatile"
HELD_SECONDS = 0.3  # each write of proxy A, before it reaches Redis (writes time out at 1 s)
Start = Callable[..., ProxyProcess]
BOTH = pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
# Compact arguments: the Messages dialect sends a call's input back as compact JSON, and the
# analysis is restored only for calls that come back exactly as issued.
CALL = ("<|channel|>analysis<|message|>Paris first.<|end|><|start|>assistant<|channel|>commentary"
        ' to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>')


class Pair:
    """Proxy A behind the gate, proxy B direct, one Redis."""

    def __init__(self, gate: WriteGate, a: ProxyProcess, b: ProxyProcess) -> None:
        self.gate, self.a, self.b = gate, a, b


def start_pair(start: Callable[[dict[str, str], dict[str, str]], ProxyProcess],
               redis: RedisServer, held: float, timeout_ms: str,
               a_options: dict[str, str] | None = None,
               b_options: dict[str, str] | None = None) -> Pair:
    gate = WriteGate(redis.url, held)
    a = start({"state_store_timeout_ms": timeout_ms, **(a_options or {})},
              {"STATE_STORE": gate.url, "GROQ_API_KEY": GROQ_KEY})
    b = start({"state_store_timeout_ms": "1000", **(b_options or {})},
              {"STATE_STORE": redis.url, "GROQ_API_KEY": GROQ_KEY})
    return Pair(gate, a, b)


@pytest.fixture()
def gated(start_proxy: Start, redis_server: RedisServer) -> Iterator[Callable[..., Pair]]:
    """``gated(held, timeout_ms, a_options, b_options)``: a pair of this test's own."""
    pairs: list[Pair] = []

    def start(*args: Any) -> Pair:
        pairs.append(start_pair(lambda options, env: start_proxy(options=options, env=env),
                                redis_server, *args))
        return pairs[-1]

    yield start
    for started in pairs:
        started.gate.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, redis_executable: str,
         transformers_server: FakeTransformers, groq_server: FakeGroq) -> Iterator[Pair]:
    redis = RedisServer(redis_executable, tmp_path_factory.mktemp("redis"))
    started: list[ProxyProcess] = []

    def start(options: dict[str, str], env: dict[str, str]) -> ProxyProcess:
        process = ProxyProcess(tmp_path_factory.mktemp("proxy"),
                               upstream=transformers_server.url,
                               options={**default_options(transformers_server, groq_server),
                                        **options}, env=env)
        started.append(process)
        return process

    pair = start_pair(start, redis, HELD_SECONDS, "5000")
    yield pair
    for process in started:
        process.stop()
    pair.gate.close()
    redis.stop()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{text} #{time.monotonic_ns()}"}]


def response_id(reply: Reply) -> str:
    if isinstance(reply.body, dict):
        return reply.body["id"]
    return next(e["response"]["id"] for e in reply.body if e["type"] == "response.completed")


def assert_ended_after_its_writes(gate: WriteGate, before: int, reply: Reply) -> None:
    """The reply's end reached the client after each write it made was handed to Redis."""
    assert reply.status == 200, reply.body
    writes = gate.wait_for_writes(before + 1)[before:]
    assert writes, "the reply wrote nothing to the store"
    assert all(forwarded < reply.end_at for _, forwarded in writes), (
        f"the end arrived {max(f for _, f in writes) - reply.end_at:.3f} s before the write")


def tool_turns(first: Reply, convo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The next turn of an agent that sends the tool call back without its analysis."""
    (call,) = first.message["tool_calls"]
    assistant = {"role": "assistant", "content": "", "tool_calls": [call]}
    return [*convo, assistant,
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny in Paris"}]


# -- the end of a reply waits for its writes; the next turn on the other proxy finds them ----

@BOTH
@pytest.mark.parametrize("model", ["gpt-oss-20b", GROQ_MODEL], ids=["gpt-oss", "groq"])
def test_a_stored_response_is_on_the_other_proxy_when_the_reply_ends(
        pair: Pair, fake_transformers: FakeTransformers, fake_groq: FakeGroq, model: str,
        stream: bool) -> None:
    fake_transformers.script("<|channel|>final<|message|>One.<|return|>",
                             "<|channel|>final<|message|>Two.<|return|>")
    before = len(pair.gate.writes)
    waits = metric(pair.a, 'harmony_groq_state_store_seconds_count{namespace="resp",op="wait"}')
    first = send(pair.a.base_url, "responses", model, user("Say 0"), stream, store=True)
    assert_ended_after_its_writes(pair.gate, before, first)
    second = send(pair.b.base_url, "responses", model, user("Say 1"), stream, store=True,
                  previous_response_id=response_id(first))
    assert second.status == 200, second.body
    if model == GROQ_MODEL:
        sent = [m["content"] for m in json.loads(fake_groq.requests[-1]["raw"])["messages"]]
        assert sent[1].strip().startswith("groq says: Say 0")
    else:
        assert "<|channel|>final<|message|>One.<|end|>" in fake_transformers.prompts[-1]
    assert metric(pair.a, 'harmony_groq_state_store_seconds_count{namespace="resp",'
                          'op="wait"}') == waits + 1


@BOTH
@pytest.mark.parametrize("dialect", ["chat", "messages", "responses"])
def test_the_analysis_before_a_tool_call_is_on_the_other_proxy_when_the_reply_ends(
        pair: Pair, fake_transformers: FakeTransformers, dialect: str, stream: bool) -> None:
    fake_transformers.script(CALL, "<|channel|>final<|message|>Sunny.<|return|>")
    convo = user("Weather in Paris and Lyon?")
    before = len(pair.gate.writes)
    first = send(pair.a.base_url, dialect, "gpt-oss-20b", convo, stream, tools=("get_weather",))
    assert_ended_after_its_writes(pair.gate, before, first)
    second = send(pair.b.base_url, dialect, "gpt-oss-20b", tool_turns(first, convo), stream,
                  tools=("get_weather",))
    assert second.status == 200, second.body
    assert "<|channel|>analysis<|message|>Paris first.<|end|>" in fake_transformers.prompts[-1]
    (record,) = records_with(pair.b, convo[0]["content"])
    assert len(record["restored_reasoning"]) == 1


@BOTH
def test_a_spilled_conversation_is_sticky_on_the_other_proxy_when_the_reply_ends(
        gated: Callable[..., Pair], fake_transformers: FakeTransformers, fake_groq: FakeGroq,
        stream: bool) -> None:
    """A's local model server is down, so A spills to Groq; B's is up, and B keeps the
    conversation on Groq only if it reads A's stickiness."""
    spill = {"spillover": "down"}
    dead = {**spill, "transformers_url": f"http://127.0.0.1:{free_port()}"}
    pair = gated(HELD_SECONDS, "5000", dead, spill)
    convo = [{"role": "system", "content": f"Tools #{time.monotonic_ns()}"},
             {"role": "user", "content": 'call lookup {"city":"Oslo"}'}]
    first = send(pair.a.base_url, "chat", "gpt-oss-20b", convo, stream, tools=("lookup",))
    assert first.served_by == "groq"
    assert_ended_after_its_writes(pair.gate, 0, first)
    second = send(pair.b.base_url, "chat", "gpt-oss-20b", tool_turns(first, convo), stream,
                  tools=("lookup",))
    assert second.status == 200 and second.served_by == "groq"
    assert fake_transformers.prompts == []  # B's local server saw nothing of it


# -- a store slower than its timeout --------------------------------------------------------

@BOTH
def test_a_slow_store_delays_the_end_only_up_to_its_timeout(
        gated: Callable[..., Pair], fake_transformers: FakeTransformers, stream: bool) -> None:
    """Writes held 0.5 s, ``STATE_STORE_TIMEOUT_MS=50``: the reply ends before its write lands
    (counted as late); the write still lands, and the other proxy reads it then."""
    pair = gated(0.5, "50")
    first = send(pair.a.base_url, "responses", "gpt-oss-20b", user("Say 0"), stream, store=True)
    assert first.status == 200 and first.message["content"] == "Hello!"
    ((_arrived, forwarded),) = pair.gate.wait_for_writes(1)
    # The end came before the held write landed; that the proxy was waiting on that write when
    # it gave up is the "late" count below (when the write reaches the gate is the machine's
    # scheduling: under load it can be after the 50 ms the proxy waited).
    assert first.end_at < forwarded
    assert metric(pair.a, 'harmony_groq_state_store_errors_total{namespace="resp",op="wait",'
                          'reason="late"}') == 1
    stored = httpx.get(f"{pair.b.base_url}/responses/{response_id(first)}", timeout=10)
    assert stored.status_code == 200 and stored.json()["status"] == "completed"
