"""A pooled stream whose replica fails: continued on another replica, the client none the wiser.

mitmproxy forwards the stream to the chosen replica (``dispatch.py``). ``ReplicaStream`` wraps
the stream translator and claims the replica's failures: a 5xx status (the client is answered
200 and nothing of the error body), an error event, an early end, a reset. The translation is
then suspended; in the last hook of the flow (``response``, or ``error`` for a reset: mitmproxy
keeps the client connection open until the hook returns) ``Failover.settle`` asks the next
replica for the rest: the prompt plus every token generated so far (ids for vLLM and llama.cpp,
text for transformers serve), ``max_tokens`` less what was generated, and feeds its stream
through the same translator, writing straight to the client (``streaming.write_chunk``). No
token is lost (only whole events count) or repeated (the new replica starts after them).

Only for HTTP/1 clients in plain text (``can_write_chunks``); elsewhere, and once the replicas
or ``REPLICA_ATTEMPTS`` are spent, the stream ends as every dialect ends a failed stream.
Where no other replica can take a stream its replica closed or reset before answering, the
same replica is asked once more on a fresh connection, and the client's head goes out only
once it answered (``_retry_fresh``); else the client gets its API's error (upstream_failure.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import httpx
from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http.http1 import assemble_response_head

from ..backends import Backend, BackendOutput
from ..constraints import constraint_for
from ..errors import ProxyError
from ..flows import prepare_sse
from ..records import record_of
from ..sse import SSEFramer
from ..streaming import HarmonyStreamTranslator, can_write_chunks, client_writer, write_chunk
from ..upstream_failure import (
    failure_of_exception,
    failure_of_flow,
    note,
    note_retry,
    recorded_failure,
    retry_allowed,
)
from .dispatch import Attempt, Dispatcher, Pooled, failure_outcome

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class ContinuedBackend:
    """A replica's adapter for a continuation: its counts made those of the whole reply (its
    prompt held ``generated`` tokens of the reply)."""

    backend: Backend
    generated: int

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def read_event(self, data: Any) -> BackendOutput:
        output = self.backend.read_event(data)
        if output.prompt_tokens is None and output.completion_tokens is None:
            return output
        return dataclasses.replace(
            output,
            prompt_tokens=None if output.prompt_tokens is None
            else output.prompt_tokens - self.generated,
            completion_tokens=None if output.completion_tokens is None
            else output.completion_tokens + self.generated)


class ReplicaStream:
    """``flow.response.stream`` of a pooled gpt-oss stream: the translator, plus the replica's
    outcome, its reported cached tokens, and its failures held for ``Failover.settle``."""

    def __init__(self, flow: http.HTTPFlow, pooled: Pooled,
                 translator: HarmonyStreamTranslator, broken: bool) -> None:
        self.flow = flow
        self.pooled = pooled
        self.translator = translator
        self.giving_up = False
        self.broken = False
        translator.on_upstream_failure = self.failed
        if broken:  # the replica answered an error status: nothing of it reaches the client
            translator.suspended = self.broken = True

    def __call__(self, data: bytes) -> list[bytes]:
        if self.broken:
            return []
        attempt = self.pooled.attempt
        if attempt is not None and b"cache" in data:
            attempt.cached(data)
        out = self.translator(data)
        if self.translator.result.first_token_at is not None:
            self.pooled.first_token = True
        if (self.translator.done or self.translator.awaiting_strict) and attempt is not None:
            attempt.end("ok")
        return out

    def failed(self, error: ProxyError) -> bool:
        """The replica failed mid-stream: True holds the translation for a continuation."""
        attempt = self.pooled.attempt
        outcome = "error" if error.code == "upstream_error" else "reset"
        if attempt is not None:
            attempt.end(outcome, error.message)
        if self.giving_up or not can_write_chunks(self.flow) or not self.pooled.can_retry():
            return False
        if self._constrained_midway():
            record_of(self.flow)["resume_refused"] = "constrained"
            return False
        self.broken = self.translator.suspended = True
        return True

    def _constrained_midway(self) -> bool:
        """A backend constraint (llama.cpp's grammar, vLLM's structured outputs) covers the
        whole reply from its start: a continuation would make it start over mid-reply, so a
        constrained reply already under way ends as a failed stream instead of resuming."""
        pooled = self.pooled
        return (self.translator.completion_tokens > 0 and pooled.pool.kind != "transformers"
                and constraint_for(pooled.request, pooled.prompt) is not None)


def client_gone(flow: http.HTTPFlow) -> bool:
    """The client closed (or half-closed: mitmproxy takes that as not waiting any more)."""
    return flow.client_conn.state is not ConnectionState.OPEN or client_writer(flow) is None


class Failover:
    """Takes over pooled streams whose replica failed, in the flow's last hook."""

    def __init__(self, dispatcher: Dispatcher, client: Callable[[], httpx.AsyncClient],
                 timeout: Callable[[], float],
                 translator: Callable[[http.HTTPFlow], HarmonyStreamTranslator | None]) -> None:
        self.dispatcher = dispatcher
        self.translator = translator
        self.client = client
        self.timeout = timeout
        self.streams: dict[str, ReplicaStream] = {}

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A replica answered a pooled stream with a 5xx: the client gets 200 and the stream
        is continued from the start on another replica once this body is over."""
        response = flow.response
        pooled = self.dispatcher.flows.get(flow.id)
        if (pooled is None or response is None or response.status_code < 500
                or pooled.attempt is None):
            return
        pooled.attempt.end("http_5xx", f"answered {response.status_code}")
        if not can_write_chunks(flow) or not pooled.can_retry():
            return  # answered as before: the model server's error, as a 502
        record_of(flow)["replica_status"] = response.status_code
        response.status_code, response.reason = 200, "OK"
        response.headers["content-type"] = "text/event-stream"

    def wrap(self, flow: http.HTTPFlow, translator: HarmonyStreamTranslator
             ) -> HarmonyStreamTranslator | ReplicaStream:
        pooled = self.dispatcher.flows.get(flow.id)
        if pooled is None:
            return translator
        broken = "replica_status" in record_of(flow)
        if len(pooled.pool.replicas) > 1 and flow.response is not None \
                and can_write_chunks(flow):
            # A stream rescued from mitmproxy's error hook ends with mitmproxy closing the
            # connection: a client must not send its next request on it.
            flow.response.headers["connection"] = "close"
        stream = self.streams[flow.id] = ReplicaStream(flow, pooled, translator, broken)
        return stream

    def forget(self, flow: http.HTTPFlow) -> None:
        """The flow's last hook ran: nothing of it is kept."""
        self.streams.pop(flow.id, None)
        self.dispatcher.forget(flow)

    def pending(self, flow: http.HTTPFlow, end_body: bool) -> bool:
        """Whether ``settle`` has work for this flow's last hook (cheap: most flows have
        none, and their hooks stay synchronous)."""
        stream = self.streams.get(flow.id)
        if stream is None:
            return end_body and flow.response is None and flow.id in self.dispatcher.flows
        return not stream.translator.done and (stream.broken or end_body)

    async def settle(self, flow: http.HTTPFlow, end_body: bool) -> bool:
        """The flow's last hook: continue a broken stream on other replicas; True when the
        client's stream was ended here (``end_body``: the error hook, whose connection
        mitmproxy closes next, so the body's end is written here too)."""
        stream = self.streams.pop(flow.id, None)
        if stream is None and end_body and flow.response is None:
            return await self._before_headers(flow)
        if stream is None or stream.translator.done:
            return False
        if end_body and not stream.broken:  # reset mid-body, or the client went away
            if client_gone(flow):
                return False
            reason = flow.error.msg if flow.error is not None else "connection lost"
            if not stream.failed(ProxyError(502, f"The model server's stream broke: {reason}",
                                            code="upstream_incomplete")):
                return False
        if not stream.broken:
            return False
        ended = await self._continue(flow, stream)
        if end_body and ended:
            write_chunk(flow, b"", last=True)
            if flow.error is not None and stream.translator.result.error is None:
                record_of(flow)["recovered_error"] = flow.error.msg
                flow.error = None
        return ended

    async def _before_headers(self, flow: http.HTTPFlow) -> bool:
        """The replica took the request and broke before answering (mitmproxy's error hook,
        no response yet): answer the client here, from the next replica. mitmproxy would
        then send its own error page on this connection, so it is marked unwritable for
        mitmproxy, and ``connection: close`` tells the client to close it."""
        pooled = self.dispatcher.flows.get(flow.id)
        if pooled is None or pooled.attempt is None or not can_write_chunks(flow) \
                or client_gone(flow):
            return False
        if not pooled.can_retry():
            return await self._retry_fresh(flow, pooled)
        translator = self.translator(flow)
        if translator is None or client_writer(flow) is None:
            return False
        reason = flow.error.msg if flow.error is not None else "connection lost"
        note(flow, recorded_failure(flow) or failure_of_flow(flow))
        pooled.attempt.end("reset", f"broke before answering: {reason}")
        self._send_head(flow)
        stream = ReplicaStream(flow, pooled, translator, True)
        ended = await self._continue(flow, stream)
        self._end_recovered(flow, stream, reason)
        return ended

    async def _retry_fresh(self, flow: http.HTTPFlow, pooled: Pooled) -> bool:
        """No other replica: the same one once more on a fresh connection, when it closed or
        reset the last one before answering (a kept-alive connection it had just closed). The
        client's head goes out once the replica answered 200; False (nothing sent) otherwise,
        and the client gets its API's error for the first failure."""
        failure = recorded_failure(flow) or failure_of_flow(flow)
        note(flow, failure)
        if pooled.attempt is None or not retry_allowed(flow, failure):
            return False
        pooled.attempt.end("retried", f"broke before answering: {failure.detail}")
        attempt = pooled.again()
        backend = await self.dispatcher.backend(attempt.replica)
        body = backend.request_body(pooled.prompt, pooled.request, True, pooled.model_field)
        client = self.dispatcher.upstream.fresh()
        timeout = httpx.Timeout(self.timeout(), connect=CONNECT_TIMEOUT)
        request = client.build_request("POST", attempt.replica.url + backend.completions_path,
                                       json=body, timeout=timeout)
        try:
            answer = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            second = failure_of_exception(exc)
            attempt.end(failure_outcome(second), second.detail)
            note_retry(flow, failure, "failed", f"{second.cause}: {second.detail}")
            return False
        try:
            translator = self.translator(flow)
            if answer.status_code != 200 or translator is None or client_gone(flow):
                attempt.end("http_5xx" if answer.status_code >= 500 else "cancelled",
                            f"answered {answer.status_code}")
                note_retry(flow, failure, "failed", f"answered {answer.status_code}")
                return False
            note_retry(flow, failure, "ok")
            self._send_head(flow)
            stream = ReplicaStream(flow, pooled, translator, False)
            if await self._pump(flow, stream, attempt, answer):
                attempt.end("cancelled")
                return False
        finally:
            await answer.aclose()
        ended = await self._continue(flow, stream)
        self._end_recovered(flow, stream, failure.detail)
        return ended

    @staticmethod
    def _send_head(flow: http.HTTPFlow) -> None:
        """The client's 200 stream head, written here in place of mitmproxy's error page."""
        flow.response = http.Response.make(200, b"", {"connection": "close"})
        prepare_sse(flow)
        writer = client_writer(flow)
        assert writer is not None
        writer.write(assemble_response_head(flow.response))
        flow.client_conn.state &= ~ConnectionState.CAN_WRITE

    @staticmethod
    def _end_recovered(flow: http.HTTPFlow, stream: ReplicaStream, reason: str) -> None:
        write_chunk(flow, b"", last=True)
        if stream.translator.result.error is None:
            record_of(flow)["recovered_error"] = reason
            flow.error = None

    async def _continue(self, flow: http.HTTPFlow, stream: ReplicaStream) -> bool:
        """Next replicas until the reply is done or none is left; then the dialect's failed
        end. False when the client went away."""
        pooled, translator = stream.pooled, stream.translator
        record = record_of(flow)
        exchange = translator.exchange
        while not translator.done:
            generated_text = "".join(translator.result.upstream_text)
            generated = translator.completion_tokens
            ids = pooled.prompt.token_ids + translator.generated_ids
            attempt = pooled.begin(ids, resume=generated > 0)
            if attempt is None:
                break
            backend = await self.dispatcher.backend(attempt.replica)
            prompt = dataclasses.replace(pooled.prompt, token_ids=ids,
                                         text=pooled.prompt.text + generated_text)
            request = pooled.request
            if request.max_tokens is not None:
                request = dataclasses.replace(request,
                                              max_tokens=max(1, request.max_tokens - generated))
            body = backend.request_body(prompt, request, True, pooled.model_field)
            translator.exchange = dataclasses.replace(
                exchange, backend=ContinuedBackend(backend, generated))
            translator.framer = SSEFramer()
            translator.suspended = stream.broken = False
            record["resumed" if generated else "failed_over"] = \
                record.get("resumed" if generated else "failed_over", 0) + 1
            gone = await self._relay(flow, stream, attempt,
                                     attempt.replica.url + backend.completions_path, body)
            if gone:
                attempt.end("cancelled")
                return False
        if not translator.done:
            stream.giving_up = True
            translator.suspended = False
            failures = pooled.failures() or "no replica left"
            if not write_chunk(flow, translator.abort(f"no replica could continue it "
                                                      f"({failures})")):
                return client_writer(flow) is not None
        return True

    async def _relay(self, flow: http.HTTPFlow, stream: ReplicaStream, attempt: Attempt,
                     url: str, body: dict[str, Any]) -> bool:
        """One continuation: the replica's stream through the translator to the client.
        True when the client went away."""
        timeout = httpx.Timeout(self.timeout(), connect=CONNECT_TIMEOUT)
        try:
            async with self.client().stream("POST", url, json=body, timeout=timeout) as answer:
                if answer.status_code != 200:
                    if answer.status_code < 500:  # the request itself: no replica will take it
                        stream.pooled.budget = 0
                    attempt.end("http_5xx" if answer.status_code >= 500 else "rejected",
                                f"answered {answer.status_code}")
                    stream.broken = stream.translator.suspended = True
                    return False
                return await self._pump(flow, stream, attempt, answer)
        except httpx.HTTPError as exc:
            _broke(stream, attempt, exc)
        return False

    @staticmethod
    async def _pump(flow: http.HTTPFlow, stream: ReplicaStream, attempt: Attempt,
                    answer: httpx.Response) -> bool:
        """A replica's 200 stream through the translator to the client; True when the client
        went away. A broken read ends the attempt and holds the stream for the next one."""
        try:
            async for data in answer.aiter_raw():
                out = stream(data)
                if out and not write_chunk(flow, b"".join(out)):
                    return True
                if stream.translator.done or stream.broken:
                    return False
            out = stream(b"")  # ended before the reply did: a failure, held by ``failed``
            if out and not write_chunk(flow, b"".join(out)):
                return True
        except httpx.HTTPError as exc:
            _broke(stream, attempt, exc)
        return False


def _broke(stream: ReplicaStream, attempt: Attempt, exc: httpx.HTTPError) -> None:
    """A replica's stream failed (or never opened): the attempt ends by its cause and the
    translation waits for the next replica."""
    failure = failure_of_exception(exc)
    attempt.end(failure_outcome(failure), f"{failure.cause} ({type(exc).__name__})")
    if not stream.translator.done:
        stream.broken = stream.translator.suspended = True

