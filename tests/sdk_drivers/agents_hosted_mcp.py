"""The real OpenAI Agents SDK's ``HostedMCPTool`` against the proxy: the proxy is the "hosted"
side that lists and calls the MCP server; approvals go through the SDK's
``on_approval_request``. Requests alternate between the given base URLs (a round-robin
balancer in front of proxies sharing a store).

Run as a program (the SDK's package is named ``agents``, like tests/agents.py):
``python agents_hosted_mcp.py MODEL SERVER_URL APPROVAL URL [URL…] [--stream] [--chain]``;
APPROVAL is ``never``, ``approve`` or ``reject``; ``--chain`` continues with
``previous_response_id`` (else the SDK sends the whole history). Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
from agents_chain import RoundRobin  # the round-robin balancer (this folder is on sys.path)
from openai import AsyncOpenAI

from agents import Agent, HostedMCPTool, OpenAIResponsesModel, Runner, set_tracing_disabled


async def main(model: str, server_url: str, approval: str, urls: list[str], stream: bool,
               chain: bool) -> dict[str, Any]:
    set_tracing_disabled(True)
    transport = RoundRobin([httpx.URL(url).port for url in urls])
    client = AsyncOpenAI(base_url=urls[0], api_key="sk-agents-client-key", max_retries=0,
                         http_client=httpx.AsyncClient(transport=transport, timeout=30))
    asked: list[str] = []

    def decide(request: Any) -> dict[str, Any]:
        asked.append(request.data.name)
        return {"approve": approval == "approve", "reason": "test decision"}

    tool = HostedMCPTool(
        tool_config={"type": "mcp", "server_label": "calc", "server_url": server_url,
                     "allowed_tools": ["add"],
                     "require_approval": "never" if approval == "never" else "always"},
        on_approval_request=None if approval == "never" else decide)
    agent = Agent(name="assistant", instructions="Use the calculator.", tools=[tool],
                  model=OpenAIResponsesModel(model=model, openai_client=client))
    if stream:
        run = Runner.run_streamed(agent, "What is 2 + 40?", auto_previous_response_id=chain)
        async for _ in run.stream_events():
            pass
    else:
        run = await Runner.run(agent, "What is 2 + 40?", auto_previous_response_id=chain)
    items = [{"type": item.type, "raw": getattr(item.raw_item, "type", None) or (
        item.raw_item.get("type") if isinstance(item.raw_item, dict) else None)}
             for item in run.new_items]
    return {"final_output": run.final_output, "asked": asked, "items": items,
            "sent": transport.sent}


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(json.dumps(asyncio.run(main(args[0], args[1], args[2], args[3:],
                                      "--stream" in sys.argv, "--chain" in sys.argv)),
                     default=str))
