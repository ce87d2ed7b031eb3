"""Web search on local gpt-oss through the real mitmdump: harmony's browser run by the proxy
(tools/), against a SearXNG-shaped server and real HTML pages on 127.0.0.1, in every API,
whole and streamed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from fakes_web import FakeSearxng, FakeWeb
from harmony_rules import browser_call, browser_declared, final, messages
from proxy_process import ProxyProcess

ANSWER = "gpt-oss was trained on harmony 【1†L2-L3】 and declares tools in system."


@pytest.fixture(scope="module")
def web() -> Iterator[FakeWeb]:
    server = FakeWeb()
    yield server
    server.close()


@pytest.fixture(scope="module")
def searxng_server() -> Iterator[FakeSearxng]:
    server = FakeSearxng()
    yield server
    server.close()


@pytest.fixture()
def searxng(searxng_server: FakeSearxng, web: FakeWeb) -> FakeSearxng:
    searxng_server.reset_state()
    searxng_server.results = web.results()
    return searxng_server


def tool_options(searxng: FakeSearxng, **extra: str) -> dict[str, str]:
    return {"search_backend": "searxng", "searxng_url": searxng.url,
            "allow_private_urls": "127.0.0.1", "fetch_timeout": "3", **extra}


@pytest.fixture()
def search_proxy(start_proxy: Callable[..., ProxyProcess], searxng: FakeSearxng
                 ) -> ProxyProcess:
    return start_proxy(tool_options(searxng))


def last_author(prompt: str) -> str:
    return messages(prompt)[-1].author


def search_then_open(query: str = "harmony format", answer: str = ANSWER
                     ) -> Callable[[str], str]:
    """gpt-oss's browsing: search, open the first result, answer citing the opened page."""
    def rule(prompt: str) -> str:
        if not browser_declared(prompt):
            return final("No browser here.")
        author = last_author(prompt)
        if author == "browser.search":
            return browser_call("open", {"id": 0}, "The first result looks right.")
        if author == "browser.open":
            return final(answer, "The page says it.")
        return browser_call("search", {"query": query}, "I should search.")
    return rule


def check_prompts(fake: FakeTransformers, web: FakeWeb) -> None:
    """Three steps: the second prompt holds the search page, the third the opened page, in
    the reference browser's display."""
    assert len(fake.prompts) == 3
    second, third = fake.prompts[1], fake.prompts[2]
    assert third.startswith(second[: len(fake.prompts[0])])  # each step extends the last
    search = messages(second)[-1]
    assert search.author == "browser.search"
    assert search.content.startswith("[0] Search results for `harmony format`\n**viewing lines")
    assert "【0†The harmony response format†127.0.0.1】" in search.content
    page = messages(third)[-1]
    assert page.author == "browser.open"
    assert page.content.startswith(f"[1] The harmony response format ({web.url}/harmony)\n"
                                   "**viewing lines [0 - ")
    assert "\nL2: gpt-oss models were trained on the harmony response format.\n" in page.content
    assert "tracking" not in page.content and "font:" not in page.content
    assert "【1†the tools page†127.0.0.1】" in page.content


def test_responses_whole(search_proxy: ProxyProcess, fake_transformers: FakeTransformers,
                         searxng: FakeSearxng, web: FakeWeb) -> None:
    fake_transformers.respond(search_then_open())
    client = openai.OpenAI(base_url=search_proxy.base_url, api_key="k", max_retries=0,
                           timeout=30)
    response = client.responses.create(model="gpt-oss-20b", input="What format does gpt-oss use?",
                                       tools=[{"type": "web_search"}])
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "web_search_call", "reasoning", "web_search_call",
                     "reasoning", "message"]
    search, opened = response.output[1], response.output[3]
    assert search.action.type == "search" and search.action.query == "harmony format"
    assert search.status == "completed"
    assert opened.action.type == "open_page" and opened.action.url == f"{web.url}/harmony"
    text = response.output[-1].content[0]
    assert text.text == "gpt-oss was trained on harmony  and declares tools in system."
    assert [(a.type, a.url, a.start_index, a.end_index) for a in text.annotations] == [
        ("url_citation", f"{web.url}/harmony", 0, 31)]
    assert searxng.queries == ["harmony format"]
    check_prompts(fake_transformers, web)
    record = search_proxy.last_record('"tool_steps"')
    search_step, open_step = record["tool_steps"]
    assert (search_step["action"], search_step["backend"], search_step["results"]) == (
        "search", "searxng", 2)
    assert open_step["url"] == f"{web.url}/harmony" and open_step["bytes"] > 400
    metrics = httpx.get(f"{search_proxy.root_url}/metrics", timeout=10).text
    assert ('harmony_groq_tool_steps_total{action="open_page",backend="fetch",kind="web_search",'
            'outcome="ok"} 1.0') in metrics
    assert 'harmony_groq_tool_step_seconds_count{action="search",kind="web_search"} 1.0' \
        in metrics


def test_search_key_never_logged(start_proxy: Callable[..., ProxyProcess],
                                 fake_transformers: FakeTransformers,
                                 searxng: FakeSearxng) -> None:
    """A search backend's key (here one the client quotes back) is redacted from the log."""
    key = "tvly-secret-key-0123456789abcdef"
    proxy = start_proxy(tool_options(searxng), env={"TAVILY_API_KEY": key})
    fake_transformers.respond(steps(("search", {"query": key}), answer=f"The key is {key}"))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0, timeout=30)
    client.responses.create(model="gpt-oss-20b", input="hi", tools=[{"type": "web_search"}])
    proxy.last_record('"tool_steps"')
    assert key not in proxy.log_path.read_text()
    assert key not in httpx.get(f"{proxy.root_url}/metrics", timeout=10).text


def test_responses_streamed(search_proxy: ProxyProcess, fake_transformers: FakeTransformers,
                            searxng: FakeSearxng, web: FakeWeb) -> None:
    fake_transformers.respond(search_then_open())
    client = openai.OpenAI(base_url=search_proxy.base_url, api_key="k", max_retries=0,
                           timeout=30)
    events = list(client.responses.create(model="gpt-oss-20b", input="What format?",
                                          tools=[{"type": "web_search_preview"}], stream=True))
    sequence = [e.sequence_number for e in events]
    assert sequence == list(range(len(sequence)))
    types = [e.type for e in events]
    first_call = types.index("response.web_search_call.in_progress")
    assert types[first_call - 1] == "response.output_item.added"
    assert types[first_call: first_call + 3] == [
        "response.web_search_call.in_progress", "response.web_search_call.searching",
        "response.web_search_call.completed"]
    assert types.count("response.web_search_call.completed") == 2
    assert "response.output_text.annotation.added" in types
    done = [e.item for e in events if e.type == "response.output_item.done"]
    indexes = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert indexes == list(range(len(done)))
    final_response = events[-1].response
    assert events[-1].type == "response.completed"
    assert [i.type for i in final_response.output] == [i.type for i in done]
    message = final_response.output[-1]
    assert "【" not in message.content[0].text
    assert message.content[0].annotations[0].url == f"{web.url}/harmony"
    check_prompts(fake_transformers, web)


def anthropic_client(proxy: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.base_url.removesuffix("/v1"), api_key="k",
                               max_retries=0, timeout=30)


WEB_SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}


def check_message_blocks(content: list[Any], web: FakeWeb) -> None:
    kinds = [block.type for block in content]
    assert kinds[:3] == ["thinking", "server_tool_use", "web_search_tool_result"]
    use, result = content[1], content[2]
    assert use.name == "web_search" and use.input == {"query": "harmony format"}
    assert use.id.startswith("srvtoolu_") and result.tool_use_id == use.id
    assert [r.url for r in result.content] == [f"{web.url}/harmony", f"{web.url}/tools"]
    assert result.content[0].title == "The harmony response format"
    texts = [block for block in content if block.type == "text"]
    assert "".join(t.text for t in texts) == (
        "gpt-oss was trained on harmony  and declares tools in system.")
    cited = [t for t in texts if t.citations]
    assert len(cited) == 1 and cited[0].text == "gpt-oss was trained on harmony "
    citation = cited[0].citations[0]
    assert citation.type == "web_search_result_location"
    assert citation.url == f"{web.url}/harmony"
    assert "trained on the harmony response format" in citation.cited_text


def test_messages_whole(search_proxy: ProxyProcess, fake_transformers: FakeTransformers,
                        searxng: FakeSearxng, web: FakeWeb) -> None:
    fake_transformers.respond(search_then_open())
    message = anthropic_client(search_proxy).messages.create(
        model="gpt-oss-20b", max_tokens=1000, tools=[WEB_SEARCH_TOOL],
        messages=[{"role": "user", "content": "What format does gpt-oss use?"}])
    check_message_blocks(message.content, web)
    assert message.usage.server_tool_use.web_search_requests == 1
    assert message.stop_reason == "end_turn"
    check_prompts(fake_transformers, web)


def test_messages_streamed(search_proxy: ProxyProcess, fake_transformers: FakeTransformers,
                           searxng: FakeSearxng, web: FakeWeb) -> None:
    fake_transformers.respond(search_then_open())
    with anthropic_client(search_proxy).messages.stream(
            model="gpt-oss-20b", max_tokens=1000, tools=[WEB_SEARCH_TOOL],
            messages=[{"role": "user", "content": "What format?"}]) as stream:
        events = list(stream)
        message = stream.get_final_message()
    check_message_blocks(message.content, web)
    assert message.usage.server_tool_use.web_search_requests == 1
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts[1:3] == ["server_tool_use", "web_search_tool_result"]
    indexes = [e.index for e in events if e.type == "content_block_start"]
    assert indexes == list(range(len(indexes)))


def test_messages_history_accepted(search_proxy: ProxyProcess,
                                   fake_transformers: FakeTransformers, searxng: FakeSearxng,
                                   web: FakeWeb) -> None:
    """The blocks the proxy returned come back in the next turn's history, and gpt-oss sees
    them as its browser call and the links it found."""
    fake_transformers.respond(search_then_open())
    client = anthropic_client(search_proxy)
    first = client.messages.create(model="gpt-oss-20b", max_tokens=1000, tools=[WEB_SEARCH_TOOL],
                                   messages=[{"role": "user", "content": "What format?"}])
    fake_transformers.respond(lambda prompt: final("It is harmony."))
    second = client.messages.create(
        model="gpt-oss-20b", max_tokens=1000, tools=[WEB_SEARCH_TOOL],
        messages=[{"role": "user", "content": "What format?"},
                  {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                    for b in first.content]},
                  {"role": "user", "content": "Sure?"}])
    assert second.content[-1].text == "It is harmony."
    history = messages(fake_transformers.prompts[-1])
    call = next(m for m in history if m.author == "assistant" and "harmony format" in m.content)
    assert call.channel == "commentary"
    result = next(m for m in history if m.author == "browser.search")
    assert "†The harmony response format†127.0.0.1】" in result.content


def test_chat_whole_and_streamed(search_proxy: ProxyProcess,
                                 fake_transformers: FakeTransformers, searxng: FakeSearxng,
                                 web: FakeWeb) -> None:
    fake_transformers.respond(search_then_open())
    client = openai.OpenAI(base_url=search_proxy.base_url, api_key="k", max_retries=0,
                           timeout=30)
    completion = client.chat.completions.create(
        model="gpt-oss-20b", messages=[{"role": "user", "content": "What format?"}],
        tools=[{"type": "browser_search"}], tool_choice="required")  # Groq's shape
    message = completion.choices[0].message
    assert message.tool_calls is None
    assert message.content == "gpt-oss was trained on harmony  and declares tools in system."
    assert message.annotations[0].url_citation.url == f"{web.url}/harmony"
    executed = message.model_extra["executed_tools"]
    assert [e["type"] for e in executed] == ["browser_search", "browser_search"]
    assert executed[0]["search_results"]["results"][0]["url"] == f"{web.url}/harmony"
    assert json.loads(executed[1]["arguments"]) == {"url": f"{web.url}/harmony"}
    fake_transformers.prompts.clear()
    chunks = list(client.chat.completions.create(
        model="gpt-oss-20b", messages=[{"role": "user", "content": "What format?"}],
        web_search_options={}, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == message.content
    deltas = [c.choices[0].delta.model_extra for c in chunks if c.choices]
    assert sum(len(d.get("executed_tools") or []) for d in deltas) == 2
    annotations = [a for d in deltas for a in d.get("annotations") or []]
    assert annotations[0]["url_citation"]["url"] == f"{web.url}/harmony"
    assert chunks[-1].choices[0].finish_reason == "stop"
    check_prompts(fake_transformers, web)


def steps(*calls: tuple[str, dict[str, Any]], answer: str = "Done.") -> Callable[[str], str]:
    """A model that makes ``calls`` one per step, then answers."""
    def rule(prompt: str) -> str:
        done = sum(1 for m in messages(prompt) if m.author.startswith("browser."))
        if done < len(calls):
            return browser_call(*calls[done])
        return final(answer)
    return rule


def tool_messages(prompt: str) -> list[str]:
    return [m.content for m in messages(prompt) if m.author.startswith("browser.")]


@pytest.mark.parametrize(("allow", "path"), [
    ("", "{web}/harmony"),  # loopback by address
    ("", "http://localhost:{port}/harmony"),  # a name whose DNS answer is loopback
    ("localhost", "http://localhost:{port}/redirect?to={web}/harmony"),  # redirect to private
])
def test_ssrf_refused(start_proxy: Callable[..., ProxyProcess],
                      fake_transformers: FakeTransformers, searxng: FakeSearxng, web: FakeWeb,
                      allow: str, path: str) -> None:
    proxy = start_proxy(tool_options(searxng, allow_private_urls=allow))
    url = path.format(web=web.url, port=web.port)
    fake_transformers.respond(steps(("open", {"id": url}), answer="Could not open it."))
    web.paths.clear()
    client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0, timeout=30)
    response = client.responses.create(model="gpt-oss-20b", input="Open it",
                                       tools=[{"type": "web_search"}])
    call = next(i for i in response.output if i.type == "web_search_call")
    assert call.status == "failed" and call.action.url == url
    assert response.output[-1].content[0].text == "Could not open it."
    told = tool_messages(fake_transformers.prompts[-1])
    assert told[0].startswith("Error fetching URL: ") and "private" in told[0]
    assert "/harmony" not in web.paths  # the private page was never fetched
    record = proxy.last_record('"tool_steps"')
    assert record["tool_steps"][0]["error"] == "url_not_allowed"


@pytest.mark.parametrize("failure", ["slow", "failing"])
def test_search_backend_failure(start_proxy: Callable[..., ProxyProcess],
                                fake_transformers: FakeTransformers, searxng: FakeSearxng,
                                failure: str) -> None:
    """The model is told, the client gets Anthropic's error block, the reply completes."""
    proxy = start_proxy(tool_options(searxng, fetch_timeout="1"))
    if failure == "slow":
        searxng.delay = 3
    else:
        searxng.status = 500
    fake_transformers.respond(steps(("search", {"query": "q"}), answer="Search is down."))
    with anthropic_client(proxy).messages.stream(
            model="gpt-oss-20b", max_tokens=500, tools=[WEB_SEARCH_TOOL],
            messages=[{"role": "user", "content": "Search"}]) as stream:
        message = stream.get_final_message()
    result = next(b for b in message.content if b.type == "web_search_tool_result")
    assert result.content.type == "web_search_tool_result_error"
    assert result.content.error_code == "unavailable"
    assert message.content[-1].text == "Search is down."
    assert tool_messages(fake_transformers.prompts[-1])[0].startswith("Error during search: ")


def test_max_uses_and_domain_filters(search_proxy: ProxyProcess,
                                     fake_transformers: FakeTransformers, searxng: FakeSearxng,
                                     web: FakeWeb) -> None:
    searxng.results = [{"url": f"http://localhost:{web.port}/tools", "title": "Local"},
                       {"url": f"{web.url}/harmony", "title": "Loopback"}]
    fake_transformers.respond(steps(("search", {"query": "one"}), ("search", {"query": "two"}),
                                    answer="Found."))
    tool = {**WEB_SEARCH_TOOL, "max_uses": 1, "allowed_domains": ["localhost"]}
    message = anthropic_client(search_proxy).messages.create(
        model="gpt-oss-20b", max_tokens=500, tools=[tool],
        messages=[{"role": "user", "content": "Search twice"}])
    results = [b for b in message.content if b.type == "web_search_tool_result"]
    assert [r.url for r in results[0].content] == [f"http://localhost:{web.port}/tools"]
    assert results[1].content.error_code == "max_uses_exceeded"
    assert message.usage.server_tool_use.web_search_requests == 1
    assert searxng.queries == ["one"]
    blocked = {**WEB_SEARCH_TOOL, "blocked_domains": ["localhost"]}
    fake_transformers.respond(steps(("search", {"query": "three"}), answer="Found."))
    message = anthropic_client(search_proxy).messages.create(
        model="gpt-oss-20b", max_tokens=500, tools=[blocked],
        messages=[{"role": "user", "content": "Search"}])
    result = next(b for b in message.content if b.type == "web_search_tool_result")
    assert [r.url for r in result.content] == [f"{web.url}/harmony"]


def test_tool_cap(start_proxy: Callable[..., ProxyProcess], fake_transformers: FakeTransformers,
                  searxng: FakeSearxng) -> None:
    """At SERVER_TOOL_MAX_STEPS the model is told to answer without tools; a call after that
    ends the reply as it stands."""
    proxy = start_proxy(tool_options(searxng, server_tool_max_steps="2"))
    fake_transformers.respond(lambda prompt: browser_call("search", {"query": "again"}))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="k", max_retries=0, timeout=30)
    events = list(client.responses.create(model="gpt-oss-20b", input="Search forever",
                                          tools=[{"type": "web_search"}], stream=True))
    assert events[-1].type == "response.completed"
    calls = [i for i in events[-1].response.output if i.type == "web_search_call"]
    assert [c.status for c in calls] == ["completed", "completed", "failed"]
    assert searxng.queries == ["again", "again"]
    assert len(fake_transformers.prompts) == 4
    assert "tool limit of this response was reached" in tool_messages(
        fake_transformers.prompts[-1])[-1]


# -- the Groq route: Groq's gpt-oss runs its own browser_search ------------------------------

@pytest.fixture()
def groq_proxy(start_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    """Groq's gpt-oss by name (only "harmony" models are local here)."""
    return start_proxy({"harmony_models": "harmony"}, env={"GROQ_API_KEY": GROQ_KEY})


@pytest.mark.parametrize("stream", [False, True])
def test_groq_messages_web_search(groq_proxy: ProxyProcess, fake_groq: FakeGroq,
                                  stream: bool) -> None:
    """Anthropic's web search for Groq's gpt-oss becomes browser_search; Groq's
    executed_tools come back as server_tool_use + web_search_tool_result."""
    client = anthropic_client(groq_proxy)
    request = {"model": "openai/gpt-oss-20b", "max_tokens": 500, "tools": [WEB_SEARCH_TOOL],
               "messages": [{"role": "user", "content": "news"}]}
    if stream:
        with client.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**request)
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "server_tool_use", "web_search_tool_result", "text"]
    assert message.content[1].input == {"query": "news"}
    assert message.content[2].content[0].url == "https://example.com/groq"
    assert message.usage.server_tool_use.web_search_requests == 1
    sent = json.loads(fake_groq.requests[-1]["raw"])
    assert sent["tools"] == [{"type": "browser_search"}]


def test_groq_responses_and_chat_web_search(groq_proxy: ProxyProcess,
                                            fake_groq: FakeGroq) -> None:
    client = openai.OpenAI(base_url=groq_proxy.base_url, api_key="k", max_retries=0, timeout=30)
    response = client.responses.create(model="openai/gpt-oss-20b", input="news",
                                       tools=[{"type": "web_search"}], store=False)
    call = next(i for i in response.output if i.type == "web_search_call")
    assert call.action.query == "news" and call.status == "completed"
    assert json.loads(fake_groq.requests[-1]["raw"])["tools"] == [{"type": "browser_search"}]
    completion = client.chat.completions.create(
        model="openai/gpt-oss-20b", messages=[{"role": "user", "content": "news"}],
        web_search_options={})
    executed = completion.choices[0].message.model_extra["executed_tools"]
    assert executed[0]["search_results"]["results"][0]["url"] == "https://example.com/groq"
    sent = json.loads(fake_groq.requests[-1]["raw"])
    assert sent["tools"] == [{"type": "browser_search"}] and "web_search_options" not in sent


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_groq_model_without_browser_refused(proxy: ProxyProcess, fake_groq: FakeGroq,
                                            api: str) -> None:
    body: dict[str, Any] = {"model": "llama-3.3-70b-versatile"}
    if api == "chat":
        path = "/chat/completions"
        body |= {"messages": [{"role": "user", "content": "x"}],
                 "tools": [{"type": "browser_search"}]}
    elif api == "responses":
        path = "/responses"
        body |= {"input": "x", "tools": [{"type": "web_search"}]}
    else:
        path = "/messages"
        body |= {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
                 "tools": [WEB_SEARCH_TOOL]}
    answer = httpx.post(proxy.base_url + path, json=body, timeout=10)
    assert answer.status_code == 400
    assert "only the gpt-oss models have a built-in browser" in answer.text
    assert not fake_groq.requests or json.loads(fake_groq.requests[-1]["raw"])[
        "model"] != "llama-3.3-70b-versatile"


def test_spilled_web_search_keeps_its_behaviour(start_proxy: Callable[..., ProxyProcess],
                                                fake_groq: FakeGroq) -> None:
    """A gpt-oss request spilled to Groq's twin (no local server) searches with Groq's
    browser, and the client sees the same blocks as from the local loop."""
    proxy = start_proxy({"spillover": "down", "transformers_url": "http://127.0.0.1:9"},
                        env={"GROQ_API_KEY": GROQ_KEY})
    with anthropic_client(proxy).messages.stream(
            model="gpt-oss-20b", max_tokens=500, tools=[WEB_SEARCH_TOOL],
            messages=[{"role": "user", "content": "news"}]) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content][1:3] == ["server_tool_use",
                                                      "web_search_tool_result"]
    sent = json.loads(fake_groq.requests[-1]["raw"])
    assert sent["model"] == "openai/gpt-oss-20b" and {"type": "browser_search"} in sent["tools"]


def test_stream_kept_alive_while_searching(start_proxy: Callable[..., ProxyProcess],
                                           fake_transformers: FakeTransformers,
                                           searxng: FakeSearxng) -> None:
    """A slow search: Anthropic pings (and Responses in_progress events) keep flowing between
    the step's start and its result."""
    proxy = start_proxy(tool_options(searxng, fetch_timeout="10", keepalive_seconds="1"))
    searxng.delay = 2.5
    fake_transformers.respond(steps(("search", {"query": "slow"}), answer="Found."))
    body = {"model": "gpt-oss-20b", "max_tokens": 500, "stream": True,
            "tools": [WEB_SEARCH_TOOL], "messages": [{"role": "user", "content": "Search"}]}
    with httpx.stream("POST", f"{proxy.base_url}/messages", json=body, timeout=30) as answer:
        frames = [json.loads(line[6:]) for line in answer.iter_lines()
                  if line.startswith("data: ")]
    starts = {(f.get("content_block") or {}).get("type"): n for n, f in enumerate(frames)
              if f["type"] == "content_block_start"}
    between = [f["type"] for f in frames[starts["server_tool_use"]:
                                         starts["web_search_tool_result"]]]
    assert between.count("ping") >= 1
    assert frames[-1]["type"] == "message_stop"


def test_responses_forced_web_search(search_proxy: ProxyProcess,
                                     fake_transformers: FakeTransformers,
                                     searxng: FakeSearxng) -> None:
    """``tool_choice: {"type": "web_search"}``: the browser call's header is written for the
    model, which writes only the query."""
    def rule(prompt: str) -> str:
        if prompt.endswith("to=browser.search<|message|>"):
            return '{"query": "forced"}<|call|>'
        return final("Found.")
    fake_transformers.respond(rule)
    client = openai.OpenAI(base_url=search_proxy.base_url, api_key="k", max_retries=0,
                           timeout=30)
    response = client.responses.create(model="gpt-oss-20b", input="hi",
                                       tools=[{"type": "web_search"}],
                                       tool_choice={"type": "web_search"})
    assert [i.type for i in response.output] == ["web_search_call", "reasoning", "message"]
    assert response.output[0].action.query == "forced"
    assert searxng.queries == ["forced"]
