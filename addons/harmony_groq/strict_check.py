"""Strict schemas where the model server cannot constrain decoding (transformers serve): the
reply is validated after generation and generated again when invalid.

A strict tool's arguments and a json_schema answer are checked with jsonschema (formats
included). An invalid reply is asked for again, up to ``STRICT_RETRIES`` more times (a
request's seed moves on by one each time, so a seeded request does not repeat itself); if
every try is invalid the client gets the API's error, never arguments presented as strict
that are not. The flow log's ``strict_tries`` says how many tries it took. A reply cut at the
token limit is passed on as cut (``length``), not retried. A stream holds its strict part back
(``HeldStrict``) and is generated again the same way (strict_stream.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from jsonschema import Draft202012Validator
from mitmproxy import http

from .backends import BackendOutput
from .chat_request import ChatRequest
from .completion import AssembledMessage
from .errors import ProxyError
from .flows import answer
from .parse import ContentDelta, Event, ToolCall
from .records import record_of
from .state.writes import Writes, collect_writes
from .translate import HarmonyExchange, TranslatedCompletion, translate_completion

T = TypeVar("T")


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@dataclass(frozen=True)
class StrictCheck:
    """The schemas a reply to one request must follow."""

    tools: dict[str, dict[str, Any]]  # client tool name → parameters
    answer: dict[str, Any] | None

    def problem(self, message: AssembledMessage, truncated: bool) -> str | None:
        """Why the reply breaks its schemas, or None."""
        for call in message.tool_calls:
            if call.name in self.tools:
                why = _invalid(call.arguments, self.tools[call.name])
                if why:
                    return f"the arguments of {call.name!r} {why}"
        if self.answer is not None and not message.tool_calls and not truncated:
            why = _invalid("".join(message.content), self.answer)
            if why:
                return f"the answer {why}"
        return None


def _invalid(text: str, schema: dict[str, Any]) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return "are not JSON" if text.strip() else "are empty"
    error = next(iter(_validator(schema).iter_errors(value)), None)
    return None if error is None else f"break the schema: {error.message[:200]}"


def strict_check_for(request: ChatRequest) -> StrictCheck | None:
    """What to check in the reply to ``request``; None when nothing is strict."""
    tools = {t.name: t.parameters or {"type": "object", "properties": {}}
             for t in request.tools if t.strict and request.tool_choice != "none"}
    spec = request.response_format or {}
    answer = None
    if spec.get("type") == "json_schema" and isinstance(spec.get("json_schema"), dict):
        schema = spec["json_schema"].get("schema")
        answer = schema if isinstance(schema, dict) else None
    return StrictCheck(tools, answer) if tools or answer is not None else None


@dataclass
class HeldStrict:
    """A stream's strict parts (a strict tool's call, a json_schema answer's text), held back
    until the reply is over and valid; the analysis streams as it comes. An invalid one is
    generated again where the proxy can write to the client itself (strict_stream.py), else
    it ends with the API's error."""

    check: StrictCheck
    held: list[Event]

    def split(self, events: list[Event]) -> list[Event]:
        """What may go out now; the rest is held."""
        now = []
        for event in events:
            if (isinstance(event, ToolCall) and event.name in self.check.tools) or (
                    isinstance(event, ContentDelta) and self.check.answer is not None):
                self.held.append(event)
            else:
                now.append(event)
        return now

    def problem(self, message: AssembledMessage, truncated: bool, record: dict[str, Any]
                ) -> str | None:
        """Why the first try breaks its schemas, or None (``record``: its ``strict_tries``)."""
        record["strict_tries"] = 1
        return self.check.problem(message, truncated)

    def release(self, problem: str | None, record: dict[str, Any]) -> list[Event]:
        """The held events when the first try is valid (or cut), else ProxyError."""
        if problem is not None:
            record["strict_problem"] = problem
            raise unmet(problem, 1)
        return self.held

    def replace(self, message: AssembledMessage, events: list[Event]) -> list[Event]:
        """A valid retry's strict part in place of the held one, in ``message`` too; the
        events to send (the rest of the retry went out with the first try)."""
        retried = HeldStrict(self.check, [])
        retried.split(events)
        held = {id(event) for event in self.held}
        message.tool_calls = [call for call in message.tool_calls if id(call) not in held] + [
            event for event in retried.held if isinstance(event, ToolCall)]
        if self.check.answer is not None:
            message.content = [e.text for e in retried.held if isinstance(e, ContentDelta)]
        self.held = retried.held
        return retried.held


def held_strict_for(exchange: HarmonyExchange) -> HeldStrict | None:
    if exchange.backend.name != "transformers":
        return None
    check = strict_check_for(exchange.request)
    return HeldStrict(check, []) if check is not None else None


def unmet(problem: str, tries: int) -> ProxyError:
    return ProxyError(500, "The model did not produce a reply that follows the strict schema "
                      f"in {tries} {'try' if tries == 1 else 'tries'} ({problem}); the model "
                      "server cannot constrain decoding (BACKEND=transformers). Try again, or "
                      "raise STRICT_RETRIES.", code="strict_schema_unmet")


@dataclass
class StrictRetry:
    """Generates a whole reply again while it breaks its strict schemas (transformers serve
    only: the other backends constrain decoding)."""

    client: Callable[[], httpx.AsyncClient]
    settle_writes: Callable[[Writes], Awaitable[None]]
    retries: Callable[[], int]
    timeout: Callable[[], float]

    def retry(self, flow: http.HTTPFlow, exchange: HarmonyExchange,
              first: TranslatedCompletion, dialect: Any,
              done: Callable[[TranslatedCompletion], None]) -> Awaitable[None] | None:
        """None when ``first`` may go out (``done`` not called); else the retries, which end
        with ``done`` on a valid reply or the API's error."""
        if exchange.backend.name != "transformers":
            return None
        check = strict_check_for(exchange.request)
        if check is None:
            return None
        problem = check.problem(first.message, first.outcome.finish == "length")
        record_of(flow)["strict_tries"] = 1
        if problem is None:
            return None
        return self._again(flow, exchange, check, problem, dialect, done)

    async def _again(self, flow: http.HTTPFlow, exchange: HarmonyExchange, check: StrictCheck,
                     problem: str, dialect: Any,
                     done: Callable[[TranslatedCompletion], None]) -> None:
        def read(output: BackendOutput) -> tuple[TranslatedCompletion, AssembledMessage]:
            translated = translate_completion(exchange, output)
            return translated, translated.message

        request = json.loads(flow.request.content or b"{}")
        try:
            translated = await self.generate(flow, exchange, request, check, problem,
                                             record_of(flow), read)
        except ProxyError as error:
            answer(flow, error, dialect)
            return
        done(translated)

    async def generate(self, flow: http.HTTPFlow, exchange: HarmonyExchange,
                       request: dict[str, Any], check: StrictCheck, problem: str,
                       record: dict[str, Any],
                       read: Callable[[BackendOutput], tuple[T, AssembledMessage]]) -> T:
        """The model server's whole reply to ``request`` (the upstream body), asked again
        while it breaks ``check``, as ``read`` makes it; ProxyError once the tries are spent
        (``record``: ``strict_tries``, ``strict_problem``)."""
        tries = 1
        try:
            while tries <= self.retries():
                if isinstance(request.get("seed"), int):
                    request["seed"] += 1  # a seeded request would repeat its reply
                tries += 1
                answered = await self.client().post(flow.request.url, json=request,
                                                    timeout=self.timeout())
                if answered.status_code != 200:
                    raise ProxyError(502, f"The model server answered {answered.status_code} "
                                     "to a strict reply's retry", code="upstream_error")
                output: BackendOutput = exchange.backend.read_response(answered.json())
                with collect_writes() as writes:
                    value, message = read(output)
                await self.settle_writes(writes)
                found = check.problem(message, output.truncated)
                if found is None:
                    return value
                problem = found
            record["strict_problem"] = problem
            raise unmet(problem, tries)
        except (httpx.HTTPError, ValueError) as exc:  # an unreadable answer too
            raise ProxyError(502, f"A strict reply's retry failed: {exc}",
                             code="upstream_error") from None
        finally:
            record["strict_tries"] = tries
