"""The state store (``harmony_groq.state``): the same semantics in memory and in a real Redis
(TTL, byte budget, namespaces), and a Redis that dies or stalls degrades instead of failing:
reads give up within the timeout, writes are dropped, both counted, and the same store object
answers again once the server is back."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from mitmproxy import exceptions
from mitmproxy.test import taddons
from prometheus_client import CollectorRegistry

from harmony_groq.settings import (
    OPTION_DEFAULTS,
    OPTIONS,
    Settings,
    build_config,
    env_default,
)
from harmony_groq.state import Namespace, StoreUnavailable
from harmony_groq.state import redis_store as redis_store_module
from harmony_groq.state.addon import State
from harmony_groq.state.codec import decode, entry_key
from harmony_groq.state.memory import MemoryStore, json_size
from harmony_groq.state.metrics import StoreMetrics
from harmony_groq.state.redis_store import RedisStore
from harmony_groq.state.writes import collect_writes
from harmony_groq.store_url import public_url, secret_url

from redis_server import PASSWORD, QUOTED_PASSWORD, RedisServer

BUDGETS = {"resp": 1000, "reason": 1000, "spill": 1000}
VALUE = {"text": "x" * 80}  # a 93-byte entry (memory counts JSON; Redis the encoded bytes)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def settle(store: Any) -> None:
    """Wait for a Redis store's background writes (memory writes are done at once)."""
    while getattr(store, "pending", None):
        await asyncio.gather(*store.pending)


# -- the same semantics in both stores -----------------------------------------------------

def make_memory(_: Any = None, budgets: dict[str, int] = BUDGETS) -> MemoryStore:
    return MemoryStore(budgets)


def make_redis(server: RedisServer, budgets: dict[str, int] = BUDGETS,
               registry: CollectorRegistry | None = None, timeout: float = 1.0) -> RedisStore:
    return RedisStore(server.url, budgets, timeout, StoreMetrics(registry))


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Callable[..., Any]:
    if request.param == "memory":
        return lambda budgets=BUDGETS: make_memory(None, budgets)
    server = request.getfixturevalue("redis_server")
    return lambda budgets=BUDGETS: make_redis(server, budgets)


def test_put_get_delete_and_namespaces(make_store: Callable[..., Any]) -> None:
    async def scenario() -> None:
        store = make_store()
        store.put("resp", "resp_1", {"a": [1, "ü"]}, 60)
        store.put("reason", "resp_1", "another namespace", 60)
        await settle(store)
        assert await store.get_many("resp", ["resp_1", "nope"]) == [{"a": [1, "ü"]}, None]
        assert await store.get_many("reason", ["resp_1"]) == ["another namespace"]
        assert await store.get_many("spill", ["resp_1"]) == [None]
        assert await store.delete("resp", "resp_1") is True
        assert await store.delete("resp", "resp_1") is False
        assert await store.get_many("resp", ["resp_1"]) == [None]
        assert await store.get_many("reason", ["resp_1"]) == ["another namespace"]
        assert (await store.health())["status"] == "ok"
        await store.close()

    run(scenario())


def test_budget_keeps_the_newest_and_refuses_an_entry_larger_than_it(
        make_store: Callable[..., Any]) -> None:
    async def scenario() -> None:
        store = make_store({**BUDGETS, "resp": 3 * 100})  # room for three 93-byte entries
        for n in range(4):
            store.put("resp", f"r{n}", VALUE, 60)
            await settle(store)
        assert await store.get_many("resp", [f"r{n}" for n in range(4)]) == [
            None, VALUE, VALUE, VALUE]
        store.put("resp", "huge", {"text": "x" * 400}, 60)  # over the whole budget: not kept
        await settle(store)
        assert await store.get_many("resp", ["huge", "r3"]) == [None, VALUE]
        disabled = make_store({**BUDGETS, "reason": 0})  # REASONING_MEMORY_BYTES=0
        disabled.put("reason", "call_1", "x", 60)
        await settle(disabled)
        assert await disabled.get_many("reason", ["call_1"]) == [None]
        await store.close()
        await disabled.close()

    run(scenario())


def test_memory_ttl_and_least_recently_used_out() -> None:
    clock = Clock()
    store = MemoryStore({"resp": 2 * json_size(VALUE)}, clock)

    async def scenario() -> None:
        store.put("resp", "a", VALUE, 10)
        store.put("resp", "b", VALUE, 100)
        assert await store.get_many("resp", ["a"]) == [VALUE]  # a is now the most recent
        store.put("resp", "c", VALUE, 100)
        assert await store.get_many("resp", ["a", "b", "c"]) == [VALUE, None, VALUE]
        clock.now += 10
        assert await store.get_many("resp", ["a", "c"]) == [None, VALUE]
        assert store.namespaces["resp"].size == json_size(VALUE)

    run(scenario())


def test_redis_keys_are_versioned_compact_and_expire(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = make_redis(redis_server, {**BUDGETS, "resp": 1 << 20})
        history = [{"role": "user", "content": "the same words again " * 100}]
        store.put("resp", "resp_big", history, 120)
        store.put("spill", "conv_1", "groq", 1)
        await settle(store)
        raw = aioredis.Redis.from_url(redis_server.url)
        data = await raw.get("hgg:v1:resp:resp_big")
        assert data[:1] == b"z" and len(data) < json_size(history) / 4
        assert decode(data) == history
        assert 110_000 < await raw.pttl("hgg:v1:resp:resp_big") <= 120_000
        for meta in ("index", "sizes", "bytes"):
            assert 110_000 < await raw.pttl(f"hgg:v1:meta:resp:{meta}") <= 120_000
        assert int(await raw.get("hgg:v1:meta:resp:bytes")) == len(data)
        assert await raw.get("hgg:v1:spill:conv_1") == b'j"groq"'
        # Every key has a TTL: nothing in the server outlives it.
        assert all([await raw.pttl(key) > 0 for key in await raw.keys("*")])
        await asyncio.sleep(1.1)
        assert await store.get_many("spill", ["conv_1"]) == [None]
        assert await store.delete("resp", "resp_big") is True
        assert int(await raw.get("hgg:v1:meta:resp:bytes")) == 0
        await raw.aclose()
        await store.close()

    run(scenario())


def test_a_client_chosen_id_cannot_reach_the_bookkeeping(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = make_redis(redis_server)
        store.put("resp", "r1", VALUE, 60)
        await settle(store)
        assert await store.get_many("resp", ["meta:resp:index", "../meta", "*"]) == [None] * 3
        assert (await store.health())["status"] == "ok"
        await store.close()

    run(scenario())


def test_a_value_is_read_back_while_its_write_is_under_way(redis_server: RedisServer) -> None:
    """The client's next request to the same proxy may come before the write landed (a cold
    pool connects first): it must still see what its last reply stored."""
    async def scenario() -> None:
        store = make_redis(redis_server)
        store.put("resp", "r1", VALUE, 60)
        assert store.pending  # not written yet
        assert await store.get_many("resp", ["r1", "r2"]) == [VALUE, None]
        assert await store.delete("resp", "r1") is True  # waits for the write, then deletes
        await settle(store)
        assert await store.get_many("resp", ["r1"]) == [None] and not store.writing
        await store.close()

    run(scenario())


def test_the_spill_namespace_takes_strings_with_a_ttl_of_their_own() -> None:
    """The API the spill-over code uses: ``State.spill``, on the default store."""
    state = State(Settings())

    async def scenario() -> None:
        state.spill.put("conversation-1", "groq", ttl_seconds=30)
        assert await state.spill.get("conversation-1") == "groq"
        assert await state.spill.get("conversation-2") is None
        assert (await state.health())["status"] == "ok"

    run(scenario())


# -- degrade, never fail ----------------------------------------------------------------------

# A healthy Redis answers in a millisecond, but a loaded machine (parallel test workers, other
# jobs) can hold a process up for hundreds: a store that must answer runs with a timeout it
# always meets, and one that must give up is told apart from one waiting for its socket by a
# socket timeout far above any load's delay, not by racing the clock.
PATIENT = 5.0  # seconds: the read timeout of a store that must answer
SOCKET_TIMEOUT = 30.0  # seconds: how long a store that ignored its timeout would take


@pytest.fixture()
def slow_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store_module, "WRITE_TIMEOUT_SECONDS", SOCKET_TIMEOUT)


def test_a_dead_redis_degrades_and_the_same_store_recovers(redis_server: RedisServer,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture,
                                                          slow_sockets: None) -> None:
    monkeypatch.setattr(redis_store_module, "RETRY_SECONDS", 0.3)
    caplog.set_level(logging.INFO, logger="harmony_groq")
    registry = CollectorRegistry()

    async def scenario() -> None:
        store = make_redis(redis_server, registry=registry, timeout=PATIENT)
        store.put("resp", "r1", VALUE, 60)
        await settle(store)
        assert await store.get_many("resp", ["r1"]) == [VALUE]  # a pooled connection now
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get_many("resp", ["r1"])
        assert time.monotonic() - started < PATIENT  # refused: no wait for a timeout
        assert await Namespace(store, "resp", 60).get("r1") is None  # resting: at once
        store.put("resp", "r2", VALUE, 60)  # dropped, counted
        await settle(store)
        health = await store.health()
        assert health["status"] == "degraded"
        assert PASSWORD not in str(health) and QUOTED_PASSWORD not in str(health)
        assert health["url"] == f"redis://default:***redacted***@127.0.0.1:{redis_server.port}/0"
        assert sample(registry, "harmony_groq_state_store_errors_total", namespace="resp",
                      op="get", reason="connection") == 1
        assert sample(registry, "harmony_groq_state_store_errors_total", namespace="resp",
                      op="get", reason="resting") == 1
        assert sample(registry, "harmony_groq_state_store_up") == 0
        redis_server.start()  # empty: no persistence
        await asyncio.sleep(0.35)
        assert await store.get_many("resp", ["r1"]) == [None]
        store.put("resp", "r3", VALUE, 60)
        await settle(store)
        assert await store.get_many("resp", ["r3"]) == [VALUE]
        assert (await store.health())["status"] == "ok"
        assert sample(registry, "harmony_groq_state_store_up") == 1
        assert sample(registry, "harmony_groq_state_store_seconds_count", namespace="resp",
                      op="get") >= 3
        await store.close()

    run(scenario())
    assert PASSWORD not in caplog.text and QUOTED_PASSWORD not in caplog.text
    assert "answers again" in caplog.text


def test_a_stalled_redis_times_out_in_milliseconds(redis_server: RedisServer,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   slow_sockets: None) -> None:
    monkeypatch.setattr(redis_store_module, "RETRY_SECONDS", 0.2)
    registry = CollectorRegistry()

    async def scenario() -> None:
        store = make_redis(redis_server, registry=registry, timeout=PATIENT)
        assert await store.get_many("resp", ["r1"]) == [None]  # a pooled connection now
        assert redis_server.process is not None
        store.read_timeout = 0.02
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.get_many("resp", ["r1"])
            assert 0.02 <= time.monotonic() - started < PATIENT  # not the socket's 30 s
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert sample(registry, "harmony_groq_state_store_errors_total", namespace="resp",
                      op="get", reason="timeout") == 1
        store.read_timeout = PATIENT
        await asyncio.sleep(0.25)
        assert await store.get_many("resp", ["r1"]) == [None]
        assert (await store.health())["status"] == "ok"
        await store.close()

    run(scenario())


def test_writes_beyond_the_backlog_are_dropped_and_counted(redis_server: RedisServer,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(redis_store_module, "MAX_PENDING_WRITES", 2)
    registry = CollectorRegistry()

    async def scenario() -> None:
        store = make_redis(redis_server, registry=registry)
        for n in range(5):  # no await in between: none of them has run yet
            store.put("reason", f"call_{n}", VALUE, 60)
        await settle(store)
        assert await store.get_many("reason", [f"call_{n}" for n in range(5)]) == [
            VALUE, VALUE, None, None, None]
        assert sample(registry, "harmony_groq_state_store_errors_total", namespace="reason",
                      op="put", reason="backlog") == 3
        await store.close()

    run(scenario())


# -- settings: the URL and its password ------------------------------------------------------

def test_the_password_is_masked_in_the_option_and_taken_from_the_environment() -> None:
    url = f"rediss://app:{QUOTED_PASSWORD}@cache.example:6380/2"
    spec = next(spec for spec in OPTIONS if spec.name == "state_store")
    shown = env_default(spec, {"STATE_STORE": url})
    assert shown == public_url(url) == "rediss://app:***redacted***@cache.example:6380/2"
    assert secret_url(shown, url) == url
    values = {**OPTION_DEFAULTS, "state_store": shown}
    config = build_config(values, {"STATE_STORE": url})
    assert config.state_store == url and set(config.secrets) == {PASSWORD, QUOTED_PASSWORD}
    # A URL set as an option (no password in the environment) is used as it is.
    plain = "redis://127.0.0.1:6379/0"
    assert build_config({**OPTION_DEFAULTS, "state_store": plain}, {}).state_store == plain
    assert build_config(OPTION_DEFAULTS, {}).state_store == "memory"


@pytest.mark.parametrize("value", ["redis", "http://127.0.0.1:6379", "redis://:6379",
                                   "redis://127.0.0.1:6379/not-a-db", "valkey://h:1"])
def test_a_bad_store_url_is_one_clear_line(value: str) -> None:
    with pytest.raises(exceptions.OptionsError, match="is not memory or a redis://"):
        build_config({**OPTION_DEFAULTS, "state_store": value}, {})


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(exceptions.OptionsError) as error:
        build_config({**OPTION_DEFAULTS, "state_store": f"http://u:{QUOTED_PASSWORD}@h:1/0"}, {})
    assert QUOTED_PASSWORD not in str(error.value)


def test_a_live_change_resizes_the_store_or_replaces_it(redis_server: RedisServer) -> None:
    """mitmweb's options page: a new budget or TTL keeps what is stored; a new STATE_STORE
    starts the new store, which every user of the namespaces then reads."""
    settings = Settings()
    state = State(settings)
    with taddons.context(settings, state) as tctx:
        tctx.options.mode = ["reverse:http://127.0.0.1:9@127.0.0.1:0"]
        tctx.configure(settings, responses_store_bytes=10_000)
        memory = state.store
        state.responses.put("r1", VALUE)
        assert run(state.responses.get("r1")) == VALUE
        tctx.configure(settings, responses_store_bytes=50, responses_store_ttl=60)
        assert state.store is memory and state.responses.ttl == 60
        assert memory.namespaces["resp"].budget == 50  # type: ignore[attr-defined]
        assert run(state.responses.get("r1")) == VALUE
        tctx.configure(settings, state_store=redis_server.url)
        assert state.store.kind == "redis" and state.reasoning.store is state.store
        assert run(state.health())["url"].endswith(f"127.0.0.1:{redis_server.port}/0")


def test_a_reply_waits_for_its_writes_at_most_the_store_timeout(redis_server: RedisServer,
                                                                slow_sockets: None) -> None:
    """What the gateway does at a reply's end: the writes made while it was written are
    collected, and ``settle`` returns once they are on the server (another proxy can read
    them) or, with the server stalled, after ``STATE_STORE_TIMEOUT_MS`` (the write goes on,
    counted late). The in-process store collects nothing: nothing waits."""
    registry = CollectorRegistry()
    settings = Settings()
    state = State(settings, registry)
    other = redis.Redis.from_url(redis_server.url)
    with taddons.context(settings, state) as tctx:
        tctx.options.mode = ["reverse:http://127.0.0.1:9@127.0.0.1:0"]
        tctx.configure(settings)
        with collect_writes() as writes:
            state.responses.put("r0", VALUE)
        assert writes.under_way == [] and not writes.pending()
        tctx.configure(settings, state_store=redis_server.url,
                       state_store_timeout_ms=int(PATIENT * 1000))

        async def scenario() -> None:
            with collect_writes() as writes:
                state.responses.put("r1", VALUE)
                state.reasoning.put("c1", VALUE)
            state.spill.put("outside", "groq")  # not this reply's
            assert [name for name, _ in writes.under_way] == ["resp", "reason"]
            await state.settle(writes)
            assert other.exists(entry_key("resp", "r1"), entry_key("reason", "c1")) == 2
            assert redis_server.process is not None
            tctx.configure(settings, state_store_timeout_ms=100)
            os.kill(redis_server.process.pid, signal.SIGSTOP)
            try:
                with collect_writes() as writes:
                    state.responses.put("r2", VALUE)
                started = time.monotonic()
                await state.settle(writes)
                waited = time.monotonic() - started
                assert 0.09 < waited < PATIENT and writes.pending()  # not the socket's 30 s
            finally:
                os.kill(redis_server.process.pid, signal.SIGCONT)
            await writes.wait(2)
            await state.done()

        run(scenario())
    assert other.exists(entry_key("resp", "r2")) == 1
    other.close()
    assert sample(registry, "harmony_groq_state_store_errors_total", namespace="resp",
                  op="wait", reason="late") == 1
    assert sample(registry, "harmony_groq_state_store_seconds_count", namespace="reason",
                  op="wait") == 1
