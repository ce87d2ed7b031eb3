"""Fast fake upstreams for the benchmark: canned Groq and transformers-serve replies, asyncio.

tests/fakes.py's servers spend a thread per connection and tokenize every prompt, so at 32-64
concurrent clients they, not the proxy, would be what is measured. This process answers from
bytes computed once at start: Groq's ``POST /openai/v1/chat/completions`` (key checked) and
transformers serve's ``POST /v1/completions`` (reply chosen by the request's ``seed``, cut at
``max_tokens`` like the real server, streamed one SSE event per token with no ``[DONE]``).

Run: ``python bench/fastfake.py``; it prints ``{"groq": PORT, "transformers": PORT}`` when ready.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from workloads import REPLIES, SHORT_SEED, STREAM_PROMPT, STREAM_SEED  # noqa: E402

from fakes import GROQ_KEY, RATE_HEADERS, token_pieces  # noqa: E402

YIELD_EVERY = 1  # stream tokens written between event-loop yields: one write per token


def http_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
            "content-type: application/json", f"content-length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


class Script:
    """One canned completion, pre-split into tokens and pre-encoded as SSE chunks."""

    def __init__(self, text: str) -> None:
        self.pieces = token_pieces(text.removesuffix("<|return|>"))
        self.base = {"id": "req-1", "created": int(time.time()), "model": "tiny",
                     "object": "text_completion"}
        self.events = [chunk(b"data: " + json.dumps(
            {**self.base, "choices": [{"index": 0, "text": piece}]}).encode() + b"\n\n")
            for piece in self.pieces]

    def cut(self, max_tokens: int | None) -> tuple[int, str]:
        limit = max_tokens or 1024
        count = min(len(self.pieces), limit)
        return count, "length" if count >= limit else "stop"

    def final(self, count: int, finish: str, prompt: str, text: str) -> dict[str, Any]:
        usage = {"completion_tokens": count, "prompt_tokens": len(prompt) // 4,
                 "total_tokens": count + len(prompt) // 4}
        return {**self.base, "choices": [{"finish_reason": finish, "index": 0, "text": text}],
                "usage": usage}


class FakeUpstreams:
    def __init__(self) -> None:
        self.scripts = {seed: Script(text) for seed, text in REPLIES.items()}
        created = int(time.time())
        self.groq_reply = http_response(200, json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
            "model": "llama-3.3-70b-versatile", "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "groq says hi"},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
            "x_groq": {"id": "req_01fake"}}).encode(), RATE_HEADERS)
        self.unauthorized = http_response(401, b'{"error": {"message": "Invalid API Key"}}')
        self.not_found = http_response(404, b'{"detail": "Not Found"}')
        self.health = http_response(200, b'{"status": "ok"}')

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {name.lower(): value for name, _, value in
                           (line.partition(": ") for line in lines)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                await self.answer(method, path, headers, body, writer)
        except ConnectionError:
            return
        finally:
            writer.close()

    async def answer(self, method: str, path: str, headers: dict[str, str], body: bytes,
                     writer: asyncio.StreamWriter) -> None:
        if path == "/openai/v1/chat/completions" and method == "POST":
            ok = headers.get("authorization") == f"Bearer {GROQ_KEY}"
            writer.write(self.groq_reply if ok else self.unauthorized)
        elif path == "/v1/completions" and method == "POST":
            await self.complete(json.loads(body), writer)
        elif path == "/health":
            writer.write(self.health)
        else:
            writer.write(self.not_found)
        await writer.drain()

    async def complete(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        prompt = body.get("prompt") or ""
        seed = body.get("seed") or (STREAM_SEED if STREAM_PROMPT in prompt else SHORT_SEED)
        script = self.scripts.get(seed, self.scripts[SHORT_SEED])
        count, finish = script.cut(body.get("max_tokens"))
        if not body.get("stream"):
            text = "".join(script.pieces[:count])
            writer.write(http_response(200, json.dumps(
                script.final(count, finish, prompt, text)).encode()))
            return
        writer.write(SSE_HEAD)
        for n in range(count):
            writer.write(script.events[n])
            if n % YIELD_EVERY == 0:
                await writer.drain()
                await asyncio.sleep(0)
        last = b"data: " + json.dumps(script.final(count, finish, prompt, "")).encode() + b"\n\n"
        writer.write(chunk(last) + b"0\r\n\r\n")


async def main() -> None:
    fake = FakeUpstreams()
    groq = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    transformers = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    ports = {"groq": groq.sockets[0].getsockname()[1],
             "transformers": transformers.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await asyncio.gather(groq.serve_forever(), transformers.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
