"""A stream whose held strict part breaks its schema (transformers serve, strict_check.py):
generated again, as ``StrictRetry`` does for whole replies, and ended in the same stream.

The translator hands the reply over at its end (``strict_again``) and waits. The retries (the
same prompt as a whole completion, the seed moved on) run in a task that the flow's last hook
hands to mitmproxy to await (``EndsAfterWrites.later``), so mitmproxy's stream may end while
they run; the task writes a valid try's tool call or answer and the normal end straight to the
client (``streaming.write_chunk``), or the API's error event once the tries are spent. Only
for HTTP/1 clients in plain text (``can_write_chunks``); elsewhere an invalid stream ends with
the API's error at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from .backends import BackendOutput
from .completion import AssembledMessage
from .errors import ProxyError
from .parse import HarmonyDecoder
from .streaming import EndsAfterWrites, HarmonyStreamTranslator, can_write_chunks, write_chunk
from .strict_check import StrictRetry
from .translate import feed_output

Retried = tuple[list[Any], HarmonyDecoder, BackendOutput]  # a try's events, decoder, output


class StreamStrictRetry:
    """Generates a stream's strict part again while it breaks its schema."""

    def __init__(self, retry: StrictRetry, ends: EndsAfterWrites) -> None:
        self.retry = retry
        self.ends = ends

    def holder(self, flow: http.HTTPFlow
               ) -> Callable[[HarmonyStreamTranslator, str], bool] | None:
        """What a translator hands an invalid reply to, where the proxy can write the rest."""
        if not can_write_chunks(flow):
            return None

        def again(translator: HarmonyStreamTranslator, problem: str) -> bool:
            return self.retry.retries() > 0 and self.ends.later(
                flow, self._again(flow, translator, problem))

        return again

    async def _again(self, flow: http.HTTPFlow, translator: HarmonyStreamTranslator,
                     problem: str) -> None:
        exchange, strict = translator.exchange, translator.strict
        assert strict is not None

        def read(output: BackendOutput) -> tuple[Retried, AssembledMessage]:
            decoder = exchange.new_decoder()
            events = feed_output(decoder, output) + decoder.finish(output.truncated)
            message = AssembledMessage()
            message.add(events)
            return (events, decoder, output), message

        request = json.loads(flow.request.content or b"{}")
        request["stream"] = False  # a whole completion: only its strict part goes out
        request.pop("stream_options", None)
        try:
            events, decoder, output = await self.retry.generate(
                flow, exchange, request, strict.check, problem, translator.result.strict, read)
        except ProxyError as error:
            translator.on_upstream_failure = None  # no replica failover for a retry
            if not translator.done:
                write_chunk(flow, b"".join(translator.fail_now(error)))
            return
        if translator.done:  # the flow failed meanwhile (its error hook ended the stream)
            return
        data, writes = translator.finish_retried(events, decoder, output)
        await self.retry.settle_writes(writes)
        write_chunk(flow, data)
