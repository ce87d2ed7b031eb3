"""The replica pool against real replicas: two real ``llama-server``s (the tiny GGUF, one slot,
``--swa-full``, one thread each) behind the real mitmdump with ``BACKEND=llamacpp`` and
``TRANSFORMERS_URL=url1,url2``.

- ``scripted``: every reply is FINAL_SCRIPT, forced by a grammar on the servers' command line;
  cache hits are the servers' own ``timings.cache_n`` (the flow log's cached tokens);
- ``repeating``: every reply is an analysis message of `` tick`` up to ``max_tokens``, and a
  continuation from the prompt plus generated ids goes on exactly (``harness.repeating_args``):
  a server killed mid-stream (Chat Completions, Responses, Messages), the stream resumed on the
  other one, the client's text compared with an unbroken run's; the dead replica's ejection
  and return after a restart on its port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from anthropic_stream import check_stream
from conftest import PINNED_DATE
from llamacpp import harness
from proxy_process import ProxyProcess
from realserver.build_tiny_model import FINAL_SCRIPT
from responses_grammar import check_grammar, parse_sse
from test_llamacpp_e2e import ANSWER, MODEL, NO_GROQ, llama_build  # noqa: F401 (fixture)
from test_pool_e2e import flow_of, health, wait_until

pytestmark = pytest.mark.llamacpp

TICKS = 2000  # max_tokens of a repeating reply (~650 tokens/s): the header, 1997 ticks


def pooled_proxy(tmp: Path, servers: list[harness.LlamaServer]) -> ProxyProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    urls = ",".join(s.url for s in servers)
    return ProxyProcess(tmp, upstream=servers[0].url, options={
        "backend": "llamacpp", "transformers_url": urls, "groq_base_url": NO_GROQ,
        "harmony_date": PINNED_DATE, "upstream_timeout": "60"})


def start_pair(build: tuple[Path, Path], work: Path, **options: Any
               ) -> list[harness.LlamaServer]:
    binary, model = build
    return harness.start_servers(binary, model, work, 2, threads=1, **options)


@pytest.fixture(scope="module")
def scripted(llama_build: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory  # noqa: F811
             ) -> Iterator[tuple[list[harness.LlamaServer], ProxyProcess]]:
    servers = start_pair(llama_build, tmp_path_factory.mktemp("scripted"), script=FINAL_SCRIPT)
    proxy = pooled_proxy(tmp_path_factory.mktemp("scripted-proxy"), servers)
    yield servers, proxy
    proxy.stop()
    harness.stop_servers(servers)


@pytest.fixture(scope="module")
def repeating(llama_build: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory  # noqa: F811
              ) -> Iterator[tuple[list[harness.LlamaServer], ProxyProcess, Path]]:
    work = tmp_path_factory.mktemp("repeating")
    servers = start_pair(llama_build, work, extra_args=harness.repeating_args(work))
    proxy = pooled_proxy(tmp_path_factory.mktemp("repeating-proxy"), servers)
    yield servers, proxy, work
    proxy.stop()
    harness.stop_servers(servers)


def client(proxy: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="x", max_retries=0, timeout=60)


def conversation(marker: str, turns: int) -> list[dict[str, str]]:
    """A private conversation (its own ~450-token first message), then ``turns`` exchanges."""
    messages = [{"role": "user", "content": f"{marker}: " + f"{marker} context line. " * 80}]
    for turn in range(turns):
        messages += [{"role": "assistant", "content": ANSWER},
                     {"role": "user", "content": f"question {turn + 1} about {marker}"}]
    return messages


# -- routing, proven by the servers' own cache counts ------------------------------------------

def test_cache_aware_keeps_each_conversation_on_its_warm_real_replica(scripted) -> None:
    servers, proxy = scripted
    sdk = client(proxy)
    homes: dict[str, str] = {}
    previous_prompt: dict[str, int] = {}
    for turn in range(3):
        for marker in ("alpha", "beta"):
            stream = turn == 1
            reply = sdk.chat.completions.create(
                model=MODEL, messages=conversation(marker, turn), stream=stream,
                **({"stream_options": {"include_usage": True}} if stream else {}))
            if stream:
                chunks = list(reply)
                assert "".join(c.choices[0].delta.content or "" for c in chunks
                               if c.choices) == ANSWER
            else:
                assert reply.choices[0].message.content == ANSWER
            record = flow_of(proxy, f"question {turn} about {marker}" if turn else
                               f"{marker}: {marker}")
            (attempt,) = record["replicas"]
            assert attempt["outcome"] == "ok"
            homes.setdefault(marker, attempt["replica"])
            assert attempt["replica"] == homes[marker], f"{marker} turn {turn} moved"
            cached = record["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert attempt["cached_tokens"] == cached  # llama-server's timings.cache_n
            prompt = record["usage"]["prompt_tokens"]
            if turn == 0:
                assert cached <= 1  # a cold slot
            else:  # the whole previous prompt was still in the replica's one slot
                assert previous_prompt[marker] - 2 <= cached < prompt
            previous_prompt[marker] = prompt
    assert set(homes.values()) == {s.url for s in servers}  # the second conversation went
    # to the other replica; /health sums what each server reported.
    replicas = health(proxy)
    for server in servers:
        reported = replicas[server.url]
        assert reported["requests"] == {"ok": 3} and reported["cached_tokens"] > 0
        assert reported["prefix_match_ratio"] > 0.5


# -- a real replica killed mid-stream: resumed on the other one ---------------------------------

def ticks(proxy: ProxyProcess, marker: str, on_chunk: Callable[[int], None] = lambda n: None
          ) -> tuple[str, str, str | None]:
    """A streamed chat reply: (content, reasoning, finish reason)."""
    content, reasoning, finish = [], [], None
    stream = client(proxy).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Count. {marker}"}], stream=True,
        max_tokens=TICKS)
    for n, chunk in enumerate(stream):
        if chunk.choices:
            delta = chunk.choices[0].delta
            content.append(delta.content or "")
            reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
            finish = chunk.choices[0].finish_reason or finish
        on_chunk(n)
    return "".join(content), "".join(reasoning), finish


def restart(build: tuple[Path, Path], repeating: tuple[list[harness.LlamaServer],
            ProxyProcess, Path], dead: harness.LlamaServer) -> float:
    """Start the killed server again on its port; seconds until the proxy has it back."""
    servers, proxy, work = repeating
    binary, model = build
    restarted = harness.LlamaServer(binary, model, work, port=dead.port, threads=1,
                                    extra_args=harness.repeating_args(work))
    servers[servers.index(dead)] = restarted
    restarted.wait_healthy()
    return wait_until(lambda: health(proxy)[dead.url]["up"], 5)


def killer(servers: list[harness.LlamaServer], proxy: ProxyProcess
           ) -> tuple[list[harness.LlamaServer], Callable[[], None]]:
    """``(killed, kill)``: ``kill`` SIGKILLs the server that is serving the one stream."""
    killed: list[harness.LlamaServer] = []

    def kill() -> None:
        if not killed:
            (busy,) = [s for s in servers if health(proxy)[s.url]["in_flight"] == 1]
            busy.kill()
            killed.append(busy)
    return killed, kill


def test_real_replica_killed_mid_stream_resumes_on_the_other_then_returns(
        llama_build, repeating) -> None:  # noqa: F811
    servers, proxy, _ = repeating
    unbroken = ticks(proxy, "whole run")
    assert unbroken == ("", " tick" * (TICKS - 3), "length")
    killed, kill = killer(servers, proxy)

    def kill_serving_replica(chunk: int) -> None:
        if chunk == 5:  # two ticks or more have been sent
            kill()

    assert ticks(proxy, "killed run", kill_serving_replica) == unbroken
    (dead,) = killed
    (other,) = [s for s in servers if s is not dead]
    record = flow_of(proxy, "killed run")
    assert record.get("resumed") == 1 and "error" not in record, record["replicas"]
    first, second = record["replicas"]
    assert (first["replica"], first["outcome"]) == (dead.url, "reset")
    assert (second["replica"], second["outcome"], second["resume"]) == (other.url, "ok", True)
    # The continuation's prompt held what the dead server had sent: the other server was asked
    # for only the rest (its own count of predicted tokens).
    assert record["usage"]["completion_tokens"] == TICKS

    # Ejected at once: new requests never try the dead replica.
    assert health(proxy)[dead.url]["up"] is False
    for n in range(3):
        short = client(proxy).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"while down {n}"}], max_tokens=8)
        assert short.choices[0].finish_reason == "length"
        assert [a["replica"] for a in flow_of(proxy, f"while down {n}")["replicas"]] == \
            [other.url]
    # Restarted on its port: back within seconds, and a new conversation (a private prompt:
    # a short one would follow the shared system prompt's blocks) goes to it, the replica
    # holding least.
    assert restart(llama_build, repeating, dead) < 5
    client(proxy).chat.completions.create(
        model=MODEL, messages=conversation("restarted", 0), max_tokens=8)
    assert [a["replica"] for a in flow_of(proxy, "restarted")["replicas"]] == [dead.url]


RAW_APIS = {  # client API → (path, body, headers)
    "responses": ("/v1/responses", {"model": MODEL, "stream": True,
                                    "max_output_tokens": TICKS}, {}),
    "messages": ("/v1/messages", {"model": MODEL, "stream": True, "max_tokens": TICKS},
                 {"anthropic-version": "2023-06-01"}),
}


def raw_ticks(proxy: ProxyProcess, api: str, marker: str, kill: Callable[[], None] | None
              ) -> tuple[Any, ...]:
    """A streamed Responses or Messages reply, checked against the API's event grammar:
    (end state, [(part type, text)]); ``kill`` is called once three ticks reached the client."""
    path, body, headers = RAW_APIS[api]
    text = f"Count. {marker}"
    body = {**body, **({"input": text} if api == "responses"
                       else {"messages": [{"role": "user", "content": text}]})}
    raw = harness.stream_raw(proxy.root_url + path, body,
                             {"authorization": "Bearer x", **headers}, b"tick", kill)
    if api == "responses":
        final = check_grammar(parse_sse(raw))
        return (final["status"], final.get("incomplete_details"),
                [(item["type"], "".join(part.get("text", "")
                                        for part in item.get("content") or []))
                 for item in final["output"]])
    ended = check_stream(raw)
    return (ended["stop_reason"], None,
            [(block["type"], block.get("thinking") or block.get("text"))
             for block in ended["content"]])


@pytest.mark.parametrize("api", RAW_APIS)
def test_responses_and_messages_streams_resume_on_the_other_real_replica(
        llama_build, repeating, api: str) -> None:  # noqa: F811
    servers, proxy, _ = repeating
    unbroken = raw_ticks(proxy, api, f"whole {api}", None)
    assert unbroken == ({"responses": ("incomplete", {"reason": "max_output_tokens"}),
                         "messages": ("max_tokens", None)}[api]
                        + ([({"responses": "reasoning", "messages": "thinking"}[api],
                              " tick" * (TICKS - 3))],))
    killed, kill = killer(servers, proxy)
    assert raw_ticks(proxy, api, f"killed {api}", kill) == unbroken
    record = flow_of(proxy, f"killed {api}")
    assert record.get("resumed") == 1 and "error" not in record, record["replicas"]
    assert [a["outcome"] for a in record["replicas"]] == ["reset", "ok"]
    assert record["replicas"][0]["replica"] == killed[0].url
    assert restart(llama_build, repeating, killed[0]) < 5
