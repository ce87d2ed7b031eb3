"""Generated harmony → OpenAI message events, token by token, repairing what real models emit.

One ``HarmonyDecoder`` serves both paths: the non-streaming response is the concatenation of
the events the streaming path emits, so the two always agree. It wraps openai-harmony's
``StreamableParser`` and repairs malformed output before it reaches the parser (missing
``<|end|>``, text outside messages, headers without ``<|message|>``, over-long headers,
``<|constrain|>`` in odd places, stray tokens in recipients); see harmony-mapping.md §3.2.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import string
from dataclasses import dataclass, field

from openai_harmony import HarmonyEncoding, HarmonyError, Role, StreamableParser, StreamState

from .render import ToolNames
from .tools.base import ServerCall

START, END, MESSAGE, CHANNEL, CONSTRAIN = 200006, 200007, 200008, 200005, 200003
RETURN, CALL, ENDOFTEXT = 200002, 200012, 199999
ASSISTANT = 173781
_STOPS_IN_HEADER = (END, RETURN, CALL, START)
_CHANNEL_NAMES = ("analysis", "final", "commentary")
_HEADER_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_HEADER_RECIPIENT = re.compile(r"to=([^\s<]+)")
_SPECIAL_TEXT = re.compile(r"<\|[a-z_]+\|>")
_HEADER_ROLE = re.compile(r"^<\|start\|>\s*(?:assistant|user|system|developer|functions\.\S+)?")
_ID_ALPHABET = string.ascii_letters + string.digits


def _header_body(text: str) -> str:
    """Header text less its role, channel, recipient and control tokens."""
    body = _HEADER_RECIPIENT.sub("", _HEADER_CHANNEL.sub("", _HEADER_ROLE.sub("", text)))
    return _SPECIAL_TEXT.sub("", body).strip()


def _next_state(state: StreamState, token: int) -> StreamState:
    """The harmony parser's state after it accepted ``token`` in ``state``."""
    if state == StreamState.EXPECT_START:
        return StreamState.HEADER if token == START else state
    if state == StreamState.HEADER:
        return StreamState.CONTENT if token == MESSAGE else state
    return StreamState.EXPECT_START if token in (END, RETURN, CALL) else state


_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@functools.cache
def _special_ids(encoding: HarmonyEncoding) -> dict[str, int]:
    texts = sorted(encoding.special_tokens_set)  # one call: each special is one token
    return dict(zip(texts, encoding.encode("".join(texts), allowed_special="all"), strict=True))


def encode_generated(encoding: HarmonyEncoding, text: str) -> list[int]:
    """``encoding.encode(text, allowed_special="all")`` without its ~250 µs per call.

    openai-harmony 0.0.8 hands all 1091 special-token strings to Rust on every such call. The
    tokenizer splits text at special tokens before BPE, so encoding the pieces between them
    with ``disallowed_special=()`` and looking the specials up gives the same ids."""
    if "<|" not in text:
        return encoding.encode(text, disallowed_special=())
    specials = _special_ids(encoding)
    ids: list[int] = []
    start = 0
    for match in _SPECIAL_TOKEN.finditer(text):
        token = specials.get(match.group())
        if token is None:
            continue
        if match.start() > start:
            ids += encoding.encode(text[start:match.start()], disallowed_special=())
        ids.append(token)
        start = match.end()
    if start < len(text):
        ids += encoding.encode(text[start:], disallowed_special=())
    return ids


class StrippedOutputError(Exception):
    """The backend removed harmony's control tokens, so the output cannot be parsed."""


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str


Event = ReasoningDelta | ContentDelta | ToolCall


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def repair_arguments(raw: str) -> tuple[str, str | None]:
    """Arguments kept byte-exact when valid JSON; trailing junk dropped; empty → ``{}``."""
    if not raw.strip():
        return "{}", "empty tool-call arguments replaced by {}"
    try:
        json.loads(raw)
        return raw, None
    except json.JSONDecodeError:
        pass
    text = raw.strip()
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return raw, "tool-call arguments are not valid JSON; passed on as generated"
    return text[:end], "text after the JSON tool-call arguments dropped"


class StopMatcher:
    """Cuts final-channel text at the first ``stop`` string, holding back partial matches."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.pending = ""
        self.match: str | None = None  # the stop string that cut the text

    @property
    def matched(self) -> bool:
        return self.match is not None

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        buffer = self.pending + text
        hits = [(i, len(s), s) for s in self.stops if (i := buffer.find(s)) >= 0]
        if hits:
            # The first in the text; of two starting there, the shorter ended first.
            at, _, self.match = min(hits)
            self.pending = ""
            return buffer[:at]
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), 0, -1):
                if buffer.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        self.pending = buffer[len(buffer) - hold:] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        pending, self.pending = self.pending, ""
        return pending


@dataclass
class _Message:
    kind: str  # "reasoning" | "content" | "call" | "server" (a server tool's call)
    name: str = ""
    started: bool = False
    channel: str | None = None


@dataclass
class HarmonyDecoder:
    """Feeds completion tokens to the harmony parser and yields OpenAI message events."""

    encoding: HarmonyEncoding
    tool_names: ToolNames = field(default_factory=ToolNames)
    declared_tools: frozenset[str] = frozenset()
    allow_tool_calls: bool = True
    single_tool_call: bool = False
    stop: tuple[str, ...] = ()
    server_tools: frozenset[str] = frozenset()  # namespaces the proxy runs (tools/)
    # A json_schema answer: only the final channel is answer text (a commentary preamble or a
    # header-less message would be shown before the JSON, breaking it); the rest is reasoning.
    final_only: bool = False

    def __post_init__(self) -> None:
        self._new_parser(Role.ASSISTANT)
        self.header: list[int] = []
        self.current: _Message | None = None
        self.repairs: list[str] = []
        self.reasoning_tokens = 0
        self.tool_calls = 0
        self.has_reasoning = False
        self.has_content = False
        self.first_message = True
        self.ended = False
        self.stop_matcher = StopMatcher(self.stop)
        self.resyncing = False
        self.call_text: list[str] = []
        self.server_call: ServerCall | None = None  # a call the proxy runs, once it ended

    def _new_parser(self, role: Role | None) -> None:
        """A fresh parser; its state is tracked here because openai-harmony's ``state`` and
        ``messages`` properties serialise the whole parse as JSON on every read (quadratic
        over a long completion)."""
        self.parser = StreamableParser(self.encoding, role, strict=False)
        self.state = StreamState.HEADER if role is not None else StreamState.EXPECT_START

    # -- public API -------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self.stop_matcher.matched

    def feed_text(self, text: str) -> list[Event]:
        """Feed a piece of generated text (a backend that returns text, not ids)."""
        events: list[Event] = []
        for token in encode_generated(self.encoding, text):
            events.extend(self.feed(token))
        return events

    def feed(self, token: int) -> list[Event]:
        """Feed one generated token id."""
        if self.ended or self.stopped:
            return []
        events: list[Event] = []
        state = self.state
        if token == ENDOFTEXT:
            return self.finish(truncated=False)
        if state == StreamState.CONTENT:
            if token == START:
                self._repair("missing <|end|> before <|start|>")
                self._process(END, events)
            elif token == CHANNEL:
                self._repair("missing <|end|><|start|>assistant before <|channel|>")
                for injected in (END, START, ASSISTANT):
                    self._process(injected, events)
            elif token in (MESSAGE, CONSTRAIN):
                self._repair("stray control token inside a message dropped")
                return events
        elif state == StreamState.EXPECT_START:
            if token in (END, RETURN, CALL, MESSAGE, CONSTRAIN):
                self._repair("stray control token between messages dropped")
                return events
            if token == CHANNEL:
                self._repair("missing <|start|>assistant before <|channel|>")
                self._process(START, events)
                self._process(ASSISTANT, events)
            elif token != START:
                self._repair("text outside a message kept")
                self._process(START, events)
                self._process(ASSISTANT, events)
        elif state == StreamState.HEADER and (
                token in _STOPS_IN_HEADER or (token == CHANNEL and self._text_before_channel())):
            self._flush_header(ended_by=token, events=events)
            if token in (START, CHANNEL):
                events.extend(self.feed(token))
            return events
        self._process(token, events)
        return events

    def finish(self, truncated: bool) -> list[Event]:
        """End of generation: complete or drop what is open; ``truncated`` = hit max_tokens."""
        if self.ended:
            return []
        events: list[Event] = []
        state = self.state
        if not self.stopped:
            if state == StreamState.HEADER and self.header:
                if truncated and (CHANNEL in self.header or not _header_body(
                        self.encoding.decode(self.header))):
                    self._repair("message header cut by max_tokens dropped")
                else:
                    self._flush_header(ended_by=None, events=events)
            elif state == StreamState.CONTENT and self.current is not None:
                if self.current.kind == "call":
                    if truncated:
                        self._repair("tool call cut by max_tokens dropped")
                    else:
                        self._emit_call("".join(self.call_text), events)
                self.parser.process_eos()
            tail = self.stop_matcher.flush()
            if tail:
                events.append(ContentDelta(tail))
        self.ended = True
        self.current = None
        return events

    # -- internals --------------------------------------------------------------------------

    def _repair(self, what: str) -> None:
        if what not in self.repairs:
            self.repairs.append(what)

    def _process(self, token: int, events: list[Event]) -> None:
        parser = self.parser
        before_state = self.state
        try:
            parser.process(token)
        except HarmonyError as exc:
            if before_state == StreamState.HEADER and not self.resyncing:
                self._resync(events)
            else:
                self._repair(f"token dropped: {exc}")
            return
        state = self.state = _next_state(before_state, token)
        if state == StreamState.HEADER:
            if before_state != StreamState.HEADER:
                self.header = []
            self.header.append(token)
            self._check_stripped()
        elif state == StreamState.CONTENT:
            if before_state != StreamState.CONTENT:
                self._open()
            elif self.current is not None and self.current.kind == "reasoning":
                self.reasoning_tokens += 1
            delta = parser.last_content_delta
            if delta and self.current is not None:
                self._delta(delta, events)
        elif before_state == StreamState.CONTENT and self.current is not None:
            if self.current.kind == "call":
                self._emit_call("".join(self.call_text), events)
            elif self.current.kind == "server":
                self._server_call()
            self.current = None
            self.first_message = False

    def _check_stripped(self) -> None:
        if not self.first_message or len(self.header) > 4:
            return
        text = self.encoding.decode(self.header).lstrip()
        if text.startswith(_CHANNEL_NAMES):
            raise StrippedOutputError(
                "the model server stripped harmony's control tokens "
                f"(output starts {text[:40]!r})"
            )

    def end_server_call(self, truncated: bool) -> bool:
        """At the end of a generation: whether it stopped on a server-tool call (closing the
        call when the backend left ``<|call|>`` out of its output)."""
        if self.server_call is None and not truncated and self.state == StreamState.CONTENT \
                and self.current is not None and self.current.kind == "server":
            self._process(CALL, [])
        return self.server_call is not None

    def take_server_call(self) -> ServerCall | None:
        """The server-tool call the generation stopped on (once), and the decoder ready for
        the generation that follows the tool's answer (``<|start|>assistant`` fed)."""
        call, self.server_call = self.server_call, None
        if call is not None:
            for token in (START, ASSISTANT):
                self._process(token, [])
        return call

    def _server_namespace(self, recipient: str) -> str | None:
        """The server tool a recipient addresses: ``browser.search``, ``python``, and the
        same after a ``functions.`` prefix unless the client declared that function."""
        name = recipient.removeprefix("functions.")
        namespace = name.split(".", 1)[0]
        if namespace in self.server_tools and not (
                recipient.startswith("functions.") and name in self.declared_tools):
            return namespace
        return None

    def _classify(self, channel: str | None, recipient: str | None) -> _Message:
        if recipient:
            recipient = recipient.split("<|", 1)[0].strip()
        if recipient and self.server_tools and self._server_namespace(recipient):
            return _Message("server", recipient.removeprefix("functions."), channel=channel)
        if recipient and recipient not in ("assistant", "user"):
            name = recipient.removeprefix("functions.")
            if recipient.startswith("functions."):
                if name not in self.declared_tools:
                    self._repair(f"call to undeclared function {name!r} passed on")
                return _Message("call", name)
            if name in self.declared_tools:
                self._repair(f"recipient {name!r} read as functions.{name}")
                return _Message("call", name)
            self._repair(f"message to undeclared recipient {recipient!r} shown as reasoning")
            return _Message("reasoning")
        if self.final_only and channel != "final":
            if channel != "analysis":
                self._repair(f"{channel or 'header-less'} message before a json_schema answer "
                             "shown as reasoning")
            return _Message("reasoning")
        return _Message("reasoning" if channel == "analysis" else "content")

    def _open(self) -> None:
        self.call_text = []
        parser = self.parser
        role = parser.current_role
        if role is not None and role != Role.ASSISTANT:
            self._repair(f"message written as {role.value!r} shown as reasoning")
            self.current = _Message("reasoning")
        else:
            self.current = self._classify(parser.current_channel, parser.current_recipient)

    def _delta(self, text: str, events: list[Event]) -> None:
        current = self.current
        assert current is not None
        if current.kind in ("call", "server"):
            self.call_text.append(text)
            return
        if current.kind == "reasoning":
            if not current.started and self.has_reasoning:
                text = "\n" + text
            current.started = self.has_reasoning = True
            events.append(ReasoningDelta(text))
            return
        if not current.started and self.has_content:
            text = "\n" + text
        current.started = True
        text = self.stop_matcher.feed(text)
        if text:
            self.has_content = True
            events.append(ContentDelta(text))

    def _server_call(self) -> None:
        assert self.current is not None
        self.server_call = ServerCall(self.current.name, "".join(self.call_text),
                                      self.current.channel or "analysis")

    def _emit_call(self, raw: str, events: list[Event]) -> None:
        assert self.current is not None
        if not self.allow_tool_calls:
            self._repair("tool call dropped: tool_choice is none")
            return
        if self.single_tool_call and self.tool_calls:
            self._repair("extra tool call dropped: parallel_tool_calls is false")
            return
        arguments, repair = repair_arguments(raw)
        if repair:
            self._repair(repair)
        events.append(ToolCall(self.tool_calls, new_call_id(),
                               self.tool_names.to_client(self.current.name), arguments))
        self.tool_calls += 1

    def _text_before_channel(self) -> bool:
        """Words (not a role or recipient) in a header before its ``<|channel|>``."""
        return CHANNEL not in self.header and _header_body(
            self.encoding.decode(self.header)) not in ("", "json")

    def _flush_header(self, ended_by: int | None, events: list[Event]) -> None:
        """A header that never reached ``<|message|>``: its text is the message body.

        Ended by a new message it is reasoning (gpt-oss's header-less refusals are policy
        CoT, harmony #80); ended by a stop or the end of generation it is the answer.
        """
        text = self.encoding.decode(self.header)
        body = _header_body(text)
        if body:
            self._repair("message without <|message|> kept as text")
        channel_match = _HEADER_CHANNEL.search(text)
        recipient_match = _HEADER_RECIPIENT.search(text)
        if channel_match:
            channel = channel_match.group(1)
        else:
            channel = "analysis" if ended_by in (END, START, CHANNEL) or self.final_only \
                else "final"
        self.current = self._classify(channel, recipient_match.group(1) if recipient_match
                                      else None)
        if self.current.kind == "call":
            if ended_by == CALL:
                self._emit_call(body, events)
        elif self.current.kind == "server":
            if ended_by == CALL:
                self.call_text = [body]
                self._server_call()
        elif body:
            if self.current.kind == "reasoning":
                self.reasoning_tokens += len(self.header)
            self._delta(body, events)
        self.current = None
        self.first_message = False
        self.header = []
        self._new_parser(None)

    def _resync(self, events: list[Event]) -> None:
        """A header harmony rejects: read channel and recipient leniently, restart cleanly."""
        text = self.encoding.decode(self.header)
        self._repair("malformed message header repaired")
        channel_match = _HEADER_CHANNEL.search(text)
        recipient_match = _HEADER_RECIPIENT.search(text)
        recipient = recipient_match.group(1).split("<|", 1)[0] if recipient_match else ""
        channel = channel_match.group(1) if channel_match else (
            "commentary" if recipient else "final")
        if channel not in _CHANNEL_NAMES:
            channel = "final"
        clean = f"<|channel|>{channel}" + (f" to={recipient}" if recipient else "") + (
            " json" if recipient else "") + "<|message|>"
        self._new_parser(Role.ASSISTANT)
        self.resyncing = True
        try:
            for token in self.encoding.encode(clean, allowed_special="all"):
                self._process(token, events)
        finally:
            self.resyncing = False
