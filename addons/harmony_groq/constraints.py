"""Constrained decoding: what a backend is told so that strict tools' arguments and json_schema
answers follow their schema, while gpt-oss's analysis stays free.

``constraint_for`` reads the request (tools with ``strict: true``, a ``json_schema`` response
format, ``tool_choice``) and the rendered prompt (a forced call's prefilled header) into a
``Constraint``; each engine gets it in its own terms:

- llama.cpp: one GBNF grammar over the whole harmony reply (``llamacpp_grammar``). Messages
  before the last are free text (``FREE_TEXT``: no control token, so none can open an
  unconstrained message inside; only analysis when the answer has a schema, since a
  commentary preamble is shown as answer text); the last is a tool call whose
  arguments follow the tool's schema (free for a non-strict tool) or the final answer (the
  response schema, or free). Control tokens are named by id, so no text can pose as one; a
  grammar cannot name an end-of-generation token, so the reply's own ``<|call|>`` /
  ``<|return|>`` ends it once the grammar is complete.
- vLLM: ``structured_outputs``: the schema itself after a prefilled header, else a structural
  tag whose triggers are the constrained messages' headers (xgrammar's mechanism for this).
- transformers serve has no constrained decoding: the decoder's repair stays the only help.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from .chat_request import ChatRequest
from .errors import ProxyError
from .gbnf import SchemaGrammar, UnsupportedSchema, literal
from .render import HarmonyPrompt

CHANNEL, START, END, MESSAGE, CONSTRAIN = 200005, 200006, 200007, 200008, 200003
EMPTY_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
# Free text: any text without "<|". llama.cpp matches a control token (<|start|>, <|channel|>,
# …) against the grammar by its text, and the decoder reads one inside a message as the start
# of a new message: "any token but <|end|>" let an analysis smuggle in a final message (or a
# call) that no schema constrained.
FREE_TEXT = '( [^<] | "<"+ [^<|] )* "<"*'


@dataclass(frozen=True)
class Constraint:
    """What the reply must look like, engine-neutral; tool names are harmony's (safe) names."""

    strict_tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → schema
    free_tools: tuple[str, ...] = ()  # declared tools whose arguments stay free
    answer_schema: dict[str, Any] | None = None
    calls: bool = True  # a tool call may end the reply
    final: bool = True  # a final answer may end the reply
    start: str = "reply"  # "reply"; "name": after "to=functions."; "args": after <|message|>
    forced_tool: str | None = None  # the tool whose arguments a prefilled reply starts with

    def describe(self) -> str:
        """One line for the log: what is constrained."""
        parts = [f"tool {name}" for name in self.strict_tools]
        if self.answer_schema is not None and self.final:
            parts.append("answer")
        return ", ".join(parts)


def _answer_schema(request: ChatRequest) -> dict[str, Any] | None:
    spec = request.response_format or {}
    if spec.get("type") != "json_schema" or not isinstance(spec.get("json_schema"), dict):
        return None
    schema = spec["json_schema"].get("schema")
    return schema if isinstance(schema, dict) else None


def constraint_for(request: ChatRequest, prompt: HarmonyPrompt) -> Constraint | None:
    """The constraint this request needs, or None when nothing is constrained."""
    names = prompt.tool_names
    calls = bool(request.tools) and request.tool_choice != "none"
    strict = {names.add(t.name): t.parameters or EMPTY_ARGUMENTS
              for t in request.tools if t.strict and calls}
    free = tuple(names.add(t.name) for t in request.tools if calls and not t.strict)
    answer = _answer_schema(request)
    start, forced = "reply", None
    if prompt.prefill_ids and request.tool_choice == "named" and request.forced_tool:
        start, forced = "args", names.add(request.forced_tool)
        if forced not in strict:
            return None
    elif prompt.prefill_ids and request.tool_choice == "required":
        start = "name"
        if not strict:
            return None
    elif not strict and answer is None:
        return None
    return Constraint(strict, free, answer, calls,
                      request.tool_choice not in ("required", "named"), start, forced)


def unsupported(error: UnsupportedSchema, what: str) -> ProxyError:
    return ProxyError(400, f"{what} cannot be enforced by the model server's constrained "
                      f"decoding: {error}. Simplify the schema, or drop 'strict'.",
                      code="unsupported_schema")


# -- llama.cpp --------------------------------------------------------------------------------

def _tool_rules(constraint: Constraint, grammar: SchemaGrammar) -> dict[str, str]:
    """Each callable tool's arguments rule (its schema, or free text for a non-strict tool)."""
    rules = {}
    for name, schema in constraint.strict_tools.items():
        try:
            rules[name] = grammar.add(schema, "args")
        except UnsupportedSchema as exc:
            raise unsupported(exc, f"The parameters of strict tool {name!r}") from None
    for name in constraint.free_tools:
        rules[name] = "free"
    return rules


def llamacpp_grammar(constraint: Constraint) -> str:
    """The GBNF grammar of the whole reply; ProxyError 400 for a schema it cannot express."""
    grammar = SchemaGrammar()
    tools = _tool_rules(constraint, grammar) if constraint.calls else {}
    answer_constrained = constraint.final and constraint.answer_schema is not None
    rules = {
        "free": FREE_TEXT,
        # a commentary message without a recipient is a preamble, shown as the answer's text:
        # with a json_schema answer only analysis may come before the final message
        "chan": '"analysis"' if answer_constrained else '"commentary" | "analysis"',
        "header": f'( " "? <[{CONSTRAIN}]> "json" | " json" )? <[{MESSAGE}]>',
    }
    if constraint.start == "args":
        assert constraint.forced_tool is not None
        return grammar.text({"root": tools[constraint.forced_tool], **rules})
    if tools:
        rules["tool-chan"] = " | ".join(f"{literal(n)} header {a}" for n, a in tools.items())
        rules["tool-role"] = " | ".join(f"{literal(n)} <[{CHANNEL}]> chan header {a}"
                                        for n, a in tools.items())
    if constraint.start == "name":
        return grammar.text({"root": "tool-chan", **rules})
    endings = []
    if constraint.final:
        answer = "free"
        if constraint.answer_schema is not None:
            try:
                answer = grammar.add(constraint.answer_schema, "answer")
            except UnsupportedSchema as exc:
                raise unsupported(exc, "The response format's schema") from None
        rules["final"] = f'<[{CHANNEL}]> "final" <[{MESSAGE}]> {answer}'
        endings.append("final")
    if tools:
        rules["call"] = (f'" to=functions." tool-role '
                         f'| <[{CHANNEL}]> chan " to=functions." tool-chan')
        endings.append("call")
    rules["msg"] = f"<[{CHANNEL}]> chan <[{MESSAGE}]> free <[{END}]>"
    root = f'( msg <[{START}]> "assistant" )* ( {" | ".join(endings)} )'
    return grammar.text({"root": root, **rules})


GRAMMAR_CACHE = 256  # grammars kept, least recently used out
_grammars: OrderedDict[str, str] = OrderedDict()


def llamacpp_fields(constraint: Constraint) -> dict[str, Any]:
    """Request fields for llama-server's ``/completion``: the grammar (nothing else, so the
    server's own defaults, a ``--logit-bias`` among them, still apply). Grammars are cached
    per constraint: an agent sends the same tools with every turn."""
    key = json.dumps(asdict(constraint), sort_keys=True, ensure_ascii=False)
    grammar = _grammars.pop(key, None)
    if grammar is None:
        grammar = llamacpp_grammar(constraint)
    _grammars[key] = grammar
    if len(_grammars) > GRAMMAR_CACHE:
        _grammars.popitem(last=False)
    return {"grammar": grammar}


# -- vLLM -------------------------------------------------------------------------------------

def vllm_fields(constraint: Constraint) -> dict[str, Any]:
    """``structured_outputs`` for vLLM's ``/v1/completions`` (vLLM ≥ 0.10.2; xgrammar)."""
    if constraint.start == "args":
        assert constraint.forced_tool is not None
        return {"structured_outputs": {"json": constraint.strict_tools[constraint.forced_tool]}}
    structures, triggers = [], []
    for name, schema in constraint.strict_tools.items():
        if constraint.start == "name":
            heads = [f"{name} <|constrain|>json<|message|>"]
            triggers.append(f"{name} ")
        else:
            heads = [f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>",
                     f" to=functions.{name}<|channel|>commentary json<|message|>"]
            triggers += [f"<|channel|>commentary to=functions.{name} ",
                         f" to=functions.{name}<|channel|>"]
        structures += [{"begin": head, "schema": schema, "end": "<|call|>"} for head in heads]
    if constraint.final and constraint.answer_schema is not None and constraint.start == "reply":
        structures.append({"begin": "<|channel|>final<|message|>",
                           "schema": constraint.answer_schema, "end": "<|return|>"})
        triggers.append("<|channel|>final")
    tag = {"type": "structural_tag", "structures": structures, "triggers": triggers}
    return {"structured_outputs": {"structural_tag": json.dumps(tag, ensure_ascii=False)}}
