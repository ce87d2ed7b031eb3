"""Fake vLLM and llama.cpp servers: real HTTP servers on 127.0.0.1 that follow their wire formats.

Both generate a scripted harmony completion token by token (``Scripted`` from ``fakes``), stop at
their stop tokens or the token limit, and detokenise the way the real servers do, holding back a
token that ends inside a UTF-8 character.

``FakeVllm`` follows vLLM's ``/v1/completions`` (``completion/protocol.py`` and ``serving.py``):
prompt as ids or text; ``max_tokens`` 16 when absent; 400 when prompt + ``max_tokens`` exceed
``max_model_len`` or ``stream_options`` come without ``stream``; ``token_ids`` only with
``return_token_ids``, the stop token included (``echo_stop``); text without the stop token and,
unless ``skip_special_tokens`` is false, without control tokens; one chunk per step
(``chunk_tokens`` ids), usage on each chunk only with ``continuous_usage_stats``, a ``choices:
[]`` usage chunk with ``include_usage``, then ``data: [DONE]``; errors as ``{"error": {…}}``.
It honours the requested ``stop_token_ids`` plus the tokenizer's eos ``<|return|>`` only (a real
server also adds the generation config's eos ids), so a request without them shows.

``FakeLlamaCpp`` follows llama-server's native ``/completion`` (``server-context.cpp``
``process_token``/``send_final_response``, ``server-task.cpp`` ``to_json_non_oaicompat``):
prompt as ids; ``n_predict`` −1 = up to the context; stops at its end-of-generation set;
``tokens`` only with ``return_tokens`` when not streamed, the EOG token included (``echo_eog``);
the text shows ``<|start|> <|channel|> <|message|> <|constrain|>`` always and the other control
tokens only with ``-sp`` (``special``); streamed events carry one id each and none for a token
held back inside a UTF-8 character; a last ``stop: true`` event with ``stop_type``
(``eos``/``limit``) and the counts; no ``[DONE]``; errors as ``{"error": {"code", "message",
"type"}}``. ``/health`` answers 503 while ``loading``; ``/props`` tells ``build_info``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema

from harmony_groq.encoding import harmony_encoding

from fakes import FakeServer, Scripted, _Handler

RETURN, CALL, ENDOFTEXT = 200002, 200012, 199999
LLAMACPP_EOG = frozenset({RETURN, CALL, ENDOFTEXT})
LLAMACPP_SHOWN = frozenset({200003, 200005, 200006, 200008})  # <|constrain|> <|channel|> …
DONE = b"data: [DONE]\n\n"
DEFAULT_SCRIPT = ("<|channel|>analysis<|message|>User says hi.<|end|><|start|>assistant"
                  "<|channel|>final<|message|>Hello!<|return|>")


@dataclass(frozen=True)
class Generation:
    """The ids a server generated for a script: the stop token included when one ended it."""

    ids: list[int]
    finish: str  # "stop" | "length"
    stop_id: int | None


def returned_ids(generation: Generation, echo_stop: bool) -> list[int]:
    """The ids a server returns: the stop token dropped when it does not echo it."""
    if generation.stop_id is not None and not echo_stop:
        return generation.ids[:-1]
    return generation.ids


def generate(script: str, stops: frozenset[int], limit: int) -> Generation:
    ids: list[int] = []
    for token in harmony_encoding().encode(script, allowed_special="all"):
        if len(ids) >= limit:
            return Generation(ids, "length", None)
        ids.append(token)
        if token in stops:
            return Generation(ids, "stop", token)
    return Generation(ids, "stop", None)


def detokenize(ids: list[int], shown: Callable[[int], bool]) -> str:
    """Text of ``ids``: ordinary runs decoded together, a control token as its text if shown."""
    encoding = harmony_encoding()
    parts: list[str] = []
    run: list[int] = []
    for token in ids:
        if encoding.is_special_token(token):
            parts.append(encoding.decode(run))
            run = []
            if shown(token):
                parts.append(encoding.decode([token]))
        else:
            run.append(token)
    parts.append(encoding.decode(run))
    return "".join(parts)


def incremental(ids: list[int], shown: Callable[[int], bool]) -> Iterator[tuple[int, str | None]]:
    """Per token: its index and the new text, or ``None`` while a UTF-8 character is open."""
    sent = 0
    for index in range(len(ids)):
        text = detokenize(ids[: index + 1], shown)
        if text.endswith("\ufffd"):
            yield index, None
            continue
        yield index, text[sent:]
        sent = len(text)


class _ScriptedServer(FakeServer):
    """Scripts, received prompts (as ids) and a disconnect count, shared by both fakes."""

    def __init__(self, port: int = 0) -> None:
        self.scripts: deque[Scripted] = deque()
        self.prompts: list[list[int]] = []
        self.bodies: list[dict[str, Any]] = []
        self.generated: list[Generation] = []
        self.disconnects = 0
        self.configure_defaults()
        super().__init__(port)

    def configure_defaults(self) -> None:
        """Server-specific settings back to their defaults."""

    def script(self, *scripts: Scripted | str) -> None:
        self.scripts.extend(s if isinstance(s, Scripted) else Scripted(s) for s in scripts)

    def next_script(self) -> Scripted:
        return self.scripts.popleft() if self.scripts else Scripted(DEFAULT_SCRIPT)

    def reset_state(self) -> None:
        for items in (self.scripts, self.prompts, self.bodies, self.generated, self.requests):
            items.clear()
        self.disconnects = 0
        self.configure_defaults()


def _prompt_ids(prompt: Any) -> list[int] | None:
    if isinstance(prompt, str):
        return harmony_encoding().encode(prompt, allowed_special="all")
    if isinstance(prompt, list) and prompt and all(type(t) is int and t >= 0 for t in prompt):
        return prompt
    return None


class _BackendHandler(_Handler):
    def take_script(self, prompt: list[int], body: dict[str, Any],
                    failure: Callable[[int], dict[str, Any]]) -> Scripted | None:
        """Record the request and take the next script; a scripted HTTP failure is answered
        here (``failure(status)`` is the body) and gives None."""
        fake = self.fake
        fake.prompts.append(prompt)
        fake.bodies.append(body)
        script = fake.next_script()
        if script.delay_headers:
            time.sleep(script.delay_headers)
        if script.status != 200:
            self.send_json(script.status, failure(script.status))
            return None
        return script

    def send_event(self, payload: Any) -> None:
        self.send_chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def stream(self, script: Scripted, events: list[dict[str, Any]], closing: list[bytes],
               error: dict[str, Any], after_error: list[bytes]) -> None:
        """Send token events (honouring the script's delay, error and reset), then ``closing``;
        a scripted error event is followed by ``after_error`` instead."""
        self.start_sse()
        try:
            for n, event in enumerate(events):
                if script.reset_after is not None and n == script.reset_after:
                    self.reset()
                    return
                if script.error_after is not None and n == script.error_after:
                    self.send_event(error)
                    for data in after_error:
                        self.send_chunk(data)
                    self.end_chunks()
                    return
                self.send_event(event)
                if script.token_delay:
                    time.sleep(script.token_delay)
            if script.reset_after == len(events):  # every token sent, the body's end lost
                self.reset()
                return
            for data in closing:
                self.send_chunk(data)
            self.end_chunks()
        except (BrokenPipeError, ConnectionResetError):
            self.fake.disconnects += 1


# -- vLLM ---------------------------------------------------------------------------------------

def vllm_error(status: int, message: str, kind: str = "BadRequestError",
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


def structured_outputs_problem(body: dict[str, Any]) -> str | None:
    """What vLLM (≥ 0.12, xgrammar) refuses in a request's constrained-decoding fields: the
    removed ``guided_*`` fields, ``structured_outputs`` with other than one kind, a structural
    tag that is not the documented JSON string (``structures`` of begin/schema/end, each begin
    starting with one of the ``triggers``)."""
    guided = sorted(k for k in body if k.startswith("guided_"))
    if guided:
        return f"{guided[0]} was removed in vLLM 0.12; use structured_outputs"
    spec = body.get("structured_outputs")
    if spec is None:
        return None
    kinds = [k for k in STRUCTURED_KINDS if isinstance(spec, dict) and spec.get(k) is not None]
    if not isinstance(spec, dict) or len(kinds) != 1 or set(spec) - set(STRUCTURED_KINDS):
        return "structured_outputs needs exactly one of " + ", ".join(STRUCTURED_KINDS)
    if kinds == ["json"] and not isinstance(spec["json"], dict | str):
        return "structured_outputs.json must be a schema"
    if "#/$defs/missing" in json.dumps(spec):  # as xgrammar: a $ref must name a definition
        return "Invalid JSON schema: $ref #/$defs/missing not found"
    if kinds == ["json"] and isinstance(spec["json"], dict):
        return _schema_problem(spec["json"])
    if kinds == ["structural_tag"]:
        try:
            tag = json.loads(spec["structural_tag"])
            structures, triggers = tag["structures"], tag["triggers"]
            ok = tag["type"] == "structural_tag" and structures and all(
                isinstance(s["schema"], dict) and isinstance(s["end"], str)
                and any(s["begin"].startswith(t) for t in triggers) for s in structures)
        except (TypeError, ValueError, KeyError):
            ok = False
        if not ok:
            return "structured_outputs.structural_tag is not a valid structural tag"
        for structure in structures:
            if (problem := _schema_problem(structure["schema"])) is not None:
                return problem
    return None


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """As xgrammar: a schema must be valid JSON Schema (numeric bounds, multipleOf, pattern and
    format pass through to it) and each pattern a regex it can compile."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"Invalid JSON schema: {exc.message}"
    patterns = re.findall(r'"pattern": ("(?:\\.|[^"\\])*")', json.dumps(schema))
    for pattern in patterns:
        try:
            re.compile(json.loads(pattern))
        except re.error as exc:
            return f"Failed to convert the regex {json.loads(pattern)!r}: {exc}"
    return None


class _VllmHandler(_BackendHandler):
    def do_GET(self) -> None:  # noqa: N802
        fake: FakeVllm = self.fake
        if self.path == "/health":
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path == "/version":
            self.send_json(200, {"version": fake.version})
        elif self.path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{
                "id": fake.served_model, "object": "model", "created": 1754400000,
                "owned_by": "vllm", "root": fake.served_model, "parent": None,
                "max_model_len": fake.max_model_len, "permission": []}]})
        else:
            self.send_json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        fake: FakeVllm = self.fake
        body = self.read_json()
        if self.path != "/v1/completions":
            self.send_json(404, {"detail": "Not Found"})
            return
        if not isinstance(body, dict):
            self.send_json(400, vllm_error(400, "Invalid JSON"))
            return
        prompt = _prompt_ids(body.get("prompt"))
        max_tokens = body.get("max_tokens")
        max_tokens = 16 if max_tokens is None else max_tokens
        problem = None
        if prompt is None:
            problem = vllm_error(400, "Either prompt or prompt_embeds must be provided and "
                                 "non-empty.", param="prompt")
        elif "model" in body and body["model"] != fake.served_model:
            problem = vllm_error(404, f"The model `{body['model']}` does not exist.",
                                 "NotFoundError", "model")
        elif (structured := structured_outputs_problem(body)) is not None:
            problem = vllm_error(400, structured, param="structured_outputs")
        elif body.get("stream_options") and not body.get("stream"):
            problem = vllm_error(400, "Stream options can only be defined when `stream=True`.",
                                 param="stream_options")
        elif len(prompt) + max_tokens > fake.max_model_len:
            problem = vllm_error(400, f"You passed {len(prompt)} input tokens and requested "
                                 f"{max_tokens} output tokens. However, the model's context "
                                 f"length is only {fake.max_model_len} tokens.",
                                 param="input_tokens")
        if problem is not None:
            self.send_json(problem["error"]["code"], problem)
            return
        assert prompt is not None
        script = self.take_script(prompt, body,
                                  lambda status: vllm_error(status, "scripted failure"))
        if script is None:
            return
        stops = frozenset(body.get("stop_token_ids") or ()) | {RETURN}
        generation = generate(script.text, stops, max_tokens)
        fake.generated.append(generation)
        if body.get("stream"):
            self._stream(fake, body, prompt, generation, script)
        else:
            self._whole(fake, body, prompt, generation, script)

    @staticmethod
    def _shown(body: dict[str, Any]) -> Callable[[int], bool]:
        keep = body.get("skip_special_tokens") is False
        return lambda token: keep

    @staticmethod
    def _visible_ids(fake: FakeVllm, generation: Generation) -> list[int]:
        return returned_ids(generation, fake.echo_stop)

    @staticmethod
    def _text_ids(generation: Generation) -> list[int]:
        """Ids whose text is returned: never the stop token (no include_stop_str_in_output)."""
        return generation.ids[:-1] if generation.stop_id is not None else generation.ids

    @staticmethod
    def _stop_reason(generation: Generation) -> int | None:
        return None if generation.stop_id in (None, RETURN) else generation.stop_id

    def _base(self, fake: FakeVllm) -> dict[str, Any]:
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": fake.served_model}

    @staticmethod
    def _usage(prompt: list[int], completion: int) -> dict[str, Any]:
        return {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + completion,
                "completion_tokens": completion, "prompt_tokens_details": None}

    def _whole(self, fake: FakeVllm, body: dict[str, Any], prompt: list[int],
               generation: Generation, script: Scripted) -> None:
        time.sleep(script.token_delay * len(generation.ids))
        with_ids = bool(body.get("return_token_ids"))
        choice = {"index": 0, "text": detokenize(self._text_ids(generation), self._shown(body)),
                  "logprobs": None, "finish_reason": generation.finish,
                  "stop_reason": self._stop_reason(generation), "prompt_logprobs": None,
                  "prompt_token_ids": prompt if with_ids else None,
                  "token_ids": self._visible_ids(fake, generation) if with_ids else None}
        self.send_json(200, {**self._base(fake), "choices": [choice],
                             "usage": self._usage(prompt, len(generation.ids)),
                             "system_fingerprint": None})

    def _stream(self, fake: FakeVllm, body: dict[str, Any], prompt: list[int],
                generation: Generation, script: Scripted) -> None:
        base = self._base(fake)
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        continuous = include_usage and bool(options.get("continuous_usage_stats"))
        with_ids = bool(body.get("return_token_ids"))
        texts = dict(incremental(self._text_ids(generation), self._shown(body)))
        visible = self._visible_ids(fake, generation)
        events: list[dict[str, Any]] = []
        ids = generation.ids
        for start in range(0, len(ids), fake.chunk_tokens):
            step = range(start, min(start + fake.chunk_tokens, len(ids)))
            last = step[-1] == len(ids) - 1
            choice: dict[str, Any] = {
                "index": 0, "text": "".join(texts.get(i) or "" for i in step), "logprobs": None,
                "finish_reason": generation.finish if last else None,
                "stop_reason": self._stop_reason(generation) if last else None,
                "prompt_token_ids": prompt if with_ids and start == 0 else None,
                "token_ids": [ids[i] for i in step if i < len(visible)] if with_ids else None}
            event = {**base, "choices": [choice]}
            if continuous:
                event["usage"] = self._usage(prompt, step[-1] + 1)
            events.append(event)
        closing = []
        if include_usage:
            usage_chunk = {**base, "choices": [], "usage": self._usage(prompt, len(ids))}
            closing.append(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        closing.append(DONE)
        self.stream(script, events, closing, vllm_error(500, "CUDA out of memory (scripted)",
                                                        "InternalServerError"), [DONE])


class FakeVllm(_ScriptedServer):
    handler = _VllmHandler

    def configure_defaults(self) -> None:
        self.echo_stop = True
        self.chunk_tokens = 1
        self.max_model_len = 131072
        self.served_model = "openai/gpt-oss-120b"
        self.version = "0.11.0"


# -- llama.cpp ----------------------------------------------------------------------------------

def llamacpp_error(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "type": kind}}


class _LlamaCppHandler(_BackendHandler):
    def do_GET(self) -> None:  # noqa: N802
        fake: FakeLlamaCpp = self.fake
        if self.path == "/health":
            if fake.loading:
                self.send_json(503, llamacpp_error(503, "Loading model", "unavailable_error"))
            else:
                self.send_json(200, {"status": "ok"})
        elif self.path == "/props":
            self.send_json(200, {
                "default_generation_settings": {"id": 0, "n_ctx": fake.n_ctx,
                                                "is_processing": False, "params": {}},
                "total_slots": 1, "model_path": fake.model_path, "chat_template": "",
                "modalities": {"vision": False, "audio": False},
                "bos_token": "<|startoftext|>", "eos_token": "<|return|>",
                "build_info": fake.build_info})
        else:
            self.send_json(404, llamacpp_error(404, "File Not Found", "not_found_error"))

    def do_POST(self) -> None:  # noqa: N802
        fake: FakeLlamaCpp = self.fake
        body = self.read_json()
        if self.path != "/completion":
            self.send_json(404, llamacpp_error(404, "File Not Found", "not_found_error"))
            return
        prompt = _prompt_ids(body.get("prompt")) if isinstance(body, dict) else None
        if prompt is None:
            self.send_json(400, llamacpp_error(400, "\"prompt\" must be a string, a list of "
                                               "tokens, or a list of mixed strings & tokens",
                                               "invalid_request_error"))
            return
        if len(prompt) >= fake.n_ctx:
            self.send_json(400, llamacpp_error(400, "the request exceeds the available context "
                                               "size, try increasing it",
                                               "exceed_context_size_error"))
            return
        script = self.take_script(prompt, body,
                                  lambda status: llamacpp_error(status, "scripted failure",
                                                                "server_error"))
        if script is None:
            return
        n_predict = body.get("n_predict", -1)
        room = fake.n_ctx - len(prompt)
        generation = generate(script.text, LLAMACPP_EOG,
                              min(n_predict, room) if n_predict > 0 else room)
        fake.generated.append(generation)
        final = self._final(fake, body, prompt, generation)
        if not body.get("stream"):
            time.sleep(script.token_delay * len(generation.ids))
            returned = self._returned_ids(fake, generation) if body.get("return_tokens") else []
            self.send_json(200, {**final, "content": detokenize(generation.ids, fake.shown),
                                 "tokens": returned})
            return
        events = []
        returned = self._returned_ids(fake, generation)
        for index, piece in incremental(generation.ids, fake.shown):
            if piece is None or index >= len(returned):
                continue  # held back inside a UTF-8 character (its id is lost), or EOG not echoed
            events.append({"index": 0, "content": piece, "tokens": [returned[index]],
                           "stop": False, "id_slot": -1, "tokens_predicted": index + 1,
                           "tokens_evaluated": len(prompt)})
        closing = [f"data: {json.dumps({**final, 'content': '', 'tokens': []})}\n\n".encode()]
        self.stream(script, events, closing, llamacpp_error(500, "CUDA out of memory (scripted)",
                                                            "server_error"), [])

    @staticmethod
    def _returned_ids(fake: FakeLlamaCpp, generation: Generation) -> list[int]:
        return returned_ids(generation, fake.echo_eog)

    @staticmethod
    def _final(fake: FakeLlamaCpp, body: dict[str, Any], prompt: list[int],
               generation: Generation) -> dict[str, Any]:
        limited = generation.finish == "length"
        return {
            "index": 0, "id_slot": 0, "stop": True, "model": "gpt-oss-20b",
            "tokens_predicted": len(generation.ids), "tokens_evaluated": len(prompt),
            "generation_settings": {"n_predict": body.get("n_predict", -1),
                                    "temperature": body.get("temperature", 0.8),
                                    "stream": bool(body.get("stream"))},
            "prompt": detokenize(prompt, lambda token: True), "has_new_line": False,
            "truncated": limited and len(prompt) + len(generation.ids) >= fake.n_ctx,
            "stop_type": "limit" if limited else "eos", "stopping_word": "",
            "tokens_cached": len(prompt) + len(generation.ids) - 1,
            "timings": {"prompt_n": len(prompt), "predicted_n": len(generation.ids)},
        }


class FakeLlamaCpp(_ScriptedServer):
    handler = _LlamaCppHandler

    def configure_defaults(self) -> None:
        self.echo_eog = True
        self.special = False  # llama-server -sp
        self.loading = False
        self.n_ctx = 131072
        self.model_path = "/models/gpt-oss-20b-mxfp4.gguf"
        self.build_info = "b6700-1a2b3c4d"

    def shown(self, token: int) -> bool:
        return self.special or token in LLAMACPP_SHOWN
