"""The real OpenAI Agents SDK (``openai-agents``) chaining with ``previous_response_id`` across
two proxies: every HTTP request goes to the next base URL in turn (a round-robin balancer).

Run as a program (the SDK's package is named ``agents``, like tests/agents.py, so it cannot be
imported inside the test session): ``python agents_chain.py URL_A URL_B MODEL [--stream]``.
Prints one JSON object: what each request carried and what the SDK made of the answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
from openai import AsyncOpenAI

from agents import (
    Agent,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)


class RoundRobin(httpx.AsyncBaseTransport):
    """Sends request n to base URL n mod 2 and records what it sent and got."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.sent = ports, []
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        port = self.ports[len(self.sent) % len(self.ports)]
        request.url = request.url.copy_with(port=port)
        body = json.loads(request.content or b"{}")
        response = await self.inner.handle_async_request(request)
        self.sent.append({"port": port, "path": request.url.path,
                          "previous_response_id": body.get("previous_response_id"),
                          "store": body.get("store"), "stream": body.get("stream"),
                          "input_types": [item.get("type", "message")
                                          for item in body.get("input") or []],
                          "status": response.status_code})
        return response


@function_tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny in {city}"


async def main(urls: list[str], model: str, stream: bool) -> dict[str, Any]:
    set_tracing_disabled(True)
    transport = RoundRobin([httpx.URL(url).port for url in urls])
    client = AsyncOpenAI(base_url=urls[0], api_key="sk-agents-client-key", max_retries=0,
                         http_client=httpx.AsyncClient(transport=transport, timeout=20))
    agent = Agent(name="assistant", instructions="Be terse.", tools=[get_weather],
                  model=OpenAIResponsesModel(model=model, openai_client=client))
    outputs = []
    previous = None
    for question in ("Weather in Paris?", "And in Lyon?"):
        if stream:
            run = Runner.run_streamed(agent, question, previous_response_id=previous,
                                      auto_previous_response_id=True)
            async for _ in run.stream_events():
                pass
        else:
            run = await Runner.run(agent, question, previous_response_id=previous,
                                   auto_previous_response_id=True)
        outputs.append(run.final_output)
        previous = run.last_response_id
    return {"outputs": outputs, "sent": transport.sent}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:3], sys.argv[3], "--stream" in sys.argv))))
