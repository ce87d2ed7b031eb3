"""Fake vLLM replicas for the pool: ``FakeVllm`` plus a prefix cache, a prefill model, a
deterministic continuation, and a way to kill and heal the server.

``FakeReplica`` keeps an LRU of 16-token blocks keyed by the chained prefix (what vLLM's
automatic prefix caching keeps of a prompt: its full blocks), reports the
prompt tokens it found there as ``usage.prompt_tokens_details.cached_tokens`` (vLLM with
``--enable-prompt-tokens-details``), and waits ``prefill_per_token`` seconds per uncached
prompt token before answering. Its reply is ``reply_for(prompt)``, and it continues a prompt
that already ends with the start of that reply the way an unbroken run would have gone on, so
a stream broken on one replica and resumed on another gives the same text.

``kill()`` closes the listening socket (new connections are refused) and resets every stream in
progress; ``heal()`` listens on the same port again with an empty cache.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from harmony_groq.encoding import harmony_encoding

from fakes import Scripted, _Server
from fakes_backends import DEFAULT_SCRIPT, FakeVllm, _VllmHandler

BLOCK = 16


def continuation(prompt: list[int], reply: list[int]) -> int:
    """How many leading tokens of ``reply`` the prompt already ends with."""
    for k in range(min(len(prompt), len(reply)), 0, -1):
        if prompt[-k:] == reply[:k]:
            return k
    return 0


class BlockCache:
    """An engine's prefix cache: whole blocks by key (the chained prefix), least recently used
    out. Shared with the benchmark's simulated replicas (bench/pool_replay.py)."""

    def __init__(self, blocks: int) -> None:
        self.capacity = blocks
        self.blocks: OrderedDict[Hashable, None] = OrderedDict()

    def serve(self, keys: list[Hashable]) -> int:
        """Prompt tokens found cached; the prompt's blocks become the most recent."""
        hits = 0
        for key in keys:
            if key not in self.blocks:
                break
            hits += 1
        for key in keys:
            self.blocks[key] = None
            self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
        return hits * BLOCK


def block_keys(ids: list[int]) -> list[tuple[int, ...]]:
    """One key per full block: every id up to the block's end (the chained prefix)."""
    return [tuple(ids[: end]) for end in range(BLOCK, len(ids) + 1, BLOCK)]


class _ReplicaHandler(_VllmHandler):
    cached = 0

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/metrics":
            super().do_GET()
            return
        body = (f'vllm:num_requests_running{{engine="0",model_name="m"}} '
                f'{self.fake.engine_running}\n'
                'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n').encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def setup(self) -> None:
        super().setup()
        with self.fake.lock:
            self.fake.connections.add(self.connection)

    def finish(self) -> None:
        with self.fake.lock:
            self.fake.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def take_script(self, prompt: list[int], body: dict[str, Any],
                    failure: Callable[[int], dict[str, Any]]) -> Scripted | None:
        fake: FakeReplica = self.fake
        if fake.dead:
            self.reset()
            return None
        with fake.lock:
            fake.prompts.append(prompt)
            fake.bodies.append(body)
            self.cached = fake.cache.serve(block_keys(prompt))
            fake.reported.append(self.cached)
            status, fake.fail_status = fake.fail_status, 200
            reset_after, fake.reset_after = fake.reset_after, None
            drop, fake.drop_request = fake.drop_request, False
            stall, fake.stall = fake.stall, 0.0
        time.sleep(stall)
        if drop:  # took the request, then died before answering
            self.reset()
            return None
        if status != 200:
            self.send_json(status, failure(status))
            return None
        reply = harmony_encoding().encode(fake.reply_for(prompt), allowed_special="all")
        done = continuation(prompt, reply)
        rest = harmony_encoding().decode(reply[done:])
        time.sleep(fake.prefill_per_token * (len(prompt) - self.cached))
        return Scripted(rest, token_delay=fake.token_delay, reset_after=reset_after)

    def _usage(self, prompt: list[int], completion: int) -> dict[str, Any]:
        return {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + completion,
                "completion_tokens": completion,
                "prompt_tokens_details": {"cached_tokens": self.cached}}

    def send_event(self, payload: Any) -> None:
        if self.fake.dead:  # killed: every stream in progress breaks
            self.reset()
            raise ConnectionResetError("killed")
        super().send_event(payload)


class FakeReplica(FakeVllm):
    handler = _ReplicaHandler

    def __init__(self, cache_blocks: int = 4096, prefill_per_token: float = 0.0,
                 reply_for: Callable[[list[int]], str] | None = None) -> None:
        self.lock = threading.Lock()
        self.cache = BlockCache(cache_blocks)
        self.prefill_per_token = prefill_per_token
        self.reply_for = reply_for or (lambda prompt: DEFAULT_SCRIPT)
        self.dead = False
        self.connections: set[socket.socket] = set()
        super().__init__()

    def configure_defaults(self) -> None:
        super().configure_defaults()
        self.fail_status = 200  # the next request is answered with this status
        self.reset_after: int | None = None  # the next stream breaks after this many events
        self.drop_request = False  # the next request is read, then the connection reset
        self.stall = 0.0  # seconds the next request waits before anything is answered
        self.engine_running = 0  # what /metrics says is running (other clients' requests)
        self.token_delay = 0.0
        self.reported: list[int] = []  # cached tokens reported, per request

    def reset_state(self) -> None:
        super().reset_state()
        with self.lock:
            self.cache.blocks.clear()

    def kill(self) -> None:
        """Like the process dying: connections refused, open ones (keep-alive too) reset."""
        self.dead = True
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def heal(self) -> None:
        with self.lock:
            self.cache.blocks.clear()
        self.server = _Server(("127.0.0.1", self.port), self.handler)
        self.server.fake = self  # type: ignore[attr-defined]
        self.dead = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if not self.dead:
            super().close()
