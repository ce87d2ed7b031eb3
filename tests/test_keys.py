"""Keys, limits and the fair share without a proxy: the pieces the e2e tests
(test_keys_e2e.py, bench) run through mitmdump."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from harmony_groq.keys.book import FileBook, Key, expiry, hash_of, new_secret
from harmony_groq.keys.limits import MemoryLimits
from harmony_groq.keys.usage import report, tokens_of
from harmony_groq.pool.capacity import PoolCapacity
from harmony_groq.pool.fair import FairShare
from harmony_groq.pool.pool import Pools, ReplicaPool
from harmony_groq.replica_spec import ModelServers


def test_book_keeps_hashes_and_finds_keys_by_them(tmp_path) -> None:  # noqa: ANN001
    book = FileBook(tmp_path / "keys.json")
    secret = new_secret()
    book.put(Key("ann", hash_of(secret), ("gpt-oss*",), rpm=3))
    assert secret not in (tmp_path / "keys.json").read_text()
    key = book.load()[hash_of(secret)]
    assert key.allows("GPT-OSS-20b") and not key.allows("llama-3.3-70b-versatile")
    assert key.models == ("gpt-oss*",) and key.limited
    assert expiry("2027-01-31") == expiry("2027-02-01T00:00:00+00:00")
    with pytest.raises(ValueError):
        expiry("next tuesday")


def test_memory_limits_slide_and_settle() -> None:
    limits, key = MemoryLimits(), Key("bo", "h", rpm=2, tpm=100)
    first = asyncio.run(limits.admit(key, "f1", 10, False))
    assert first.refused is None and first.requests_left == 1 and first.tokens_left == 90
    asyncio.run(limits.settle(key, "f1", first.bucket, 10, 95, 0))  # the reply used 95
    refused = asyncio.run(limits.admit(key, "f2", 10, False))
    assert refused.refused == "tokens" and 59 < refused.retry_after <= 60
    assert asyncio.run(limits.admit(Key("bo", "h", rpm=2), "f3", 0, False)).refused is None
    assert asyncio.run(limits.admit(Key("bo", "h", rpm=2), "f4", 0, False)).refused \
        == "requests"
    groq = Key("cy", "g", groq_tokens_per_day=10)
    admitted = asyncio.run(limits.admit(groq, "g1", 0, True))
    asyncio.run(limits.settle(groq, "g1", admitted.bucket, 0, 17, 17))
    assert asyncio.run(limits.admit(groq, "g2", 0, True)).refused == "groq"
    assert asyncio.run(limits.admit(groq, "g3", 0, False)).refused is None  # not to Groq


def test_usage_in_every_api_shape() -> None:
    assert tokens_of({"prompt_tokens": 5, "completion_tokens": 2,
                      "prompt_tokens_details": {"cached_tokens": 3}}) == {
        "prompt": 5, "cached": 3, "completion": 2}
    assert tokens_of({"input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": 2}) \
        == {"prompt": 6, "cached": 2, "completion": 1}
    assert tokens_of("nothing") is None
    rows = [{"event": "flow", "key": "ann", "route": "groq", "status": 200, "started": 5,
             "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
            {"event": "flow", "key": "ann", "route": "local", "status": 429, "started": 6},
            {"event": "flow", "route": "gpt-oss", "status": 200, "started": 1}]
    assert report(iter(rows), "key", start=2) == {"ann": {
        "requests": 2, "errors": 1, "prompt": 5, "cached": 0, "completion": 2}}


def test_fair_share_lets_the_light_key_go_first() -> None:
    pool = ReplicaPool(ModelServers(None, "vllm", ("http://a",)), "least_loaded")
    fair = FairShare(lambda: 4, lambda: 8)

    async def scenario() -> list[str]:
        for n in range(6):  # the heavy key alone: beyond the capacity too
            assert await fair.enter(f"h{n}", pool, "heavy", 5) == 0.0
        assert await fair.enter("l0", pool, "light", 5) == 0.0  # below its share: at once
        order: list[str] = []

        async def wait(flow: str, key: str) -> None:
            await fair.enter(flow, pool, key, 5)
            order.append(flow)

        waiting = [asyncio.create_task(wait("h6", "heavy")),
                   asyncio.create_task(wait("l1", "light"))]
        await asyncio.sleep(0.01)
        assert order == ["l1"]  # light held 1 of its share of 2: goes; heavy waits
        for n in range(4):  # heavy's streams end: it holds 2, its share: still waits
            fair.leave(f"h{n}")
        await asyncio.sleep(0.15)
        assert order == ["l1"]
        fair.leave("h4")  # 3 on the replica, heavy below its share
        await asyncio.wait_for(asyncio.gather(*waiting), 1)
        return order

    assert asyncio.run(scenario()) == ["l1", "h6"]
    assert FairShare(lambda: 4, lambda: 0).queue() == 0  # FAIR_SHARE_QUEUE=0: off


def test_fair_share_queue_is_bounded() -> None:
    pool = ReplicaPool(ModelServers(None, "vllm", ("http://a",)), "least_loaded")
    fair = FairShare(lambda: 1, lambda: 1)

    async def scenario() -> None:
        await fair.enter("h0", pool, "heavy", 5)
        await fair.enter("l0", pool, "light", 5)
        first = asyncio.create_task(fair.enter("h1", pool, "heavy", 0.3))
        await asyncio.sleep(0.01)
        with pytest.raises(Exception, match="busy"):
            await fair.enter("h2", pool, "heavy", 5)
        with pytest.raises(Exception, match="fair share"):
            await first  # waited past its timeout
        assert time.monotonic() > 0

    asyncio.run(scenario())


def test_the_cli_answers_bad_input_in_one_line(tmp_path) -> None:  # noqa: ANN001
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_STORE", "KEYS_FILE")}

    def keys(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(root / "run.sh"), "keys", *args], cwd=tmp_path, text=True,
                              capture_output=True, timeout=60, env={**env, **extra})

    bad = keys("add", "two words")
    assert bad.returncode == 2 and "a name is 1-64 letters" in bad.stderr and not bad.stdout
    down = keys("list", STATE_STORE="redis://default:pw@127.0.0.1:1/0")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stderr.startswith("keys: cannot use the key book in STATE_STORE's Redis")
    assert "pw@" not in down.stderr
    (tmp_path / "broken.json").write_text("{")
    broken = keys("revoke", "x", KEYS_FILE="broken.json")
    assert broken.returncode == 1 and "broken.json" in broken.stderr
    assert keys("revoke", "nobody").returncode == 1
    first = keys("add", "ann", "--rpm", "5")
    assert first.returncode == 0 and first.stdout.strip().startswith("sk-hgg-")
    assert keys("add", "ann").returncode == 1  # a name once


def test_spill_over_sends_the_heavy_key_and_keeps_the_light_one() -> None:
    pools = Pools(lambda: None)  # type: ignore[arg-type, return-value]
    pools.configure((ModelServers(None, "vllm", ("http://a",)),), "least_loaded")
    pool = pools.for_model("gpt-oss-20b")
    fair = FairShare(lambda: 2, lambda: 8)
    capacity = PoolCapacity(pools, lambda: 2, fair)

    async def scenario() -> None:
        for n in range(2):
            await fair.enter(f"h{n}", pool, "heavy", 5)
        pool.replicas[0].in_flight = 2  # as the dispatcher counts them
        assert capacity.all_full("gpt-oss-20b", "heavy")  # alone and full: spills, as before
        assert not capacity.all_full("gpt-oss-20b", "light")  # below its share: local, first
        await fair.enter("l0", pool, "light", 5)
        assert capacity.all_full("gpt-oss-20b", "light")  # holds its share (1 of 2): spills
        fair.leave("l0")  # light stays active for ACTIVE_SECONDS
        assert not capacity.all_full("gpt-oss-20b", "light")
        assert capacity.all_full("gpt-oss-20b", "heavy")  # over its share: spills

    asyncio.run(scenario())
