"""Per-token translation of a model server's SSE stream into the client API's stream.

Installed as ``flow.response.stream`` in the ``responseheaders`` hook. mitmproxy calls it with
each network chunk as it arrives and once with ``b""`` at the end; it returns the bytes to send
(``[]`` to hold back; never ``b""`` mid-stream, which would end the body). An exception here
would silently drop a chunk, so every failure becomes the dialect's error event instead.

When the upstream connection breaks mid-body (reset, crash), mitmproxy never calls the stream
again: it fires the ``error`` hook and then closes the client connection. ``abort`` closes the
translation there and ``send_last_chunk`` delivers its error event before that close.

The reply's end (its terminal events) waits for the store writes it made (a shared store writes
in the background; the next turn, maybe on another proxy, reads them): the translator hands it
to ``EndsAfterWrites``, whose task writes it once they are done (state/writes.py), and the
gateway's ``response`` hook hands that task to mitmproxy, which awaits it before it ends the body.
Only where ``can_write_chunks``; elsewhere, and with the in-process store, the end goes out with
the chunk that made it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, http

from .backends import BackendFormatError, BackendOutput
from .completion import AssembledMessage
from .dialects.base import ReplyWriter
from .encoding import harmony_encoding
from .errors import ProxyError
from .parse import HarmonyDecoder, StrippedOutputError
from .sse import SSEFramer
from .state.writes import Writes, collect_writes
from .strict_check import held_strict_for
from .translate import HarmonyExchange, feed_output

logger = logging.getLogger(__name__)
HEAD_DELAY = 0.05
RESUMABLE = frozenset({"upstream_error", "upstream_incomplete"})  # the server's failures

STRIPPED_HELP = (
    "The model server removed harmony's control tokens (<|channel|>, <|message|>, …), so the "
    "gpt-oss reply cannot be parsed. Serve a harmony-ready copy of the model: run "
    "`./run.sh prepare MODEL` (or `harmony-groq-prepare MODEL`) and start `transformers serve` "
    "on the folder it prints."
)


def stripped_error(exc: StrippedOutputError) -> ProxyError:
    return ProxyError(502, f"{STRIPPED_HELP} ({exc})", code="harmony_tokens_stripped")


@dataclass
class StreamResult:
    """What the log records once the stream is over."""

    upstream_text: list[str] = field(default_factory=list)
    message: AssembledMessage = field(default_factory=AssembledMessage)
    keys: tuple[str, ...] = ()
    finish_reason: str | None = None
    usage: dict | None = None
    error: str | None = None
    repairs: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    keepalives: int = 0
    interrupted: bool = False  # ended by ``abort``: the flow failed outside the stream
    strict: dict[str, Any] = field(default_factory=dict)  # strict_tries (transformers serve)

    def client_message(self) -> dict[str, Any]:
        """The message the client's deltas concatenate to (reasoning only where it was sent)."""
        return self.message.to_message(self.keys)

    def summary(self) -> dict[str, Any]:
        """The record's ``stream_summary``."""
        return {"upstream_text": "".join(self.upstream_text), "message": self.client_message(),
                "finish_reason": self.finish_reason, "usage": self.usage, "error": self.error,
                "repairs": self.repairs, "first_token_at": self.first_token_at,
                "keepalives": self.keepalives, "interrupted": self.interrupted, **self.strict}


HoldEnd = Callable[[bytes, Writes], bool]  # takes the end to write after the writes, or not


class InterruptibleStream:
    """A stream translator the ``error`` hook can close: ``abort`` writes its terminal events.
    Its first output opens the client's stream (``reply.start()``) whatever arrives first.
    Its end waits for the store writes it made where ``hold_end`` takes it."""

    done: bool
    started: bool
    interrupted: bool = False
    prompt_tokens = 0  # known before generation (gpt-oss): the reply's opening reports it
    reply: ReplyWriter
    hold_end: HoldEnd | None = None

    def _opening(self) -> list[bytes]:
        if self.started:
            return []
        self.started = True
        return self.reply.start(self.prompt_tokens)

    def _end(self, end: list[bytes], writes: Writes, out: list[bytes]) -> None:
        """The reply's end into ``out``, unless it waits for ``writes`` under way."""
        if not (self.hold_end is not None and writes.pending()
                and self.hold_end(b"".join(end), writes)):
            out.extend(end)

    def _fail(self, error: ProxyError, out: list[bytes]) -> None:
        raise NotImplementedError

    def abort(self, reason: str) -> bytes:
        """The flow failed outside the stream (upstream reset, client gone): close the
        translation and return the terminal events the client should still get, if any."""
        if self.done:
            return b""
        out: list[bytes] = []
        self.interrupted = True
        self._fail(ProxyError(502, f"The stream was interrupted: {reason}",
                              code="stream_interrupted"), out)
        return b"".join(out)


class HarmonyStreamTranslator(InterruptibleStream):
    """Backend SSE bytes in, the client API's SSE bytes out (written by ``exchange.reply``).

    ``on_upstream_failure`` (set by the replica pool) may claim a failure of the model server
    (an error event, an early end): the translation is then ``suspended`` instead of failed,
    and can be continued with another server's stream (``pool/resume.py``)."""

    on_upstream_failure: Callable[[ProxyError], bool] | None = None
    suspended = False
    # Set by the tool loop (toolloop/): whether a generation that stopped on a server-tool
    # call is held for the loop to continue, and the filter the answer's events pass (cites).
    on_server_call: Callable[[], bool] | None = None
    event_filter: Callable[[list[Any]], list[Any]] | None = None
    # Set by strict_stream.py: takes a reply whose held strict part is invalid (True: it is
    # generated again and ended from there; the translation waits meanwhile).
    strict_again: Callable[[HarmonyStreamTranslator, str], bool] | None = None
    awaiting_strict = False

    def __init__(self, exchange: HarmonyExchange, keepalive_seconds: float,
                 on_done: Callable[[StreamResult], None],
                 clock: Callable[[], float] = time.monotonic,
                 hold_end: HoldEnd | None = None) -> None:
        self.exchange = exchange
        self.hold_end = hold_end
        self.decoder = exchange.new_decoder()
        self.reply = exchange.reply
        self.framer = SSEFramer()
        self.keepalive_seconds = keepalive_seconds
        self.on_done = on_done
        self.result = StreamResult(keys=exchange.reply.keys)
        self.prompt_tokens = len(exchange.prompt.token_ids)
        self.started = False
        self.done = False
        self.completion_tokens = 0
        self.generated_ids: list[int] = []  # what a continuation's prompt needs (id servers)
        self.clock = clock
        self.last_sent = clock()
        self.last_output: BackendOutput | None = None
        self.strict = held_strict_for(exchange)  # transformers serve: validated at the end

    def __call__(self, data: bytes) -> list[bytes]:
        if self.done or self.suspended or self.awaiting_strict:
            return []
        out = self._opening()
        try:
            if not data:
                raise ProxyError(502, "The model server ended the stream before the completion "
                                 "finished.", code="upstream_incomplete")
            for payload in self.framer.feed(data):
                self._event(payload, out)
                if self.done or self.suspended:
                    break
        except ProxyError as exc:
            self._fail(exc, out)
        except StrippedOutputError as exc:
            self._fail(stripped_error(exc), out)
        except Exception as exc:  # never let mitmproxy drop a chunk silently
            logger.exception("stream translation failed")
            self._fail(ProxyError(502, f"The model server's stream could not be translated: "
                                  f"{exc}", code="translation_error"), out)
        self._pace(out)
        return out

    def idle(self) -> bytes:
        """What to send while the model server is silent: the reply's start, then a
        keep-alive each ``keepalive_seconds`` (none after the reply ended)."""
        if self.done:
            return b""
        out = self._opening()
        self._pace(out)
        return b"".join(out)

    def _pace(self, out: list[bytes]) -> None:
        now = self.clock()
        if not out and now - self.last_sent >= self.keepalive_seconds:
            # Hidden reasoning (or a long header) sends nothing: keep idle clients from timing out.
            out.append(self.reply.keepalive())
            self.result.keepalives += 1
        if out:
            self.last_sent = now

    def _event(self, payload: str, out: list[bytes]) -> None:
        if payload.strip() == "[DONE]":
            return
        try:
            output = self.exchange.backend.read_event(json.loads(payload))
        except (json.JSONDecodeError, BackendFormatError):
            raise ProxyError(502, f"The model server sent an unreadable event: {payload[:200]!r}",
                             code="upstream_error") from None
        if output.error is not None:
            raise ProxyError(502, f"The model server failed: {output.error}",
                             code="upstream_error")
        if output.text or output.token_ids:
            if self.result.first_token_at is None:
                self.result.first_token_at = time.time()
            # Servers that send ids may send control tokens without text (llama.cpp without -sp).
            self.result.upstream_text.append(output.text or harmony_encoding().decode(
                output.token_ids or []))
            self.completion_tokens += len(output.token_ids) if output.token_ids else 1
            if not self.exchange.backend.text_transport:
                self.generated_ids.extend(output.token_ids if output.token_ids is not None else
                                          harmony_encoding().encode(output.text,
                                                                    allowed_special="all"))
        self._emit(feed_output(self.decoder, output), out)
        if self.decoder.stopped:
            self._finish(output, out)
        elif output.finish_reason is not None:
            if (self.on_server_call is not None
                    and self.decoder.end_server_call(output.truncated) and self.on_server_call()):
                self.suspended = True  # the tool loop runs the call and continues the reply
                self.last_output = output
                return
            self._emit(self.decoder.finish(output.truncated), out)
            self._finish(output, out)

    def _emit(self, events: list[Any], out: list[bytes]) -> None:
        if self.event_filter is not None:
            events = self.event_filter(events)
        self.result.message.add(events)
        out.extend(self.reply.events(self.strict.split(events) if self.strict else events))

    def emit(self, events: list[Any]) -> list[bytes]:
        """Events from outside the model's stream (a tool step) into the reply."""
        out: list[bytes] = []
        self._emit(events, out)
        return out

    def finish_now(self) -> list[bytes]:
        """End the reply where the last generation stopped (the tool loop's cap)."""
        out: list[bytes] = []
        self._emit(self.decoder.finish(False), out)
        self._finish(self.last_output or BackendOutput(text="", finish_reason="stop"), out)
        return out

    def fail_now(self, error: ProxyError) -> list[bytes]:
        """End the reply with ``error`` (a tool step's generation failed)."""
        out: list[bytes] = []
        if not self.done:
            self._fail(error, out)
        return out

    def _finish(self, output: BackendOutput, out: list[bytes]) -> None:
        flush = getattr(self.event_filter, "flush", None)
        if flush is not None:  # a citation marker held back at the very end
            self._emit(flush(), out)
        if self.strict is not None:
            problem = self.strict.problem(self.result.message, output.truncated
                                          and not self.decoder.stopped, self.result.strict)
            if (problem is not None and self.strict_again is not None
                    and self.strict_again(self, problem)):
                self.awaiting_strict = True
                return
            out.extend(self.reply.events(self.strict.release(problem, self.result.strict)))
        end, writes = self._end_reply(self.decoder, output, self.completion_tokens)
        self._end(end, writes, out)
        self._close()

    def _end_reply(self, decoder: HarmonyDecoder, output: BackendOutput,
                   completion_tokens: int) -> tuple[list[bytes], Writes]:
        """The reply's terminal events, and the store writes they wait for."""
        message = self.result.message
        outcome = self.exchange.outcome(decoder, message, output, completion_tokens)
        with collect_writes() as writes:
            self.exchange.remember(message)
            end = self.reply.finish(message, outcome)
        self.result.finish_reason, self.result.usage = outcome.finish, outcome.usage()
        return end, writes

    def finish_retried(self, events: list[Any], decoder: HarmonyDecoder,
                       output: BackendOutput) -> tuple[bytes, Writes]:
        """The reply's end after a valid retry (strict_stream.py): the retry's strict part in
        place of the held one, then the terminal events (and the writes they wait for)."""
        assert self.strict is not None
        self.awaiting_strict = False
        out = self.reply.events(self.strict.replace(self.result.message, events))
        end, writes = self._end_reply(decoder, output, output.completion_tokens
                                      or self.completion_tokens)
        self._close()
        return b"".join(out + end), writes

    def _fail(self, error: ProxyError, out: list[bytes]) -> None:
        if (error.code in RESUMABLE and self.on_upstream_failure is not None
                and self.on_upstream_failure(error)):
            return
        logger.warning("gpt-oss stream to %s failed: %s", self.exchange.request.model,
                       error.message)
        out.extend(self.reply.fail(error))
        self.result.error = error.message
        self.result.interrupted = self.interrupted
        self._close()

    def _close(self) -> None:
        self.done = True
        self.result.repairs = self.decoder.repairs
        self.on_done(self.result)


def can_write_chunks(flow: http.HTTPFlow) -> bool:
    """Whether chunks of our own can reach this client: HTTP/1 in plaintext (TLS clients: the
    bytes would bypass the encryption; HTTP/2 clients take frames, not chunks)."""
    return not (flow.request.is_http2 or flow.request.is_http3
                or flow.client_conn.tls_established)


def client_writer(flow: http.HTTPFlow, server: bool = False) -> asyncio.StreamWriter | None:
    """The client connection's writer (``server``: the upstream connection's), or None when it
    cannot be found or is closing.

    mitmproxy offers no way to send body data the upstream did not cause, so this reaches into
    mitmproxy 12's connection handler (``proxyserver.connections`` → ``transports`` →
    ``writer``); every step is checked.
    """
    master = getattr(ctx, "master", None)
    proxyserver = master.addons.get("proxyserver") if master else None
    handler = getattr(proxyserver, "connections", {}).get(flow.client_conn.id)
    io = getattr(handler, "transports", {}).get(flow.server_conn if server else flow.client_conn)
    writer = getattr(io, "writer", None)
    return None if writer is None or writer.is_closing() else writer


def _chunk_writer(flow: http.HTTPFlow) -> asyncio.StreamWriter | None:
    """The client's writer where chunks of our own can go (an HTTP/1 chunked body in plain
    text), else None."""
    response = flow.response
    if (response is None or not can_write_chunks(flow)
            or "chunked" not in response.headers.get("transfer-encoding", "").lower()):
        return None
    return client_writer(flow)


def write_chunk(flow: http.HTTPFlow, data: bytes, last: bool = False) -> bool:
    """Write ``data`` as one chunk of an HTTP/1 client's chunked body, outside mitmproxy's
    stream (``last``: and the body's end, even with no ``data``); ``False``: nothing was sent.
    A chunk is one write on the event loop, so it never lands inside one of mitmproxy's.
    """
    writer = _chunk_writer(flow) if data or last else None
    if writer is None:
        return False
    chunk = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
    writer.write(chunk + (b"0\r\n\r\n" if last else b""))
    return True


def send_last_chunk(flow: http.HTTPFlow, data: bytes) -> bool:
    """Write ``data`` and the end of the body from the ``error`` hook, whose connection
    mitmproxy is about to close: without it the client gets a truncated chunked body
    ("incomplete chunked read"), also when the reply was complete and only the model server's
    own end of the body was lost. HTTP/2 clients get a stream reset."""
    return write_chunk(flow, data, last=True)


class EndsAfterWrites:
    """Streams' ends that wait for their store writes: each written by a task of its own as soon
    as ``settle`` is done with the writes (at most the store's timeout), before mitmproxy ends
    the body (it awaits what the gateway's ``response`` and ``error`` hooks return)."""

    def __init__(self, settle: Callable[[Writes], Awaitable[None]]) -> None:
        self.settle = settle
        self.tasks: dict[str, asyncio.Task] = {}

    def holder(self, flow: http.HTTPFlow) -> HoldEnd | None:
        """What a translator hands its end to, where chunks of our own can reach the client."""
        if not can_write_chunks(flow):
            return None

        def hold(data: bytes, writes: Writes) -> bool:
            return self.later(flow, self._write(flow, data, writes))

        return hold

    def later(self, flow: http.HTTPFlow, work: Coroutine[Any, Any, None]) -> bool:
        """``work`` (which ends the client's stream) as the task the flow's last hook awaits;
        False (``work`` closed unrun) where chunks of our own cannot reach the client."""
        if _chunk_writer(flow) is None:  # the client is gone, or mitmproxy changed
            work.close()
            return False
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no event loop: a stream driven outside mitmproxy
            work.close()
            return False
        self.tasks[flow.id] = task
        return True

    async def _write(self, flow: http.HTTPFlow, data: bytes, writes: Writes) -> None:
        await self.settle(writes)
        write_chunk(flow, data)

    def finishing(self, flow: http.HTTPFlow, end_body: bool = False) -> Awaitable[None] | None:
        """The task writing the flow's end, if it waits for writes: the flow's last hook hands
        it to mitmproxy to await. ``end_body``: the body's end goes out too, after it (the
        upstream's own end was lost)."""
        task = self.tasks.pop(flow.id, None)
        if not end_body:
            return task
        if task is None:
            send_last_chunk(flow, b"")
            return None
        return _then_end_body(flow, task)


async def _then_end_body(flow: http.HTTPFlow, task: asyncio.Task) -> None:
    await task
    send_last_chunk(flow, b"")


async def heartbeat(flow: http.HTTPFlow, translator: HarmonyStreamTranslator) -> None:
    """While the model server sends nothing (a long prompt being prefilled), write the
    reply's start at once and then keep-alives (a Responses ``in_progress`` event, Anthropic's
    ``ping``), so clients with an idle timeout keep waiting (Codex: 300 s, counting events
    only). Runs until the translation ends; started only where ``can_write_chunks``, since
    what ``idle`` hands out is the client's only copy of the stream's opening."""
    await asyncio.sleep(HEAD_DELAY)  # mitmproxy sends the response head once the hooks return
    while not translator.done:
        data = translator.idle()
        if data and not write_chunk(flow, data):
            return
        due = translator.last_sent + translator.keepalive_seconds - translator.clock()
        await asyncio.sleep(min(max(due, HEAD_DELAY), 1.0))
