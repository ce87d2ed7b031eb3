"""Remote MCP through the real mitmdump: the client's ``mcp`` tool, with real MCP servers on
loopback (this suite's MCPServer, npm's server-everything)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from fakes import FakeGroq
from mcp_servers import McpProcess
from proxy_process import ProxyProcess
from responses_grammar import parse_sse

SECRET_HEADER = "x-mcp-secret-value-0042"
SECRET_TOKEN = "oauth-token-value-0099"


def _mcp_tool(server: McpProcess, **extra) -> dict:  # noqa: ANN003
    return {"type": "mcp", "server_label": "calc", "server_url": server.url,
            "headers": {"X-Secret": SECRET_HEADER}, "require_approval": "never", **extra}


# -- Groq route: the tool passes through, Groq runs it -----------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_groq_models_get_the_mcp_tool_passed_through(
        proxy: ProxyProcess, fake_groq: FakeGroq, mcp_server: McpProcess, stream: bool) -> None:
    body = {"model": "llama-3.3-70b-versatile", "stream": stream,
            "tools": [_mcp_tool(mcp_server, allowed_tools=["add", "seen_headers"],
                                authorization=SECRET_TOKEN)],
            "input": 'please seen_headers {}'}
    response = httpx.post(f"{proxy.base_url}/responses", json=body, timeout=20)
    assert response.status_code == 200, response.text
    final = parse_sse(response.content)[-1]["response"] if stream else response.json()
    kinds = [item["type"] for item in final["output"]]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"]
    assert [t["name"] for t in final["output"][0]["tools"]] == ["add", "seen_headers"]
    seen = json.loads(final["output"][1]["output"])
    assert seen["x-secret"] == SECRET_HEADER  # the headers reached the server (via Groq)
    sent = json.loads(fake_groq.requests[-1]["raw"])
    assert fake_groq.requests[-1]["path"] == "/openai/v1/responses"
    assert sent["tools"][0]["server_url"] == mcp_server.url and sent["store"] is False
    record = proxy.last_record(response.headers.get("x-request-id", "seen_headers"))
    text = json.dumps(record)
    assert SECRET_HEADER not in text and SECRET_TOKEN not in text
    assert record["client_request"]["body"]["tools"][0]["headers"]["X-Secret"] == (
        "***redacted***")


def test_groq_mcp_with_previous_response_id_is_a_clear_400(
        proxy: ProxyProcess, mcp_server: McpProcess) -> None:
    body = {"model": "llama-3.3-70b-versatile", "previous_response_id": "resp_x",
            "tools": [_mcp_tool(mcp_server)], "input": "hi"}
    response = httpx.post(f"{proxy.base_url}/responses", json=body, timeout=20)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_parameter" and "stateless" in error["message"]


def test_openai_sdk_on_the_groq_route(client: openai.OpenAI, mcp_server: McpProcess) -> None:
    response = client.responses.create(model="llama-3.3-70b-versatile",
                                       input='add {"a": 2, "b": 3}',
                                       tools=[_mcp_tool(mcp_server)])
    call = next(item for item in response.output if item.type == "mcp_call")
    assert call.name == "add" and call.output == "5" and call.server_label == "calc"
