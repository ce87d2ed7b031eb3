"""The replica pool without a proxy: settings, the prefix-cache estimate, routing policies,
ejection, and the continuation adapter."""

from __future__ import annotations

import random

import pytest
from mitmproxy import exceptions

from harmony_groq.backends import BackendOutput, VllmBackend
from harmony_groq.labels import flow_label
from harmony_groq.pool.dispatch import cached_tokens
from harmony_groq.pool.pool import Pools, ReplicaPool, engine_load
from harmony_groq.pool.prefix import BLOCK_TOKENS, PrefixIndex, block_hashes
from harmony_groq.pool.replica import Replica, choose
from harmony_groq.pool.resume import ContinuedBackend
from harmony_groq.replica_spec import ModelServers, SpecError, group_for, model_servers
from harmony_groq.settings import OPTION_DEFAULTS, build_config

KINDS = ("transformers", "vllm", "llamacpp")


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(200_000) for _ in range(n)]


# -- settings -----------------------------------------------------------------------------------

def test_one_url_is_unchanged_and_a_list_makes_replicas() -> None:
    one = build_config({**OPTION_DEFAULTS, "transformers_url": "http://h:8000/"}, {})
    assert one.transformers_url == "http://h:8000"
    assert one.model_servers == (ModelServers(None, "transformers", ("http://h:8000",)),)
    many = build_config({**OPTION_DEFAULTS, "backend": "vllm",
                         "transformers_url": "http://a:1, http://b:2"}, {})
    assert many.transformers_url == "http://a:1"
    assert many.model_servers[-1] == ModelServers(None, "vllm", ("http://a:1", "http://b:2"))


def test_model_servers_parse_per_model_groups() -> None:
    groups = model_servers("gpt-oss-120b=vllm:http://a:1|vllm:http://b:1 ; "
                           "gpt-oss-20b=llamacpp:http://c:2", KINDS)
    assert groups == (ModelServers("gpt-oss-120b", "vllm", ("http://a:1", "http://b:1")),
                      ModelServers("gpt-oss-20b", "llamacpp", ("http://c:2",)))
    default = ModelServers(None, "transformers", ("http://d:3",))
    every = (*groups, default)
    assert group_for(every, "gpt-oss-120b") is groups[0]
    assert group_for(every, "openai/GPT-OSS-20B") is groups[1]
    assert group_for(every, "my-harmony-model") is default


@pytest.mark.parametrize(("value", "message"), [
    ("gpt-oss-120b", "is not MODEL=KIND:URL|KIND:URL"),
    ("gpt-oss-120b=http://a:1", "start it with one of transformers, vllm, llamacpp"),
    ("m=vllm:http://a:1;m=vllm:http://b:1", "names 'm' twice"),
    ("m=vllm:http://a:1|vllm:http://a:1", "names a replica twice"),
    ("m=vllm:http://a:1|llamacpp:http://b:1", "mix kinds (llamacpp, vllm)"),
    ("m=vllm:a:1", "is not an http(s) URL"),
])
def test_bad_model_servers_are_one_clear_line(value: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("|", r"\|")):
        model_servers(value, KINDS)
    with pytest.raises(exceptions.OptionsError):
        build_config({**OPTION_DEFAULTS, "model_servers": value}, {})


# -- prefix estimate ----------------------------------------------------------------------------

def test_block_hashes_are_chained_over_full_blocks() -> None:
    prompt = ids(100, 1)
    hashes = block_hashes(prompt)
    assert len(hashes) == 100 // BLOCK_TOKENS
    assert block_hashes(prompt + ids(40, 2))[:6] == hashes  # a longer prompt shares the prefix
    changed = prompt.copy()
    changed[3] += 1  # a change in the first block changes every later key
    assert not set(block_hashes(changed)) & set(hashes)


def test_index_matches_the_longest_held_prefix_and_evicts_tails_first() -> None:
    index = PrefixIndex(capacity=8)
    first = block_hashes(ids(6 * BLOCK_TOKENS, 1))
    index.add(first)
    assert index.matched(first) == 6
    assert index.matched(first[:3] + block_hashes(ids(64, 9))) == 3
    second = block_hashes(ids(6 * BLOCK_TOKENS, 2))
    index.add(second)  # 12 blocks > 8 × 5/4: the oldest tail goes, a prefix survives
    assert index.matched(second) == 6
    assert len(index.blocks) == 8
    assert index.matched(first) == 2


# -- policies -----------------------------------------------------------------------------------

def replicas(count: int) -> list[Replica]:
    return [Replica(f"http://r{i}", "vllm", PrefixIndex(10_000), i) for i in range(count)]


def test_cache_aware_prefers_the_warm_replica_until_it_is_overloaded() -> None:
    pool = replicas(4)
    hashes = block_hashes(ids(4000, 1))
    pool[2].index.add(hashes[:200])
    choice = choose("cache_aware", pool, hashes, 0)
    assert choice is not None and (choice.replica.url, choice.matched_blocks) == ("http://r2", 200)
    pool[2].in_flight = 3  # 3 + 1 > 1.5 × mean (4 / 4) and mean + 1: a pile-up, go elsewhere
    choice = choose("cache_aware", pool, hashes, 0)
    assert choice is not None and choice.replica.url != "http://r2"


def test_a_new_conversation_goes_where_least_is_held() -> None:
    pool = replicas(3)
    shared = block_hashes(ids(64, 1))  # a shared system prompt: 4 blocks of a 100-block prompt
    for replica in pool[:2]:
        replica.index.add(shared + block_hashes(ids(1000, replica.position + 10))[4:])
    prompt = shared + block_hashes(ids(1600, 99))[4:]
    choice = choose("cache_aware", pool, prompt, 0)
    assert choice is not None and choice.replica.url == "http://r2"


def test_round_robin_least_loaded_and_down_replicas() -> None:
    pool = replicas(3)
    picked = [choose("round_robin", pool, [], turn).replica.url for turn in range(4)]
    assert picked == ["http://r0", "http://r1", "http://r2", "http://r0"]
    pool[0].in_flight, pool[1].in_flight = 2, 1
    assert choose("least_loaded", pool, [], 0).replica.url == "http://r2"
    pool[2].eject("refused")
    assert choose("least_loaded", pool, [], 0).replica.url == "http://r1"
    assert choose("cache_aware", pool, [], 0, frozenset({"http://r1"})).replica.url == \
        "http://r0"
    for replica in pool:
        replica.eject("refused")
    # Every replica down: one is tried anyway rather than failing the request unasked.
    assert choose("cache_aware", pool, [], 0) is not None
    assert choose("cache_aware", pool, [], 0, frozenset(r.url for r in pool)) is None


def test_engine_load_from_vllm_and_llamacpp_metrics() -> None:
    vllm = ('# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} 7.0\n')
    assert engine_load("vllm", vllm) == 11
    assert engine_load("llamacpp", "llamacpp:requests_processing 2\n"
                                   "llamacpp:requests_deferred 5\n") == 7
    assert engine_load("vllm", "other_metric 1\n") is None
    assert engine_load("vllm", "not {{ prometheus") is None
    pool = replicas(2)
    pool[0].engine_load = 9  # other proxies' requests: more than this one's own in flight
    assert pool[0].load == 9 and choose("least_loaded", pool, [], 0).replica.url == "http://r1"


def test_restored_replica_starts_with_an_empty_cache() -> None:
    replica = replicas(1)[0]
    replica.index.add(block_hashes(ids(64, 1)))
    replica.eject("reset")
    assert not replica.up and replica.problem == "reset"
    replica.restore()
    assert replica.up and not replica.index.blocks


def test_spillover_questions() -> None:
    pools = Pools(lambda: None)  # type: ignore[arg-type, return-value]
    pools.configure((ModelServers("gpt-oss-120b", "vllm", ("http://a", "http://b")),
                     ModelServers(None, "transformers", ("http://c",))), "cache_aware")
    big: ReplicaPool = pools.for_model("gpt-oss-120b")
    assert pools.can_serve("gpt-oss-120b") and not pools.all_full("gpt-oss-120b", 2)
    big.replicas[0].in_flight = 2
    big.replicas[1].eject("refused")
    assert pools.all_full("gpt-oss-120b", 2) and not pools.all_full("gpt-oss-20b", 2)
    big.replicas[0].eject("refused")
    assert not pools.can_serve("gpt-oss-120b") and pools.can_serve("gpt-oss-20b")


# -- engine reports, continuation ---------------------------------------------------------------

def test_cached_tokens_as_vllm_and_llamacpp_report_them() -> None:
    assert cached_tokens(b'{"usage": {"prompt_tokens_details": {"cached_tokens": 480}}}') == 480
    assert cached_tokens(b'data: {"stop": true, "timings": {"cache_n": 96, "prompt_n": 4}}') == 96
    assert cached_tokens(b'{"usage": {"prompt_tokens_details": null}}') is None


def test_a_continuation_counts_as_the_whole_reply() -> None:
    backend = ContinuedBackend(VllmBackend(), generated=12)
    output = backend.read_event({"choices": [], "usage": {"prompt_tokens": 112,
                                                          "completion_tokens": 30}})
    assert output == BackendOutput(prompt_tokens=100, completion_tokens=42)
    assert backend.completions_path == "/v1/completions" and not backend.text_transport


def test_mitmweb_label_says_what_the_pool_did() -> None:
    summary = {"route": "gpt-oss", "model": "gpt-oss-120b", "status": 200, "stream": True,
               "usage": {"prompt_tokens": 90, "completion_tokens": 40}, "ttft_ms": 30.0}
    assert flow_label({**summary, "failed_over": 1, "resumed": 2}) == (
        "gpt-oss · gpt-oss-120b · 200 · 90→40 tok · failover ×1 · resumed ×2 · TTFT 30 ms")
    assert "resumed" not in flow_label(summary) and "failover" not in flow_label(summary)
