"""One conversation in the chat form, sent through the proxy in any of its three client APIs
(chat, Responses, Messages), whole or streamed, with httpx; the reply read back into the chat
form, with its headers and a shape (keys and event kinds, no values) to compare a spilled reply
with a local one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from anthropic_stream import check_stream

DIALECTS = ("chat", "responses", "messages")
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses",
         "messages": "/v1/messages"}
END_OF_STREAM = {"chat": b"data: [DONE]", "responses": b"event: response.completed",
                 "messages": b"event: message_stop"}


@dataclass
class Reply:
    status: int
    headers: httpx.Headers
    body: Any  # the whole body, or the stream's events
    message: dict[str, Any] = field(default_factory=dict)  # chat form: content, reasoning, calls
    shape: Any = None
    end_at: float = 0.0  # time.monotonic() when the end (whole body, terminal event) arrived

    @property
    def served_by(self) -> str | None:
        return self.headers.get("x-harmony-groq-served-by")


def _tool(dialect: str, name: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    if dialect == "chat":
        return {"type": "function", "function": {"name": name, "description": "Look it up.",
                                                 "parameters": schema}}
    if dialect == "responses":
        return {"type": "function", "name": name, "description": "Look it up.",
                "parameters": schema}
    return {"name": name, "description": "Look it up.", "input_schema": schema}


def _responses_input(convo: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    instructions, items = None, []
    for m in convo:
        if m["role"] == "system":
            instructions = m["content"]
        elif m["role"] == "user":
            items.append({"role": "user", "content": m["content"]})
        elif m["role"] == "tool":
            items.append({"type": "function_call_output", "call_id": m["tool_call_id"],
                          "output": m["content"]})
        else:
            if m.get("reasoning"):
                items.append({"type": "reasoning", "summary": [], "content": [
                    {"type": "reasoning_text", "text": m["reasoning"]}]})
            if m.get("content"):
                items.append({"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": m["content"]}]})
            items += [{"type": "function_call", "call_id": c["id"], "name": c["function"]["name"],
                       "arguments": c["function"]["arguments"]} for c in m.get("tool_calls") or []]
    return instructions, items


def _anthropic_messages(convo: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    system, out = None, []
    for m in convo:
        if m["role"] == "system":
            system = m["content"]
        elif m["role"] == "user":
            out.append({"role": "user", "content": m["content"]})
        elif m["role"] == "tool":
            result = {"type": "tool_result", "tool_use_id": m["tool_call_id"],
                      "content": m["content"]}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
        else:
            blocks: list[dict[str, Any]] = []
            if m.get("reasoning"):
                blocks.append({"type": "thinking", "thinking": m["reasoning"],
                               "signature": "sig"})
            if m.get("content"):
                blocks.append({"type": "text", "text": m["content"]})
            blocks += [{"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
                        "input": json.loads(c["function"]["arguments"])}
                       for c in m.get("tool_calls") or []]
            out.append({"role": "assistant", "content": blocks})
    return system, out


def request_body(dialect: str, model: str, convo: list[dict[str, Any]], stream: bool,
                 tools: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": stream, **extra}
    if tools:
        body["tools"] = [_tool(dialect, name) for name in tools]
    if dialect == "chat":
        body["messages"] = convo
    elif dialect == "responses":
        instructions, body["input"] = _responses_input(convo)
        body.setdefault("store", False)
        if instructions:
            body["instructions"] = instructions
    else:
        system, body["messages"] = _anthropic_messages(convo)
        body.setdefault("max_tokens", 1024)
        if system:
            body["system"] = system
    return body


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _message(content: str, reasoning: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def _dedup(kinds: list[Any]) -> list[Any]:
    return [k for n, k in enumerate(kinds) if n == 0 or kinds[n - 1] != k]


def _sse_data(raw: bytes) -> list[Any]:
    out = []
    for frame in raw.decode().split("\n\n"):
        for line in frame.split("\n"):
            if line.startswith("data: ") and line[6:] != "[DONE]":
                out.append(json.loads(line[6:]))
    return out


def _read_chat(reply: Reply, raw: bytes, stream: bool) -> None:
    if not stream:
        message = reply.body["choices"][0]["message"]
        reply.message = _message(message.get("content") or "", message.get("reasoning") or "",
                                 message.get("tool_calls") or [])
        reply.shape = _shape(reply.body)
        return
    chunks = _sse_data(raw)
    reply.body = chunks
    content, reasoning, calls = [], [], {}
    for chunk in chunks:
        assert "error" not in chunk, chunk
        for choice in chunk.get("choices") or []:
            delta = choice["delta"]
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning") or "")
            for part in delta.get("tool_calls") or []:
                entry = calls.setdefault(part["index"], {"id": "", "name": "", "args": ""})
                entry["id"] = part.get("id") or entry["id"]
                entry["name"] += part.get("function", {}).get("name") or ""
                entry["args"] += part.get("function", {}).get("arguments") or ""
    reply.message = _message("".join(content), "".join(reasoning),
                             [_call(c["id"], c["name"], c["args"]) for c in calls.values()])
    reply.shape = _dedup([sorted(c["choices"][0]["delta"]) if c.get("choices") else ["usage"]
                          for c in chunks])


def _read_responses(reply: Reply, raw: bytes, stream: bool) -> None:
    response = reply.body
    if stream:
        events = _sse_data(raw)
        reply.body = events
        response = next(e["response"] for e in events if e["type"] in (
            "response.completed", "response.incomplete", "response.failed"))
        reply.shape = _dedup([e["type"] for e in events])
    else:
        reply.shape = _shape({k: v for k, v in response.items() if k != "output"})
    content, reasoning, calls = [], [], []
    for item in response["output"]:
        if item["type"] == "reasoning":
            reasoning += [p["text"] for p in item.get("content") or []]
        elif item["type"] == "message":
            content += [p["text"] for p in item["content"]]
        elif item["type"] == "function_call":
            calls.append(_call(item["call_id"], item["name"], item["arguments"]))
    reply.message = _message("".join(content), "".join(reasoning), calls)
    if not stream:
        reply.shape = (reply.shape, [item["type"] for item in response["output"]])


def _read_messages(reply: Reply, raw: bytes, stream: bool) -> None:
    message = check_stream(raw) if stream else reply.body
    content, reasoning, calls = [], [], []
    for block in message["content"]:
        if block["type"] == "thinking":
            reasoning.append(block["thinking"])
        elif block["type"] == "text":
            content.append(block["text"])
        elif block["type"] == "tool_use":
            calls.append(_call(block["id"], block["name"],
                               json.dumps(block["input"], separators=(",", ":"))))
    reply.message = _message("".join(content), "".join(reasoning), calls)
    reply.shape = [block["type"] for block in message["content"]]


READERS = {"chat": _read_chat, "responses": _read_responses, "messages": _read_messages}


def send(base_url: str, dialect: str, model: str, convo: list[dict[str, Any]],
         stream: bool = False, tools: tuple[str, ...] = (), **extra: Any) -> Reply:
    """POST the conversation in ``dialect``; a 200 is read back, an error kept as its body."""
    body = request_body(dialect, model, convo, stream, tools, **extra)
    headers = {"authorization": "Bearer sk-client", "anthropic-version": "2023-06-01"}
    url = base_url.removesuffix("/v1") + PATHS[dialect]
    raw, end_at = b"", 0.0
    with (httpx.Client(timeout=30, trust_env=False) as client,
          client.stream("POST", url, json=body, headers=headers) as response):
        for chunk in response.iter_bytes():
            raw += chunk
            if stream and not end_at and END_OF_STREAM[dialect] in raw:
                end_at = time.monotonic()
        end_at = end_at or time.monotonic()
    reply = Reply(response.status_code, response.headers, None, end_at=end_at)
    if response.status_code != 200:
        reply.body = json.loads(raw)
        return reply
    reply.body = None if stream else json.loads(raw)
    READERS[dialect](reply, raw, stream)
    return reply
