"""The client's MCP servers as tools of local gpt-oss, through the real mitmdump: the proxy
lists the server's tools, declares them, runs the model's calls against real MCP servers on
loopback (this suite's MCPServer, npm's server-everything) and shows each step as the API's
own items, whole and streamed, approvals included."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from anthropic_stream import RecordingTransport, check_stream
from conftest import default_options
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from harmony_rules import final, last_message, mcp_call
from mcp_servers import McpProcess
from proxy_process import ProxyProcess
from redis_server import RedisServer
from responses_grammar import check_grammar, parse_sse

SECRET = "x-mcp-secret-value-7781"
AGENTS_DRIVER = Path(__file__).parent / "sdk_drivers" / "agents_hosted_mcp.py"
MODEL = "gpt-oss-20b"


@pytest.fixture(scope="module")
def mcp_proxy(tmp_path_factory: pytest.TempPathFactory, transformers_server: FakeTransformers,
              groq_server: FakeGroq) -> Iterator[ProxyProcess]:
    """A proxy that may reach MCP servers on 127.0.0.1 (ALLOW_PRIVATE_URLS) and gives up on
    one after 3 s (MCP_TIMEOUT)."""
    options = {**default_options(transformers_server, groq_server),
               "allow_private_urls": "127.0.0.1", "mcp_timeout": "3"}
    process = ProxyProcess(tmp_path_factory.mktemp("mcp-proxy"), upstream=transformers_server.url,
                           options=options, env={"GROQ_API_KEY": GROQ_KEY})
    yield process
    process.stop()


def calc(server: McpProcess, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": server.url,
            "require_approval": "never", "headers": {"X-Secret": SECRET}, **extra}


def call_then_answer(recipient: str, arguments: dict[str, Any]):  # noqa: ANN201
    """The model calls ``recipient`` once, then answers with what the tool said."""
    def rule(prompt: str) -> str:
        last = last_message(prompt)
        if last.author == recipient:
            return final(f"The tool said: {last.content}")
        return mcp_call(recipient, arguments)
    return rule


def post(proxy: ProxyProcess, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{proxy.base_url}/responses", json={"model": MODEL, **body},
                          timeout=30)
    assert response.status_code == 200, response.text
    if body.get("stream"):
        return check_grammar(parse_sse(response.content))
    return response.json()


def kinds(response: dict[str, Any]) -> list[str]:
    return [item["type"] for item in response["output"]]


def answer(response: dict[str, Any]) -> str:
    return "".join(p["text"] for item in response["output"] if item["type"] == "message"
                   for p in item["content"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_whole_and_streamed(mcp_proxy: ProxyProcess, mcp_server: McpProcess,
                                   fake_transformers: FakeTransformers, stream: bool) -> None:
    fake_transformers.respond(call_then_answer("calc.add", {"a": 2, "b": 40}))
    response = post(mcp_proxy, {"stream": stream, "input": "What is 2 + 40?",
                                "tools": [calc(mcp_server, allowed_tools=["add", "big"])]})
    assert kinds(response) == ["mcp_list_tools", "reasoning", "mcp_call", "reasoning", "message"]
    listing, call = response["output"][0], response["output"][2]
    assert listing["server_label"] == "calc" and listing["error"] is None
    assert [t["name"] for t in listing["tools"]] == ["add", "big"]
    assert listing["tools"][0]["input_schema"]["required"] == ["a", "b"]
    assert call["name"] == "add" and json.loads(call["arguments"]) == {"a": 2, "b": 40}
    assert call["output"] == "42" and call["error"] is None and call["status"] == "completed"
    assert call["id"].startswith("mcp_") and listing["id"].startswith("mcpl_")
    assert answer(response) == "The tool said: 42"
    first, second = fake_transformers.prompts[-2:]
    # Declared in the system message, only the allowed tools, then the tool's answer.
    system = first.split("<|end|>", 1)[0]
    assert "namespace calc {" in system and "type add = " in system
    assert "type big = " in system and "seen_headers" not in system
    assert '<|start|>calc.add to=assistant<|channel|>commentary<|message|>42<|end|>' in second
    assert SECRET not in first + second


def test_streamed_events_of_an_mcp_call(mcp_proxy: ProxyProcess, mcp_server: McpProcess,
                                        fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(call_then_answer("calc.add", {"a": 1, "b": 2}))
    raw = httpx.post(f"{mcp_proxy.base_url}/responses", timeout=30, json={
        "model": MODEL, "stream": True, "input": "1 + 2?", "tools": [calc(mcp_server)]})
    events = parse_sse(raw.content)
    check_grammar(events)
    names = [e["type"] for e in events]
    listing = names.index("response.mcp_list_tools.in_progress")
    assert names[listing + 1] == "response.mcp_list_tools.completed"
    at = names.index("response.mcp_call_arguments.delta")
    assert names[at:at + 4] == ["response.mcp_call_arguments.delta",
                                "response.mcp_call_arguments.done",
                                "response.mcp_call.in_progress", "response.mcp_call.completed"]
    added = next(e for e in events if e["type"] == "response.output_item.added"
                 and e["item"]["type"] == "mcp_call")
    assert added["item"]["status"] == "in_progress" and added["item"]["output"] is None


def test_headers_reach_the_server_and_never_the_log(mcp_proxy: ProxyProcess,
                                                    mcp_server: McpProcess,
                                                    fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(call_then_answer("calc.seen_headers", {}))
    response = post(mcp_proxy, {"input": "Which headers?", "store": True,
                                "tools": [calc(mcp_server, authorization="tok-secret-55")]})
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    seen = json.loads(call["output"])
    assert seen["x-secret"] == SECRET and seen["authorization"] == "Bearer tok-secret-55"
    # Not in the response's echo of its tools, nor in the stored copy, nor in the log.
    assert SECRET not in json.dumps(response["tools"])
    stored = httpx.get(f"{mcp_proxy.base_url}/responses/{response['id']}", timeout=10).json()
    assert SECRET not in json.dumps(stored["tools"])
    record = mcp_proxy.last_record(response["id"])
    assert record["tool_steps"][0]["kind"] == "mcp_list_tools"
    text = json.dumps(record)
    # The server's own answer (the headers it got) is the tool's output: the log keeps the
    # model's view of it, masked like any other copy of the request's secrets.
    assert SECRET not in text and "tok-secret-55" not in text


def test_a_second_turn_does_not_list_again(mcp_proxy: ProxyProcess, mcp_server: McpProcess,
                                           fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(call_then_answer("calc.add", {"a": 2, "b": 2}))
    tools = [calc(mcp_server)]
    first = post(mcp_proxy, {"input": "2 + 2?", "tools": tools, "store": False})
    history = [{"role": "user", "content": "2 + 2?"}, *first["output"],
               {"role": "user", "content": "again"}]
    second = post(mcp_proxy, {"input": history, "tools": tools, "store": False})
    assert "mcp_list_tools" not in kinds(second)
    assert kinds(second) == ["reasoning", "mcp_call", "reasoning", "message"]
    prompt = fake_transformers.prompts[-2]  # the second turn's first step
    # The earlier call and its answer are in the history the model sees.
    assert prompt.count('<|start|>assistant to=calc.add<|channel|>commentary<|message|>'
                        '{"a": 2, "b": 2}<|call|><|start|>calc.add to=assistant<|channel|>'
                        'commentary<|message|>4<|end|>') == 1
    assert "namespace calc {" in prompt


def test_approval_round_trip_with_previous_response_id(
        mcp_proxy: ProxyProcess, mcp_server: McpProcess,
        fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(call_then_answer("calc.add", {"a": 20, "b": 22}))
    tools = [calc(mcp_server, require_approval="always")]
    asked = post(mcp_proxy, {"input": "20 + 22?", "tools": tools})
    assert kinds(asked) == ["mcp_list_tools", "reasoning", "mcp_approval_request"]
    request = asked["output"][-1]
    assert request["name"] == "add" and json.loads(request["arguments"]) == {"a": 20, "b": 22}
    assert request["id"].startswith("mcpr_") and asked["status"] == "completed"
    calls_before = len(fake_transformers.prompts)
    approved = post(mcp_proxy, {"previous_response_id": asked["id"], "tools": tools,
                                "input": [{"type": "mcp_approval_response", "approve": True,
                                           "approval_request_id": request["id"]}]})
    assert kinds(approved) == ["mcp_call", "reasoning", "message"]
    call = approved["output"][0]
    assert call["output"] == "42" and call["approval_request_id"] == request["id"]
    assert answer(approved) == "The tool said: 42"
    assert len(fake_transformers.prompts) == calls_before + 1  # the call ran before generating


def test_approval_declined_in_full_input(mcp_proxy: ProxyProcess, mcp_server: McpProcess,
                                         fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(call_then_answer("calc.add", {"a": 1, "b": 1}))
    tools = [calc(mcp_server, require_approval={"never": {"tool_names": ["big"]}})]
    asked = post(mcp_proxy, {"input": "1 + 1?", "tools": tools, "store": False})
    request = asked["output"][-1]
    assert request["type"] == "mcp_approval_request"
    fake_transformers.respond(lambda prompt: final("Understood, not calling it."))
    declined = post(mcp_proxy, {"tools": tools, "store": False, "input": [
        {"role": "user", "content": "1 + 1?"}, *asked["output"],
        {"type": "mcp_approval_response", "approve": False, "reason": "not now",
         "approval_request_id": request["id"]}]})
    assert kinds(declined) == ["reasoning", "message"]
    assert "The user declined this call (not now)" in fake_transformers.prompts[-1]


def test_an_unknown_approval_is_a_400(mcp_proxy: ProxyProcess, mcp_server: McpProcess) -> None:
    response = httpx.post(f"{mcp_proxy.base_url}/responses", timeout=10, json={
        "model": MODEL, "tools": [calc(mcp_server)], "input": [
            {"type": "mcp_approval_response", "approve": True, "approval_request_id": "mcpr_x"}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_approval_request"


@pytest.mark.parametrize("stream", [False, True])
def test_a_hanging_server_is_an_error_the_model_sees(
        mcp_proxy: ProxyProcess, mcp_server: McpProcess, fake_transformers: FakeTransformers,
        stream: bool) -> None:
    fake_transformers.respond(call_then_answer("calc.slow", {"seconds": 20}))
    response = post(mcp_proxy, {"stream": stream, "input": "wait",
                                "tools": [calc(mcp_server)]})
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    assert call["status"] == "failed" and "timed out after 3 s" in call["error"]
    assert call["output"] is None
    assert answer(response).startswith("The tool said: Error: MCP server 'calc'")


def test_a_server_that_dies_mid_call(mcp_proxy: ProxyProcess,
                                     fake_transformers: FakeTransformers) -> None:
    dying = McpProcess.fixture("http")
    try:
        fake_transformers.respond(call_then_answer("calc.die", {}))
        response = post(mcp_proxy, {"input": "die", "tools": [calc(dying)]})
    finally:
        dying.close()
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    assert call["status"] == "failed" and call["error"]
    assert answer(response).startswith("The tool said: Error:")


def test_an_unreachable_server_is_listed_with_its_error(
        mcp_proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(lambda prompt: final("No tools today."))
    response = post(mcp_proxy, {"input": "hi", "tools": [{
        "type": "mcp", "server_label": "gone", "server_url": "http://127.0.0.1:9/mcp",
        "require_approval": "never"}]})
    assert kinds(response) == ["mcp_list_tools", "reasoning", "message"]
    assert "could not connect" in response["output"][0]["error"]
    system = fake_transformers.prompts[-1].split("<|end|>", 1)[0]
    assert "This MCP server could not be reached" in system


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/mcp", "http://localhost:{port}/mcp",
                                 "http://10.0.0.1/mcp", "http://169.254.169.254/mcp",
                                 "http://[::1]:{port}/mcp"])
def test_ssrf_refused_without_allow_private_urls(proxy: ProxyProcess, mcp_server: McpProcess,
                                                 url: str) -> None:
    response = httpx.post(f"{proxy.base_url}/responses", timeout=10, json={
        "model": MODEL, "input": "hi", "tools": [{
            "type": "mcp", "server_label": "x", "server_url": url.format(port=mcp_server.port),
            "require_approval": "never"}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "mcp_server_url_refused" and "ALLOW_PRIVATE_URLS" in error["message"]


def test_server_everything_from_npm(mcp_proxy: ProxyProcess,
                                    fake_transformers: FakeTransformers) -> None:
    everything = McpProcess.everything()
    try:
        fake_transformers.respond(call_then_answer("everything.get_sum", {"a": 5, "b": 6}))
        response = post(mcp_proxy, {"stream": True, "input": "5 + 6?", "tools": [{
            "type": "mcp", "server_label": "everything", "server_url": everything.url,
            "allowed_tools": ["get-sum", "echo"], "require_approval": "never"}]})
    finally:
        everything.close()
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    assert call["name"] == "get-sum" and call["output"] == "The sum of 5 and 6 is 11."
    assert [t["name"] for t in response["output"][0]["tools"]] == ["echo", "get-sum"]
    assert "type get_sum = " in fake_transformers.prompts[-2]


def test_not_a_5xx_when_the_model_calls_an_unknown_tool(
        mcp_proxy: ProxyProcess, mcp_server: McpProcess,
        fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(call_then_answer("calc.nosuch", {}))
    response = post(mcp_proxy, {"input": "x", "tools": [calc(mcp_server)]})
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    assert call["status"] == "failed" and "not a tool of this server" in call["error"]


# -- Messages: mcp_servers (Anthropic's MCP connector) ----------------------------------------

def claude(proxy: ProxyProcess) -> tuple[anthropic.Anthropic, RecordingTransport]:
    transport = RecordingTransport()
    return anthropic.Anthropic(base_url=proxy.root_url, api_key="sk-ant-client-000", timeout=30,
                               max_retries=0, http_client=httpx2.Client(transport=transport)
                               ), transport


@pytest.mark.parametrize("stream", [False, True])
def test_messages_mcp_servers_whole_and_streamed(
        mcp_proxy: ProxyProcess, mcp_server: McpProcess, fake_transformers: FakeTransformers,
        stream: bool) -> None:
    fake_transformers.respond(call_then_answer("calc.seen_headers", {}))
    client, transport = claude(mcp_proxy)
    request: dict[str, Any] = {
        "model": MODEL, "max_tokens": 1024, "betas": ["mcp-client-2025-04-04"],
        "messages": [{"role": "user", "content": "Which headers?"}],
        "mcp_servers": [{"type": "url", "url": mcp_server.url, "name": "calc",
                         "authorization_token": "anthropic-mcp-token-31",
                         "tool_configuration": {"allowed_tools": ["seen_headers", "add"]}}]}
    if stream:
        with client.beta.messages.stream(**request) as events:
            message = events.get_final_message().model_dump()
        checked = check_stream(transport.last())
        assert [b["type"] for b in checked["content"]] == [
            b["type"] for b in message["content"]]
    else:
        message = client.beta.messages.create(**request).model_dump()
    kinds = [block["type"] for block in message["content"]]
    assert kinds == ["thinking", "mcp_tool_use", "mcp_tool_result", "thinking", "text"]
    use, result = message["content"][1], message["content"][2]
    assert use["name"] == "seen_headers" and use["server_name"] == "calc"
    assert use["input"] == {} and use["id"].startswith("mcptoolu_")
    assert result["tool_use_id"] == use["id"] and result["is_error"] is False
    seen = json.loads(result["content"][0]["text"])
    assert seen["authorization"] == "Bearer anthropic-mcp-token-31"
    assert message["stop_reason"] == "end_turn"
    system = fake_transformers.prompts[-2].split("<|end|>", 1)[0]
    assert "type seen_headers = " in system and "type add = " in system
    assert "type slow = " not in system
    record = mcp_proxy.last_record("mcp_" + use["id"].removeprefix("mcptoolu_"))
    assert [step["kind"] for step in record["tool_steps"]] == ["mcp_list_tools", "mcp"]
    assert "anthropic-mcp-token-31" not in json.dumps(record)


def test_messages_history_with_mcp_blocks(mcp_proxy: ProxyProcess, mcp_server: McpProcess,
                                          fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(lambda prompt: final("Done."))
    client, _ = claude(mcp_proxy)
    client.beta.messages.create(
        model=MODEL, max_tokens=256, betas=["mcp-client-2025-04-04"],
        mcp_servers=[{"type": "url", "url": mcp_server.url, "name": "calc"}],
        messages=[{"role": "user", "content": "2 + 3?"},
                  {"role": "assistant", "content": [
                      {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "add",
                       "server_name": "calc", "input": {"a": 2, "b": 3}},
                      {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1",
                       "is_error": False, "content": [{"type": "text", "text": "5"}]},
                      {"type": "text", "text": "It is 5."}]},
                  {"role": "user", "content": "Thanks"}])
    prompt = fake_transformers.prompts[-1]
    assert ('<|start|>assistant to=calc.add<|channel|>commentary<|message|>{"a": 2, "b": 3}'
            '<|call|><|start|>calc.add to=assistant<|channel|>commentary<|message|>5<|end|>'
            ) in prompt


def test_messages_mcp_servers_for_a_groq_model_is_a_400(proxy: ProxyProcess) -> None:
    response = httpx.post(f"{proxy.root_url}/v1/messages", timeout=10, json={
        "model": "llama-3.3-70b-versatile", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "mcp_servers": [{"type": "url", "url": "https://mcp.example/mcp", "name": "x"}]})
    assert response.status_code == 400
    assert "mcp_servers" in response.json()["error"]["message"]


# -- The OpenAI Agents SDK's HostedMCPTool -----------------------------------------------------

def run_agents(args: list[str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(AGENTS_DRIVER), *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("stream", [False, True])
def test_agents_sdk_hosted_mcp_tool(mcp_proxy: ProxyProcess, mcp_server: McpProcess,
                                    fake_transformers: FakeTransformers, tmp_path: Path,
                                    stream: bool) -> None:
    fake_transformers.respond(call_then_answer("calc.add", {"a": 2, "b": 40}))
    result = run_agents([MODEL, mcp_server.url, "never", mcp_proxy.base_url,
                         *(["--stream"] if stream else [])], tmp_path)
    assert result["final_output"] == "The tool said: 42"
    raws = [item["raw"] for item in result["items"]]
    assert "mcp_list_tools" in raws and "mcp_call" in raws
    assert [s["status"] for s in result["sent"]] == [200]


def test_agents_sdk_approval_across_two_proxies_sharing_redis(
        start_proxy: Callable[..., ProxyProcess], redis_server: RedisServer,
        mcp_server: McpProcess, fake_transformers: FakeTransformers, tmp_path: Path) -> None:
    """The SDK approves through ``on_approval_request``, continuing with
    ``previous_response_id`` on the other proxy, which reads the approval request from Redis."""
    env = {"STATE_STORE": redis_server.url, "GROQ_API_KEY": GROQ_KEY}
    options = {"state_store_timeout_ms": "1000", "allow_private_urls": "127.0.0.1"}
    proxies = [start_proxy(options=options, env=env) for _ in range(2)]
    fake_transformers.respond(call_then_answer("calc.add", {"a": 2, "b": 40}))
    result = run_agents([MODEL, mcp_server.url, "approve",
                         *(p.base_url for p in proxies), "--chain"], tmp_path)
    assert result["asked"] == ["add"]
    assert result["final_output"] == "The tool said: 42"
    sent = result["sent"]
    assert [s["port"] for s in sent] == [proxies[0].port, proxies[1].port]
    assert [s["status"] for s in sent] == [200, 200]
    assert sent[1]["previous_response_id"] and "mcp_approval_response" in sent[1][
        "input_types"]
    raws = [item["raw"] for item in result["items"]]
    assert raws.count("mcp_approval_request") == 1 and raws.count("mcp_call") == 1


def test_agents_sdk_rejection(mcp_proxy: ProxyProcess, mcp_server: McpProcess,
                              fake_transformers: FakeTransformers, tmp_path: Path) -> None:
    def rule(prompt: str) -> str:
        if "The user declined this call (test decision)" in prompt:
            return final("I will not call it.")
        return mcp_call("calc.add", {"a": 2, "b": 40})
    fake_transformers.respond(rule)
    result = run_agents([MODEL, mcp_server.url, "reject", mcp_proxy.base_url], tmp_path)
    assert result["asked"] == ["add"]
    assert result["final_output"] == "I will not call it."
    assert "mcp_call" not in [item["raw"] for item in result["items"]]


def test_a_server_by_name_is_reached_at_the_checked_address(
        mcp_proxy: ProxyProcess, mcp_server: McpProcess,
        fake_transformers: FakeTransformers) -> None:
    """``localhost`` (allowed because it resolves to 127.0.0.1, which ALLOW_PRIVATE_URLS
    lists) is reached at the checked address, its name kept in ``Host``."""
    fake_transformers.respond(call_then_answer("calc.seen_headers", {}))
    url = mcp_server.url.replace("127.0.0.1", "localhost")
    response = post(mcp_proxy, {"input": "headers?", "tools": [calc(mcp_server,
                                                                    server_url=url)]})
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    assert call["status"] == "completed", call
    assert json.loads(call["output"])["host"] == f"localhost:{mcp_server.port}"


def test_an_sse_server(mcp_proxy: ProxyProcess, fake_transformers: FakeTransformers) -> None:
    """A URL whose path ends in /sse: the older HTTP+SSE transport."""
    sse = McpProcess.fixture("sse")
    try:
        fake_transformers.respond(call_then_answer("calc.add", {"a": 3, "b": 4}))
        response = post(mcp_proxy, {"stream": True, "input": "3 + 4?",
                                    "tools": [calc(sse)]})
    finally:
        sse.close()
    assert sse.url.endswith("/sse")
    call = next(i for i in response["output"] if i["type"] == "mcp_call")
    assert call["output"] == "7" and call["status"] == "completed"
