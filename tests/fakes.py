"""Fake upstreams for the tests: real HTTP servers on 127.0.0.1 that behave like the real ones.

``FakeTransformers`` follows ``transformers serve`` ≥ 5.6 ``/v1/completions`` (reference
transformers-serve.md §1.1): string prompts only, 422 on unknown keys, a pinned model, text
without ``<|return|>``, one SSE event per token and no ``[DONE]``, errors as
``data: {"error": …}``; optionally the stock server's stripped special tokens.
``FakeGroq`` follows Groq's OpenAI API: bearer-key auth errors, strict fields, SSE ending in
``[DONE]`` with ``x_groq`` and double usage, rate-limit headers.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harmony_groq.encoding import harmony_encoding

TRANSFORMERS_KEYS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "suffix",
    "frequency_penalty", "generation_config", "best_of", "echo", "logprobs", "n",
    "presence_penalty", "stream_options", "user", "logit_bias",
}
HARMONY_CONTROL = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>",
                   "<|return|>", "<|call|>")


def token_pieces(text: str) -> list[str]:
    """Split generated text into per-token strings, as a detokenizer streams them (a piece
    that ends inside a multi-byte character waits for the next token)."""
    enc = harmony_encoding()
    pieces, pending = [], []
    for token in enc.encode(text, allowed_special="all"):
        pending.append(token)
        decoded = enc.decode(pending)
        if not decoded.endswith("\ufffd"):
            pieces.append(decoded)
            pending = []
    if pending:
        pieces.append(enc.decode(pending))
    return pieces


DEFAULT_ANSWER = ("<|channel|>analysis<|message|>User says hi.<|end|><|start|>assistant"
                  "<|channel|>final<|message|>Hello!<|return|>")


HOLD_LIMIT = 10.0  # seconds a held body stays open at most


@dataclass
class Scripted:
    """One scripted completion of the fake model server."""

    text: str
    token_delay: float = 0.0
    error_after: int | None = None  # tokens, then a {"error": …} event
    reset_after: int | None = None  # tokens, then the connection is cut
    status: int = 200
    delay_headers: float = 0.0
    prefill: float = 0.0  # seconds between the stream's headers and its first token
    hold: bool = False  # after the last event (or the error event), keep the body open until
    #                     the proxy drops the connection (HOLD_LIMIT at most)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog of 5 refuses concurrent clients


class FakeServer:
    """Runs a handler class on a free loopback port in a background thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.connections: set[socket.socket] = set()  # open client connections
        self._listen(port)

    def _listen(self, port: int) -> None:
        self.server = _Server(("127.0.0.1", port), self.handler)
        self.server.fake = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def drop_connections(self) -> None:
        """Cut every open connection (after ``close``: a server process that died)."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def restart(self) -> None:
        """Listen again on the same port after ``close`` (a server that went down and came
        back)."""
        self._listen(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.fake.connections.add(self.connection)

    def finish(self) -> None:
        self.fake.connections.discard(self.connection)
        super().finish()

    def log_message(self, *args: Any) -> None:
        pass

    @property
    def fake(self) -> Any:
        return self.server.fake  # type: ignore[attr-defined]

    def read_json(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.fake.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                   "raw": raw})
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def start_sse(self, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def hold_open(self, hold: bool) -> None:
        """Keep the body open after the last event: the proxy cannot see the stream's end, so
        what the client does meanwhile (hanging up) reaches it first, every time."""
        deadline = time.monotonic() + HOLD_LIMIT
        while hold and time.monotonic() < deadline:
            # The proxy closes its side once the client left: stop holding then.
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                return

    def reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                                   b"\x00\x00\x00\x00")
        self.connection.close()
        self.close_connection = True


class _TransformersHandler(_Handler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/completions":  # FastAPI: the route exists, for POST only
            self.send_json(405, {"detail": "Method Not Allowed"}, {"allow": "POST"})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        fake: FakeTransformers = self.fake
        body = self.read_json()
        if self.path != "/v1/completions":
            self.send_json(404, {"detail": "Not Found"})
            return
        if not isinstance(body, dict):
            self.send_json(422, {"detail": "Invalid JSON"})
            return
        unexpected = set(body) - TRANSFORMERS_KEYS
        if unexpected:
            self.send_json(422, {"detail": f"Unexpected fields in the request: {unexpected}"})
            return
        if not isinstance(body.get("prompt"), str):
            self.send_json(400, {"detail": "prompt must be a string."})
            return
        if "model" in body and fake.pinned and body["model"] != fake.pinned:
            self.send_json(400, {"detail": f"Server is pinned to '{fake.pinned}'; requested "
                                           f"'{body['model']}'."})
            return
        fake.prompts.append(body["prompt"])
        script = fake.next_script(body["prompt"])
        if script.delay_headers:
            time.sleep(script.delay_headers)
        if script.status != 200:
            self.send_json(script.status, {"detail": "scripted failure"})
            return
        text = script.text
        if text.endswith("<|return|>"):
            text = text[: -len("<|return|>")]
        pieces = token_pieces(text)
        limit = body.get("max_tokens") or 1024
        finish = "stop"
        if len(pieces) >= limit:
            pieces, finish = pieces[:limit], "length"
        if fake.strip_specials:
            pieces = ["" if p in HARMONY_CONTROL else p for p in pieces]
        usage = {"completion_tokens": len(pieces),
                 "prompt_tokens": len(harmony_encoding().encode(body["prompt"],
                                                                allowed_special="all")),
                 "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": "req-1", "created": int(time.time()), "model": fake.pinned or "tiny",
                "object": "text_completion"}
        if not body.get("stream"):
            time.sleep(script.token_delay * len(pieces))
            self.send_json(200, {**base, "choices": [{"finish_reason": finish, "index": 0,
                                                      "text": "".join(pieces)}], "usage": usage})
            return
        self.start_sse()
        time.sleep(script.prefill)
        try:
            for n, piece in enumerate(pieces):
                if script.reset_after is not None and n == script.reset_after:
                    self.reset()
                    return
                if script.error_after is not None and n == script.error_after:
                    self.send_chunk(b'data: {"error": "CUDA out of memory (scripted)"}\n\n')
                    self.hold_open(script.hold)
                    self.end_chunks()
                    return
                if fake.strip_specials and not piece:
                    continue
                event = {**base, "choices": [{"index": 0, "text": piece}]}
                self.send_chunk(f"data: {json.dumps(event)}\n\n".encode())
                if script.token_delay:
                    time.sleep(script.token_delay)
            last = {**base, "choices": [{"finish_reason": finish, "index": 0, "text": ""}],
                    "usage": usage}
            self.send_chunk(f"data: {json.dumps(last)}\n\n".encode())
            self.hold_open(script.hold)
            self.end_chunks()
        except (BrokenPipeError, ConnectionResetError):
            fake.disconnects += 1


Rule = Callable[[str], "Scripted | str"]


class FakeTransformers(FakeServer):
    """Answers from a queue of scripts (then ``default``), or by a rule over each prompt."""

    handler = _TransformersHandler

    def __init__(self) -> None:
        self.scripts: deque[Scripted] = deque()
        self.default = Scripted(DEFAULT_ANSWER)
        self.rule: Rule | None = None
        self.prompts: list[str] = []
        self.pinned: str | None = None
        self.strip_specials = False
        self.disconnects = 0
        super().__init__()

    def script(self, *scripts: Scripted | str) -> None:
        self.scripts.extend(s if isinstance(s, Scripted) else Scripted(s) for s in scripts)

    def respond(self, rule: Rule) -> None:
        """Answer every request by ``rule(prompt)``: real agents send requests of their own
        (titles, summaries) in an order no queue can predict."""
        self.rule = rule

    def next_script(self, prompt: str) -> Scripted:
        if self.rule is not None:
            answer = self.rule(prompt)
            return answer if isinstance(answer, Scripted) else Scripted(answer)
        return self.scripts.popleft() if self.scripts else self.default

    def reset_state(self) -> None:
        self.default = Scripted(DEFAULT_ANSWER)
        self.scripts.clear()
        self.rule = None
        self.prompts.clear()
        self.requests.clear()
        self.pinned = None
        self.strip_specials = False
        self.disconnects = 0


GROQ_KEY = "gsk_testkey0123456789abcdefABCDEF"
GROQ_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# What the fake model passes to a tool it must call, in the pieces it streams.
FORCED_ARGUMENTS = ('{"reason": ', '"required"}')
RATE_HEADERS = {
    "x-ratelimit-limit-requests": "14400", "x-ratelimit-remaining-requests": "14399",
    "x-ratelimit-limit-tokens": "18000", "x-ratelimit-remaining-tokens": "17990",
    "x-ratelimit-reset-requests": "6s", "x-ratelimit-reset-tokens": "33ms",
    "x-request-id": "req_01fake",
}
GROQ_MODELS = [
    {"id": "llama-3.3-70b-versatile", "object": "model", "created": 1733447754,
     "owned_by": "Meta", "active": True, "context_window": 131072,
     "max_completion_tokens": 32768},
    {"id": "openai/gpt-oss-20b", "object": "model", "created": 1754407957, "owned_by": "OpenAI",
     "active": True, "context_window": 131072, "max_completion_tokens": 65536},
]


def groq_error(message: str, code: str | None = None, kind: str = "invalid_request_error"
               ) -> dict:
    error: dict[str, Any] = {"message": message, "type": kind}
    if code:
        error["code"] = code
    return {"error": error}


class _GroqHandler(_Handler):
    def _authorized(self) -> bool:
        if self.headers.get("authorization") == f"Bearer {GROQ_KEY}":
            return True
        self.send_json(401, groq_error("Invalid API Key", "invalid_api_key"))
        return False

    def do_GET(self) -> None:  # noqa: N802
        self.fake.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                   "raw": b""})
        if self.path != "/openai/v1/models":
            self.send_json(404, groq_error("Unknown request URL", "unknown_url"))
            return
        if self.fake.models_status != 200:
            self.send_json(self.fake.models_status, groq_error("internal", kind="api_error"))
            return
        if self._authorized():
            self.send_json(200, {"object": "list", "data": GROQ_MODELS})

    def do_POST(self) -> None:  # noqa: N802
        fake: FakeGroq = self.fake
        body = self.read_json()
        if self.path not in ("/openai/v1/chat/completions", "/openai/v1/responses"):
            self.send_json(404, groq_error("Unknown request URL", "unknown_url"))
            return
        if not self._authorized():
            return
        if fake.next_status:
            status, headers = fake.next_status.popleft()
            self.send_json(status, groq_error(f"scripted {status}", "rate_limit_exceeded",
                                              "tokens"), {**fake.rate_headers(), **headers})
            return
        if self.path == "/openai/v1/responses":
            self._responses(body)
            return
        problem = self._validate(body)
        if problem:
            self.send_json(400, groq_error(problem))
            return
        calls = self._tool_calls(body)
        if calls is not None:
            self._send_calls(body, calls)
            return
        last_user = next((m.get("content") for m in reversed(body["messages"])
                          if m.get("role") == "user"), "")
        answer = f"groq says: {last_user}"
        usage = {"queue_time": 0.01, "prompt_tokens": 12, "prompt_time": 0.001,
                 "completion_tokens": 5, "completion_time": 0.01, "total_tokens": 17,
                 "total_time": 0.011}
        if fake.completion_tokens is not None:  # a long reply, cut at the requested maximum
            limit = body.get("max_completion_tokens") or body.get("max_tokens") or 65536
            prompt = sum(len(json.dumps(m)) for m in body["messages"]) // 4
            completion = min(fake.completion_tokens, limit)
            usage.update(prompt_tokens=prompt, completion_tokens=completion,
                         total_tokens=prompt + completion)
        if fake.cached_tokens is not None:  # Groq's prompt caching
            usage["prompt_tokens_details"] = {"cached_tokens": fake.cached_tokens}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_fake"}
        # Reasoning models answer with Groq's own field name, `reasoning`.
        reasoning = "Thinking it over." if any(
            family in body["model"] for family in ("gpt-oss", "qwen")) else None
        # Groq's gpt-oss runs its own browser_search and reports it in executed_tools.
        searched = [{"index": 0, "type": "browser_search",
                     "arguments": json.dumps({"query": last_user}),
                     "output": "Groq result (https://example.com/groq)",
                     "search_results": {"results": [
                         {"title": "Groq result", "url": "https://example.com/groq",
                          "content": "A result found by Groq.", "score": 0.9}], "images": []}}
                    ] if any(t.get("type") == "browser_search" for t in body.get("tools") or
                             []) else None
        executed = (searched or []) + (self._executed(body, last_user) or []) or None
        if not body.get("stream"):
            message = {"role": "assistant", "content": answer}
            if reasoning:
                message["reasoning"] = reasoning
            if executed:
                message["executed_tools"] = executed
            self.send_json(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "x_groq": {"id": "req_01fake"}}, fake.rate_headers())
            return
        self.start_sse(fake.rate_headers())
        chunk = {**base, "object": "chat.completion.chunk"}

        def send(payload: dict) -> None:
            self.send_chunk(f"data: {json.dumps(payload)}\n\n".encode())

        send({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}],
              "x_groq": {"id": "req_01fake"}})
        if reasoning:
            send({**chunk, "choices": [{"index": 0, "delta": {"reasoning": reasoning},
                                        "logprobs": None, "finish_reason": None}]})
        for entry in executed or []:  # a code run streams its call, then its output
            parts = [{k: v for k, v in entry.items() if k != "output"}] if entry[
                "type"] == "python" else []
            for part in [*parts, entry]:
                send({**chunk, "choices": [{"index": 0, "delta": {"executed_tools": [part]},
                                            "logprobs": None, "finish_reason": None}]})
        for word in answer.split(" "):
            send({**chunk, "choices": [{"index": 0, "delta": {"content": word + " "},
                                        "logprobs": None, "finish_reason": None}]})
            time.sleep(fake.token_delay)
            if fake.stream_error:  # Groq's signal of a stream stopped early (x_groq.error)
                send({**chunk, "choices": [], "x_groq": {"id": "req_01fake",
                                                         "error": fake.stream_error}})
                self.hold_open(fake.hold)
                self.end_chunks()
                return
        send({**chunk, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "stop"}],
              "x_groq": {"id": "req_01fake", "usage": usage}, "usage": usage})
        if (body.get("stream_options") or {}).get("include_usage"):
            send({**chunk, "choices": [], "usage": usage})
        self.send_chunk(b"data: [DONE]\n\n")
        self.hold_open(fake.hold)
        self.end_chunks()

    @staticmethod
    def _executed(body: dict[str, Any], last_user: Any) -> list[dict[str, Any]] | None:
        """Groq's gpt-oss runs ``code_interpreter`` itself: ``RUN: code`` in the user message
        comes back as one ``executed_tools`` entry (the fake does not run it)."""
        if not any(t.get("type") == "code_interpreter" for t in body.get("tools") or []):
            return None
        text = last_user if isinstance(last_user, str) else json.dumps(last_user)
        if "RUN: " not in text:
            return None
        code = text.split("RUN: ", 1)[1].split('"', 1)[0]
        return [{"index": 0, "type": "python", "arguments": json.dumps({"code": code}),
                 "output": f"groq ran {code}\n"}]

    @staticmethod
    def _tool_calls(body: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The model calls a tool when ``tool_choice`` demands one (``required`` or named:
        FORCED_ARGUMENTS), or when the user says ``call NAME {json}`` and NAME is declared."""
        declared = [t["function"]["name"] for t in body.get("tools") or [] if "function" in t]
        choice = body.get("tool_choice")
        last = body["messages"][-1] if body["messages"] else {}
        text = last.get("content") if last.get("role") == "user" else None
        if isinstance(choice, dict) or (choice == "required" and declared):
            name = choice["function"]["name"] if isinstance(choice, dict) else declared[0]
            arguments = "".join(FORCED_ARGUMENTS)
        elif isinstance(text, str) and text.startswith("call "):
            name, _, arguments = text[5:].partition(" ")
        else:
            return None
        if name not in declared:
            return None
        return [{"index": 0, "id": "call_groq0001", "type": "function",
                 "function": {"name": name, "arguments": arguments or "{}"}}]

    def _send_calls(self, body: dict[str, Any], calls: list[dict[str, Any]]) -> None:
        usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": None,
                       "tool_calls": [{k: v for k, v in c.items() if k != "index"}
                                      for c in calls]}
            self.send_json(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": usage}, self.fake.rate_headers())
            return
        self.start_sse(self.fake.rate_headers())
        chunk = {**base, "object": "chat.completion.chunk"}
        for call in calls:  # Groq sends the name first, then the arguments in pieces
            arguments = call["function"]["arguments"]
            head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            for delta in ({"tool_calls": [head]}, *(
                    {"tool_calls": [{"index": call["index"],
                                     "function": {"arguments": arguments[i:i + 4]}}]}
                    for i in range(0, len(arguments), 4))):
                event = {**chunk, "choices": [{"index": 0, "delta": delta,
                                               "finish_reason": None}]}
                self.send_chunk(f"data: {json.dumps(event)}\n\n".encode())
        last = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
                "x_groq": {"id": "req_01fake", "usage": usage}}
        self.send_chunk(f"data: {json.dumps(last)}\n\n".encode())
        self.send_chunk(b"data: [DONE]\n\n")
        self.end_chunks()

    def _responses(self, body: Any) -> None:
        """Groq's Responses endpoint, following its published schema (additionalProperties:
        false, function tools only, no reasoning/custom items, typed assistant messages
        refused)."""
        problem = _responses_problem(body)
        if problem:
            self.send_json(400, groq_error(problem))
            return
        items = body["input"] if isinstance(body["input"], list) else [
            {"role": "user", "content": body["input"]}]
        last = next((i.get("content") for i in reversed(items) if i.get("role") == "user"), "")
        if isinstance(last, list):
            last = " ".join(p.get("text", "") for p in last)
        text = f"groq responses says: {last}"
        mcp_items = groq_remote_mcp(body, last)
        if mcp_items and mcp_items[-1]["type"] == "mcp_call":
            text = f"the tool said: {mcp_items[-1]['output'] or mcp_items[-1]['error']}"
        message = {"type": "message", "id": "msg_groq1", "role": "assistant",
                   "status": "completed",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}
        usage = {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 6, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 17}
        response = {"id": "resp_groq1", "object": "response", "created_at": int(time.time()),
                    "status": "completed", "model": body["model"],
                    "output": [*mcp_items, message], "tools": body.get("tools") or [],
                    "previous_response_id": None, "usage": usage}
        if not body.get("stream"):
            self.send_json(200, response, RATE_HEADERS)
            return
        self.start_sse(RATE_HEADERS)
        n = len(mcp_items)
        events = [("response.created", {"response": {**response, "status": "in_progress",
                                                      "output": [], "usage": None}}),
                  *((kind, {"output_index": i, "item": item}) for i, item in enumerate(mcp_items)
                    for kind in ("response.output_item.added", "response.output_item.done")),
                  ("response.output_item.added", {"output_index": n, "item": {
                      **message, "status": "in_progress", "content": []}}),
                  *(("response.output_text.delta", {"item_id": "msg_groq1", "output_index": n,
                                                    "content_index": 0, "delta": text[i:i + 6]})
                    for i in range(0, len(text), 6)),
                  ("response.output_item.done", {"output_index": n, "item": message}),
                  ("response.completed", {"response": response})]
        for n, (kind, payload) in enumerate(events):
            data = json.dumps({"type": kind, "sequence_number": n, **payload})
            self.send_chunk(f"event: {kind}\ndata: {data}\n\n".encode())
        self.hold_open(self.fake.hold)
        self.end_chunks()

    @staticmethod
    def _validate(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "invalid JSON"
        if "reasoning" in body:
            return "property 'reasoning' is unsupported"
        if not isinstance(body.get("stream_options", {}), dict | None):
            return "'stream_options' : value must be an object"
        if not isinstance(body.get("messages"), list) or not all(
                isinstance(m, dict) for m in body["messages"]):
            return "'messages' : value must be an array of objects"
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            return "'tools' : value must be an array"
        if "web_search_options" in body:
            return "property 'web_search_options' is unsupported"
        for n, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("type") in ("browser_search",
                                                               "code_interpreter"):
                if "gpt-oss" not in body.get("model", ""):  # Groq's built-ins: gpt-oss only
                    return f"'tools.{n}.type' : {tool['type']} is not supported with this model"
                continue
            function = tool.get("function") if isinstance(tool, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not GROQ_TOOL_NAME.fullmatch(name):
                return (f"'tools.{n}.function.name' : value must match pattern "
                        f"{GROQ_TOOL_NAME.pattern}")
        choice = body.get("tool_choice")
        function = choice.get("function") if isinstance(choice, dict) else None
        if isinstance(choice, dict) and not (isinstance(function, dict)
                                             and isinstance(function.get("name"), str)):
            return "'tool_choice' : value must name a function"
        stop = body.get("stop")
        if isinstance(stop, list) and len(stop) > 4:
            return "stop : maximum number of items is 4"
        limit = next((m["max_completion_tokens"] for m in GROQ_MODELS
                      if m["id"] == body.get("model")), None)
        for key in ("max_tokens", "max_completion_tokens"):
            if limit and isinstance(body.get(key), int) and body[key] > limit:
                return (f"`{key}` must be less than or equal to `{limit}`, the maximum value "
                        f"for `{key}` is less than the `context_window` for this model")
        for n, message in enumerate(body.get("messages") or []):
            if message.get("role") == "assistant" and "reasoning_content" in message:
                return (f"'messages.{n}' : for 'role:assistant' the following must be satisfied"
                        f"[('messages.{n}' : property 'reasoning_content' is unsupported)]")
        return None


GROQ_RESPONSES_FIELDS = {
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
    "tool_choice", "text", "reasoning", "metadata", "parallel_tool_calls", "store", "stream",
    "user", "service_tier", "truncation",
}


GROQ_MCP_FIELDS = {"type", "server_label", "server_url", "headers", "allowed_tools",
                   "require_approval", "server_description"}


def groq_remote_mcp(body: dict[str, Any], prompt: str) -> list[dict[str, Any]]:
    """What Groq does with ``mcp`` tools: list each server's tools (``mcp_list_tools``) and,
    scripted here, call the first allowed tool the user's message names, with the JSON object
    after its name as arguments (``mcp_call``)."""
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def run(tool: dict[str, Any]) -> list[dict[str, Any]]:
        http = httpx2.AsyncClient(headers=tool.get("headers") or {})
        async with http, Client(streamable_http_client(tool["server_url"], http_client=http),
                                cache=None) as client:
            listed = (await client.list_tools()).tools
            allowed = tool.get("allowed_tools")
            listed = [t for t in listed if allowed is None or t.name in allowed]
            out: list[dict[str, Any]] = [{
                "type": "mcp_list_tools", "id": f"mcpl_groq{len(listed)}",
                "server_label": tool["server_label"], "error": None,
                "tools": [{"name": t.name, "description": t.description,
                           "input_schema": t.input_schema, "annotations": None}
                          for t in listed]}]
            named = next((t for t in listed if t.name in prompt.split()), None)
            if named is not None:
                after = prompt.split(named.name, 1)[1].strip()
                arguments = after if after.startswith("{") else "{}"
                result = await client.call_tool(named.name, json.loads(arguments))
                output = "\n".join(c.text for c in result.content if hasattr(c, "text"))
                out.append({"type": "mcp_call", "id": "mcp_groq1",
                            "server_label": tool["server_label"], "name": named.name,
                            "arguments": arguments, "output": None if result.is_error
                            else output, "error": output if result.is_error else None,
                            "status": "completed"})
            return out

    items: list[dict[str, Any]] = []
    for tool in body.get("tools") or []:
        if tool.get("type") == "mcp":
            items += asyncio.run(run(tool))
    return items


def _responses_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "invalid JSON"
    for key in body:
        if key not in GROQ_RESPONSES_FIELDS:
            return f"property '{key}' is unsupported"
    if body.get("store") not in (None, False):
        return "'store' : currently only supports false or null"
    limit = next((m["max_completion_tokens"] for m in GROQ_MODELS
                  if m["id"] == body.get("model")), None)
    if limit and isinstance(body.get("max_output_tokens"), int) and (
            body["max_output_tokens"] > limit):
        return f"`max_output_tokens` must be less than or equal to `{limit}`"
    if set(body.get("reasoning") or {}) - {"effort"}:
        return "'reasoning.summary' : not supported"
    if set(body.get("text") or {}) - {"format"}:
        return "'text' : property 'verbosity' is unsupported"
    for tool in body.get("tools") or []:
        if tool.get("type") == "mcp":
            if set(tool) - GROQ_MCP_FIELDS or not tool.get("server_label") or not (
                    tool.get("server_url")):
                return "'tools' : an mcp tool needs server_label and server_url"
        elif tool.get("type") != "function":
            return f"'tools' : type {tool.get('type')!r} is not supported"
    items = body.get("input")
    if not isinstance(items, str | list):
        return "'input' : value must be a string or an array"
    for n, item in enumerate(items if isinstance(items, list) else []):
        kind = item.get("type")
        if kind not in (None, "message", "function_call", "function_call_output",
                        "item_reference", "mcp_list_tools", "mcp_call",
                        "mcp_approval_request", "mcp_approval_response"):
            return f"'input.{n}' : type {kind!r} is not supported"
        if kind == "message" and item.get("role") == "assistant":
            return f"'input.{n}' : assistant role is not supported with explicit type"
        content = item.get("content")
        if isinstance(content, list) and any(p.get("type") != "input_text" for p in content):
            return f"'input.{n}.content' : only input_text parts are supported"
    return None


class FakeGroq(FakeServer):
    handler = _GroqHandler

    def __init__(self) -> None:
        self.next_status: deque[tuple[int, dict[str, str]]] = deque()
        self.models_status = 200
        self.token_delay = 0.0
        self.completion_tokens: int | None = None  # usage of a reply this long, when set
        self.cached_tokens: int | None = None  # usage.prompt_tokens_details, when set
        self.rate_overrides: dict[str, str] = {}  # x-ratelimit-* headers to answer with
        self.stream_error: str | None = None  # sent as x_groq.error after the first word
        self.hold = False  # streams: keep the body open after the last event (hold_open)
        super().__init__()

    def rate_headers(self) -> dict[str, str]:
        return {**RATE_HEADERS, **self.rate_overrides}

    @property
    def base_url(self) -> str:
        return f"{self.url}/openai/v1"

    def reset_state(self) -> None:
        self.requests.clear()
        self.next_status.clear()
        self.models_status = 200
        self.token_delay = 0.0
        self.completion_tokens = None
        self.cached_tokens = None
        self.rate_overrides = {}
        self.stream_error = None
        self.hold = False


class _NpmRegistryHandler(_Handler):
    def do_GET(self) -> None:  # noqa: N802
        self.fake.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                   "raw": b""})
        if self.path.startswith("/-/ping"):
            self.send_json(200, {})
        else:
            self.send_json(404, {"error": "Not found"})


class FakeNpmRegistry(FakeServer):
    """An npm registry that answers ``npm ping`` and knows no package."""

    handler = _NpmRegistryHandler
