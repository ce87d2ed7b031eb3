"""The "Harmony" content view: both sides of a gpt-oss flow's translation, message by message.

mitmweb shows what went over the wire to the model server (a JSON body holding one prompt
string; generated text). This view lays the harmony out message by message (author, channel,
recipient, content type, content) next to the request the client sent and the response it got
(in the client's API: OpenAI's, Anthropic's Messages), with the parser's repairs. mitmweb does
not expose ``flow.metadata``, but a content view gets the flow, so it reads the record
``records.py`` keeps there (through ``flow_record``, the same summary the flow log writes).
Registered with ``contentviews.add`` by ``addons/harmony.py``.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from mitmproxy import contentviews, http

from .records import META, flow_record
from .routing import Route
from .sse import SSEFramer

_SPECIAL = re.compile(r"<\|(start|end|message|channel|constrain|return|call)\|>")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
OUTSIDE = "(text outside any message)"


@dataclass(frozen=True)
class HarmonyMessage:
    """One message as it appears in harmony text; ``end`` is its closing token, if any."""

    author: str
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    content: str = ""
    end: str | None = None
    has_body: bool = True


def _parse_header(header: str) -> tuple[str, str | None, str | None, str | None]:
    """``assistant to=functions.f<|channel|>commentary <|constrain|>json`` → its four fields."""
    recipient = _RECIPIENT.search(header)
    words = header.replace("<|constrain|>", " ")
    before, _, after = words.partition("<|channel|>")
    author = next((w for w in before.split() if not w.startswith("to=")), "")
    rest = [w for w in after.split() if not w.startswith("to=")]
    return (author, rest[0] if rest else None, recipient.group(1) if recipient else None,
            " ".join(rest[1:]) or None)


def split_messages(text: str, first_author: str | None = None) -> list[HarmonyMessage]:
    """Split harmony text into messages for display, never failing on malformed output.

    openai-harmony's parser rejects or folds malformed model output (text before the first
    header, a ``<|start|>`` inside a message); a person debugging it needs to see it as
    generated, so this lenient splitter only follows the special tokens. ``first_author``
    opens a header first: generated text continues the prompt's ``<|start|>assistant``.
    """
    messages: list[HarmonyMessage] = []
    state, header, content = ("header", first_author, "") if first_author else ("outside", "", "")

    def close(end: str | None) -> None:
        nonlocal state, header, content
        if state == "content" or (state == "header" and header.strip()):
            author, channel, recipient, ctype = _parse_header(header)
            messages.append(HarmonyMessage(author, channel, recipient, ctype, content, end,
                                           has_body=state == "content"))
        state, header, content = "outside", "", ""

    for n, piece in enumerate(_SPECIAL.split(text)):
        if n % 2 == 0:  # text between special tokens
            if state == "header":
                header += piece
            elif state == "content":
                content += piece
            elif piece.strip():
                messages.append(HarmonyMessage(OUTSIDE, content=piece))
        elif piece == "start":
            close(None)
            state = "header"
        elif piece in ("channel", "constrain") and state != "content":
            state, header = "header", header + f"<|{piece}|>"
        elif piece == "message" and state != "content":
            state = "content"
        elif piece in ("end", "call", "return") and state != "outside":
            close(piece)
        elif state == "content":  # a stray control token inside a message: show it as text
            content += f"<|{piece}|>"
    close(None)
    return messages


def _ending(message: HarmonyMessage) -> str:
    """What is unusual about how a message ends (``<|end|>`` is the usual)."""
    if not message.has_body:
        return "header only, no <|message|>"
    if message.end is None and message.author != OUTSIDE:
        return "no end token"
    return f"ends <|{message.end}|>" if message.end not in (None, "end") else ""


def format_message(number: int, message: HarmonyMessage, note: str = "") -> list[str]:
    """``── [n] author · to=… · channel=… · type=…`` and the content, indented.

    ``note`` replaces the remark on how the message ends.
    """
    fields = [f"[{number}] {message.author or '?'}"]
    fields += [f"{name}={value}" for name, value in (
        ("to", message.recipient), ("channel", message.channel), ("type", message.content_type))
        if value]
    remark = note or _ending(message)
    lines = ["── " + " · ".join(fields + [remark] if remark else fields)]
    if message.content:
        lines.append(_indent(message.content))
    return lines


def _indent(text: str) -> str:
    return textwrap.indent(text, "   ", lambda _: True)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


API_NAMES = {"chat": "OPENAI", "responses": "OPENAI RESPONSES", "messages": "ANTHROPIC MESSAGES"}


def api_name(record: dict[str, Any]) -> str:
    """The client API a flow spoke, as the view's section titles name it."""
    return API_NAMES.get(record.get("dialect") or "chat", "CLIENT")


def render_request(data: bytes, record: dict[str, Any]) -> str:
    """The prompt sent to the model server, message by message, then the client's request."""
    upstream = _json_or_none(data)
    if not isinstance(upstream, dict) or not isinstance(upstream.get("prompt"), str):
        upstream = {"prompt": record.get("prompt", "")}
    messages = split_messages(upstream["prompt"])
    url = (record.get("upstream_request") or {}).get("url", "the model server")
    tokens = record.get("prompt_tokens")
    size = f"{len(messages)} messages" + (f", {tokens} tokens" if tokens is not None else "")
    params = " · ".join(f"{k}={json.dumps(v)}" for k, v in upstream.items() if k != "prompt")
    lines = [f"HARMONY PROMPT → POST {url} ({size})"]
    if params:
        lines.append(f"   {params}")
    restored = record.get("restored_reasoning") or []
    if restored:  # what the prompt holds that the client's request does not
        lines += ["", f"REASONING RESTORED ({len(restored)}) from the proxy's memory"]
        lines += [f"   - {line}" for line in restored]
    for number, message in enumerate(messages, 1):
        last = number == len(messages) and not message.has_body
        lines += [""] + format_message(number, message,
                                       "← the model's reply starts here" if last else "")
    client = record.get("client_request") or {}
    lines += ["", f"{api_name(record)} REQUEST FROM THE CLIENT → POST "
              f"{record.get('client_path', '')}",
              _pretty(client.get("body"))]
    return "\n".join(lines)


def render_response(data: bytes, summary: dict[str, Any]) -> str:
    """What the model generated, split into messages, the repairs, and what the client got."""
    upstream = summary.get("upstream_response") or {}
    sections: list[list[str]] = []
    text = upstream.get("text")
    if isinstance(text, str):
        facts = [f"finish_reason={upstream['finish_reason']}"] if upstream.get(
            "finish_reason") else []
        tokens = (summary.get("usage") or {}).get("completion_tokens")
        if tokens is not None:
            facts.append(f"{tokens} tokens")
        sections.append([f"GENERATED HARMONY ← model server ({', '.join(facts) or 'raw text'})",
                         _indent(text) or "   (empty)"])
        messages = split_messages(text, first_author="assistant")
        sections.append([f"GENERATED MESSAGES ({len(messages)})"] + [
            line for number, message in enumerate(messages, 1)
            for line in format_message(number, message)])
        repairs = summary.get("repairs") or []
        sections.append([f"PARSER REPAIRS ({len(repairs)})"]
                        + ([f"   - {repair}" for repair in repairs] or ["   none"]))
    elif upstream.get("status") is not None:
        sections.append([f"MODEL SERVER ANSWERED {upstream['status']}",
                         _indent(str(upstream.get("body", "")))])
    steps = summary.get("tool_steps") or []
    if steps:
        sections.append([f"SERVER TOOL STEPS ({len(steps)}, run by the proxy)"]
                        + [f"   {n}. {_step_line(step)}" for n, step in enumerate(steps, 1)])
    sections.append(_client_response(data, summary))
    if summary.get("error"):
        sections.append([f"ERROR: {summary['error']}"])
    return "\n\n".join("\n".join(section) for section in sections)


def _step_line(step: dict[str, Any]) -> str:
    """One tool step: what it did, on what, how it went, how long and how much."""
    target = step.get("query") or step.get("url") or step.get("pattern") or ""
    outcome = step.get("error") or step.get("status")
    return (f"{step.get('kind')}.{step.get('action')} {target!r} via {step.get('backend')}: "
            f"{outcome}, {step.get('results', 0)} results, {step.get('duration_ms')} ms, "
            f"{step.get('bytes', 0)} bytes")


def _client_response(data: bytes, summary: dict[str, Any]) -> list[str]:
    client = summary.get("client_response") or {}
    status = summary.get("status")
    if client.get("stream"):
        events = len(SSEFramer().feed(data)) if data else 0
        assembled = {k: v for k, v in client.items() if k != "stream"}
        if summary.get("usage"):
            assembled["usage"] = summary["usage"]
        return [f"{api_name(summary)} RESPONSE TO THE CLIENT ({status}, streamed: {events} SSE "
                "events kept for the Raw view), assembled", _pretty(assembled)]
    body = _json_or_none(data)
    shown = _pretty(body) if body is not None else data.decode("utf-8", "replace")
    return [f"{api_name(summary)} RESPONSE TO THE CLIENT ({status})", shown]


def harmony_record(flow: Any) -> dict[str, Any] | None:
    """The addon's record of a gpt-oss flow whose prompt was rendered, else ``None``."""
    if not isinstance(flow, http.HTTPFlow):
        return None
    record = flow.metadata.get(META)
    if not isinstance(record, dict) or record.get("route") != Route.HARMONY.value:
        return None
    return record if "prompt" in record else None


class HarmonyContentview(contentviews.Contentview):
    """Chosen automatically for both sides of gpt-oss flows (JSON's priority is 1)."""

    def prettify(self, data: bytes, metadata: contentviews.Metadata) -> str:
        flow = metadata.flow
        record = harmony_record(flow)
        if record is None:
            raise ValueError("not a gpt-oss flow with a rendered harmony prompt")
        assert isinstance(flow, http.HTTPFlow)
        if metadata.http_message is flow.request:
            return render_request(data, record)
        return render_response(data, flow_record(flow))

    def render_priority(self, data: bytes, metadata: contentviews.Metadata) -> float:
        return 2 if harmony_record(metadata.flow) is not None else -1
