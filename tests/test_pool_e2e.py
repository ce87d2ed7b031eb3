"""Several replicas behind the real mitmdump: cache-aware routing, ejection and return,
failover before the first token, and broken streams resumed on another replica, for Chat
Completions, Responses and Anthropic Messages (the fake replicas of ``fakes_replicas``)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from harmony_groq.encoding import harmony_encoding

from fakes import FakeTransformers, Scripted, token_pieces
from fakes_replicas import FakeReplica
from proxy_process import ProxyProcess, run_to_exit

LONG_REPLY = ("<|channel|>analysis<|message|>The user wants a short poem about caches; four "
              "lines will do.<|end|><|start|>assistant<|channel|>final<|message|>Blocks of "
              "sixteen tokens wait, warm on the replica that saw them first; the router "
              "remembers, and the prompt comes home.<|return|>")
REASONING = "The user wants a short poem about caches; four lines will do."
ANSWER = ("Blocks of sixteen tokens wait, warm on the replica that saw them first; the router "
          "remembers, and the prompt comes home.")


@pytest.fixture(scope="module")
def replica_servers() -> Iterator[list[FakeReplica]]:
    servers = [FakeReplica(reply_for=lambda prompt: LONG_REPLY) for _ in range(3)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture()
def replicas(replica_servers: list[FakeReplica]) -> list[FakeReplica]:
    for server in replica_servers:
        if server.dead:
            server.heal()
        server.reset_state()
    return replica_servers


@pytest.fixture()
def pooled(start_proxy, replicas: list[FakeReplica]) -> Callable[..., ProxyProcess]:
    def start(**options: str) -> ProxyProcess:
        return start_proxy(options={"transformers_url": ",".join(r.url for r in replicas),
                                    "backend": "vllm", **options})
    return start


def served(replicas: list[FakeReplica]) -> list[int]:
    return [len(r.prompts) for r in replicas]


def conversation(marker: str, turns: int) -> list[dict[str, str]]:
    """A private conversation: its own long first message, then ``turns`` exchanges."""
    messages = [{"role": "user", "content": f"{marker} " + "context line. " * 200}]
    for turn in range(turns):
        messages += [{"role": "assistant", "content": f"answer {turn}"},
                     {"role": "user", "content": f"question {turn + 1}"}]
    return messages


def chat(proxy: ProxyProcess, messages: list[dict[str, str]], stream: bool = False
         ) -> tuple[str, str]:
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
    if not stream:
        message = client.chat.completions.create(model="gpt-oss-120b",
                                                 messages=messages).choices[0].message
        return message.content or "", (message.model_extra or {}).get("reasoning_content", "")
    content, reasoning = [], []
    for chunk in client.chat.completions.create(model="gpt-oss-120b", messages=messages,
                                                stream=True):
        if chunk.choices:
            delta = chunk.choices[0].delta
            content.append(delta.content or "")
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
    return "".join(content), "".join(reasoning)


def responses(proxy: ProxyProcess, text: str) -> tuple[str, str]:
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
    with client.responses.stream(model="gpt-oss-120b", input=text) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    reasoning = "".join(part.text for item in final.output if item.type == "reasoning"
                        for part in item.content or ())
    return final.output_text, reasoning


def messages(proxy: ProxyProcess, text: str) -> tuple[str, str]:
    client = anthropic.Anthropic(base_url=proxy.root_url, api_key="x", max_retries=0,
                                 timeout=20)
    with client.messages.stream(model="gpt-oss-120b", max_tokens=1024,
                                messages=[{"role": "user", "content": text}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    return ("".join(b.text for b in final.content if b.type == "text"),
            "".join(b.thinking for b in final.content if b.type == "thinking"))


DIALECTS = {"chat": lambda proxy, text: chat(proxy, [{"role": "user", "content": text}], True),
            "responses": responses, "messages": messages}


def health(proxy: ProxyProcess) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{proxy.root_url}/health", timeout=5).json()
    return {r["url"]: r for pool in body["replicas"] for r in pool["replicas"]}


def metric(proxy: ProxyProcess, name: str, url: str, **labels: str) -> float:
    """One replica's sample in /metrics (labels in any order)."""
    text = httpx.get(f"{proxy.root_url}/metrics", timeout=5).text
    wanted = {"model": "*", "replica": url, **labels}
    for line in text.splitlines():
        match = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == wanted:
            return float(match.group(2))
    raise AssertionError(f"{name} {wanted} not in /metrics")


def wait_until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def flow_of(proxy: ProxyProcess, marker: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        return next((r for r in proxy.log_records() if marker in str(r.get("client_request"))),
                    None)
    wait_until(lambda: found() is not None, 5)
    record = found()
    assert record is not None
    return record


# -- routing ------------------------------------------------------------------------------------

def test_cache_aware_keeps_each_conversation_on_its_warm_replica(pooled, replicas) -> None:
    proxy = pooled()
    homes = []
    for marker in ("alpha", "beta", "gamma"):
        before = served(replicas)
        chat(proxy, conversation(marker, 0))
        homes.append(next(i for i, (a, b) in enumerate(zip(before, served(replicas),
                                                           strict=True)) if b > a))
    assert sorted(homes) == [0, 1, 2]  # cold conversations spread by load
    for turn in (1, 2, 3):
        for marker, home in zip(("alpha", "beta", "gamma"), homes, strict=True):
            before = served(replicas)
            chat(proxy, conversation(marker, turn), stream=turn == 2)
            assert [b - a for a, b in zip(before, served(replicas), strict=True)] == [
                int(i == home) for i in range(3)], f"{marker} turn {turn} left its replica"
    # The engine's own count agrees: every later turn found its prefix cached, and /metrics
    # counts what each replica reported, once per request (streams repeat it every chunk).
    for replica in replicas:
        assert replica.reported[0] == 0 and all(n > 600 for n in replica.reported[1:])
        assert metric(proxy, "harmony_groq_replica_cached_tokens_total", replica.url) == \
            sum(replica.reported)
    ratio = [metric(proxy, "harmony_groq_replica_prefix_match_ratio", r.url) for r in replicas]
    assert all(0.5 < value < 1 for value in ratio)


def test_the_engines_own_load_keeps_new_conversations_away(pooled, replicas) -> None:
    """vLLM's /metrics says replica 0 is busy with other clients' requests: new conversations
    go to the others, and the spill-over question "all full?" counts them."""
    replicas[0].engine_running = 40
    proxy = pooled(routing="least_loaded")
    wait_until(lambda: health(proxy)[replicas[0].url]["engine_load"] == 40, 5)
    for n in range(4):
        chat(proxy, conversation(f"busy-{n}", 0))
    assert served(replicas)[0] == 0 and sum(served(replicas)) == 4


def test_round_robin_ignores_the_cache(pooled, replicas) -> None:
    proxy = pooled(routing="round_robin")
    for turn in range(6):
        chat(proxy, conversation("delta", turn))
    assert served(replicas) == [2, 2, 2]


def test_model_servers_give_each_model_its_own_replicas(start_proxy, replicas) -> None:
    big, small = replicas[0], replicas[1:]
    proxy = start_proxy(options={
        "transformers_url": small[0].url, "backend": "vllm", "routing": "round_robin",
        "model_servers": f"gpt-oss-120b=vllm:{big.url};gpt-oss-20b="
                         + "|".join(f"vllm:{r.url}" for r in small)})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
    for model in ("gpt-oss-120b", "gpt-oss-20b", "gpt-oss-20b", "openai/gpt-oss-120b"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert served(replicas) == [2, 1, 1]
    pools = httpx.get(f"{proxy.root_url}/health", timeout=5).json()["replicas"]
    assert [(p["model"], len(p["replicas"])) for p in pools] == [
        ("gpt-oss-120b", 1), ("gpt-oss-20b", 2), ("*", 1)]


@pytest.mark.parametrize(("setting", "line"), [
    ("transformers_url=http://127.0.0.1:1,ftp://x", "transformers_url='ftp://x' is not an "
                                                     "http(s) URL"),
    ("model_servers=gpt-oss-120b=vllm:http://a:1|llamacpp:http://b:2",
     "the replicas of gpt-oss-120b mix kinds (llamacpp, vllm); one kind per model"),
    ("model_servers=gpt-oss-120b=sglang:http://a:1", "start it with one of transformers, "
                                                      "vllm, llamacpp"),
    ("routing=random", "routing='random': choose one of cache_aware, least_loaded, "
                       "round_robin"),
])
def test_bad_replica_settings_fail_with_one_line(tmp_path, setting: str, line: str) -> None:
    result = run_to_exit(tmp_path, ["--mode", "reverse:http://127.0.0.1:9@127.0.0.1:0",
                                    "--set", setting])
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert line in output and "Traceback" not in output


# -- health, failover ---------------------------------------------------------------------------

def test_dead_replica_is_ejected_at_once_and_back_when_healed(pooled, replicas) -> None:
    proxy = pooled(routing="round_robin")
    dead = replicas[1]
    dead.kill()
    for n in range(6):  # round robin would send two of these to the dead replica
        assert chat(proxy, [{"role": "user", "content": f"q{n}"}], stream=bool(n % 2))[0] == \
            ANSWER
    assert health(proxy)[dead.url]["up"] is False
    assert len(dead.prompts) == 0 and sum(served(replicas)) == 6
    assert metric(proxy, "harmony_groq_replica_up", dead.url) == 0
    failed = sum(metric(proxy, "harmony_groq_replica_requests_total", dead.url, outcome=o)
                 for o in ("refused", "reset"))
    assert failed <= 1  # ejected by the first failure (or the health probe before it)
    dead.heal()
    assert wait_until(lambda: health(proxy)[dead.url]["up"], 5) < 5
    for n in range(3):
        chat(proxy, [{"role": "user", "content": f"r{n}"}])
    assert len(dead.prompts) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_5xx_before_the_first_token_fails_over(pooled, replicas, stream: bool) -> None:
    proxy = pooled(routing="round_robin")
    for replica in replicas[:2]:
        replica.fail_status = 503
    marker = f"m-{uuid.uuid4().hex[:8]}"
    assert chat(proxy, [{"role": "user", "content": marker}], stream) == (ANSWER, REASONING)
    assert served(replicas) == [1, 1, 1]
    record = flow_of(proxy, marker)
    assert [r.get("outcome") for r in record["replicas"]] == ["http_5xx", "http_5xx", "ok"]
    assert record["status"] == 200 and "error" not in record


@pytest.mark.parametrize("dialect", DIALECTS)
def test_replica_dying_before_it_answers_fails_over(pooled, replicas, dialect: str) -> None:
    """mitmproxy had forwarded the stream: the answer comes from the next replica all the same."""
    proxy = pooled(routing="round_robin")
    for replica in replicas[:2]:
        replica.drop_request = True
    marker = f"Write a poem. {uuid.uuid4().hex[:8]}"
    assert DIALECTS[dialect](proxy, marker) == (ANSWER, REASONING)
    record = flow_of(proxy, marker.split()[-1])
    assert [r["outcome"] for r in record["replicas"]] == ["reset", "reset", "ok"]
    assert record["status"] == 200 and "error" not in record and record["failed_over"] == 2
    assert "recovered_error" in record


def test_replica_silent_past_the_timeout_fails_over(pooled, replicas) -> None:
    proxy = pooled(routing="round_robin", upstream_timeout="1")
    replicas[1].stall = 4  # round robin's first pick
    marker = f"m-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    assert chat(proxy, [{"role": "user", "content": marker}], stream=True) == (ANSWER, REASONING)
    assert time.monotonic() - started < 3
    record = flow_of(proxy, marker)
    first, second = record["replicas"]
    assert (first["replica"], first["outcome"], first["problem"]) == (
        replicas[1].url, "timeout", "no token within 1 s")
    assert second["outcome"] == "ok" and second["replica"] != replicas[1].url


def test_no_replica_left_says_so(pooled, replicas) -> None:
    proxy = pooled()
    for replica in replicas:
        replica.kill()
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-oss-120b", stream=True,
                                       messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    assert "No gpt-oss model server of gpt-oss-120b could serve the request" in \
        info.value.message
    assert all(r.url in info.value.message for r in replicas)


# -- resume -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", DIALECTS)
def test_stream_broken_mid_reply_resumes_with_identical_text(pooled, replicas,
                                                             dialect: str) -> None:
    proxy = pooled(routing="round_robin")
    ask = DIALECTS[dialect]
    unbroken = ask(proxy, "Write a poem. unbroken")
    assert unbroken == (ANSWER, REASONING)
    home = next(i for i, r in enumerate(replicas) if r.prompts)
    broken = replicas[(home + 1) % 3]  # the next in the round
    broken.reset_after = 12  # events: inside the reasoning
    marker = f"Write a poem. {uuid.uuid4().hex[:8]}"
    assert ask(proxy, marker) == unbroken
    record = flow_of(proxy, marker.split()[-1])
    assert record.get("resumed") == 1 and "error" not in record, record["replicas"]
    first, second = record["replicas"]
    assert (first["replica"], first["outcome"]) == (broken.url, "reset")
    assert second["resume"] is True and second["outcome"] == "ok"
    # The continuation asked for the prompt plus the twelve tokens already sent.
    resumed_on = next(r for r in replicas if r.url == second["replica"])
    assert resumed_on.prompts[-1][:-12] == broken.prompts[-1]
    assert resumed_on.prompts[-1][-12:] == broken.generated[-1].ids[:12]
    assert metric(proxy, "harmony_groq_replica_resumes_total", resumed_on.url) == 1


def test_a_constrained_reply_under_way_is_not_resumed(pooled, replicas) -> None:
    """A json_schema answer's constraint covers the whole reply from its start, so a reply
    broken mid-way ends as a failed stream (the dialect's error event), never continued."""
    proxy = pooled(routing="round_robin")
    marker = f"m-{uuid.uuid4().hex[:8]}"
    for replica in replicas:
        replica.reset_after = 12  # events: inside the reasoning, wherever it lands
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    body = {"model": "gpt-oss-120b", "stream": True,
            "messages": [{"role": "user", "content": marker}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "s", "schema": schema, "strict": True}}}
    with httpx.stream("POST", f"{proxy.base_url}/chat/completions", json=body,
                      timeout=20) as response:
        text = response.read().decode()
    assert response.status_code == 200
    assert '"code": "stream_interrupted"' in text  # the chat dialect's failed end
    record = flow_of(proxy, marker)
    assert record["resume_refused"] == "constrained" and "resumed" not in record
    assert [r["outcome"] for r in record["replicas"]] == ["reset"]
    assert "structured_outputs" in json.dumps(record["upstream_request"]["body"])


def test_text_backend_resumes_from_the_text_so_far(start_proxy) -> None:
    """``transformers serve`` takes text: the continuation's prompt is the prompt plus the text
    generated so far, and the fake continues it the way it would have gone on."""
    servers = [FakeTransformers(), FakeTransformers()]
    breaks = [True]

    def continue_reply(prompt: str) -> Scripted:
        done = next(k for k in range(len(LONG_REPLY), -1, -1) if prompt.endswith(LONG_REPLY[:k]))
        script = Scripted(LONG_REPLY[done:], reset_after=12 if breaks[0] else None)
        breaks[0] = False
        return script

    try:
        for server in servers:
            server.respond(continue_reply)
        proxy = start_proxy(options={"transformers_url": ",".join(s.url for s in servers)})
        assert chat(proxy, [{"role": "user", "content": "Write a poem."}], True) == \
            (ANSWER, REASONING)
        first, second = sorted((p for s in servers for p in s.prompts), key=len)
        assert second.startswith(first)
        assert second[len(first):] == "".join(token_pieces(LONG_REPLY)[:12])
    finally:
        for server in servers:
            server.close()


def test_reply_complete_but_the_body_end_lost_still_ends_cleanly(pooled, replicas) -> None:
    """The replica dies after the last token, before its body's end: nothing to resume, and
    the client's stream still ends properly (no "incomplete chunked read")."""
    proxy = pooled()
    events = len(harmony_encoding().encode(LONG_REPLY, allowed_special="all"))
    for replica in replicas:
        replica.reset_after = events
        replica.token_delay = 0.05  # the last token is read before the reset, which drops data
    # Read to the body's end (the openai SDK stops at [DONE] and would not notice).
    with httpx.stream("POST", f"{proxy.base_url}/chat/completions", timeout=20, json={
            "model": "gpt-oss-120b", "stream": True,
            "messages": [{"role": "user", "content": "x"}]}) as response:
        body = b"".join(response.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n") and ANSWER.split()[0].encode() in body
    assert sum(len(r.prompts) for r in replicas) == 1


def test_every_replica_breaking_ends_the_stream_as_a_failed_stream(pooled, replicas) -> None:
    proxy = pooled(replica_attempts="2")
    for replica in replicas:
        replica.reset_after = 5
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=20)
    with pytest.raises(openai.APIError, match="no replica could continue it"):
        list(client.chat.completions.create(model="gpt-oss-120b", stream=True,
                                            messages=[{"role": "user", "content": "x"}]))
