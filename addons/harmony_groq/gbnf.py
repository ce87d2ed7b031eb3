"""JSON schema → llama.cpp GBNF rules, for constrained tool arguments and answers.

llama-server compiles a ``json_schema`` itself only as the whole output's grammar; gpt-oss's
reply is harmony with the JSON inside one message, so the schema's rules are written here and
embedded in the harmony grammar (constraints.py). The subset is what strict tools and
structured outputs use: objects (properties, required, additionalProperties), arrays (items,
minItems, maxItems), strings (minLength, maxLength; ``format`` is not enforced), integers,
numbers, booleans, null, enum/const, anyOf/oneOf, type lists, ``nullable`` and ``$ref`` into
``$defs``/``definitions`` (recursion included). A keyword that would change what is valid but
cannot be expressed here (``pattern``, ``minimum``, ``not``, …) raises ``UnsupportedSchema``:
the client gets a 400 before any generation instead of a broken guarantee.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator

from .gbnf_numbers import NumberKeywordError, multiples, number_range
from .gbnf_regex import FORMATS, UnsupportedPattern, pattern_rule

# Keywords that only describe: they never change what is valid.
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "strict", "$defs", "definitions",
})
_HANDLED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength",
    "nullable", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "pattern", "format",
})
_NUMERIC = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
MAX_DEPTH = 32
MAX_GRAMMAR_CHARS = 200_000

# Shared JSON rules. Whitespace is bounded so that even a random model ends a value. A string
# never holds "<|": llama.cpp matches a control token (<|end|>, <|message|>, …) by its text, and
# one inside the JSON would end the harmony message (a client's "<|" is written "\u003c|").
PRIMITIVES = {
    "ws": r'| " " | "\n" [ \t]{0,20}',
    "json-char": r'[^"\\<\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "json-string": r'"\"" ( json-char | "<"+ [^"\\<|\x7F\x00-\x1F] )* "<"* "\""',
    "json-integer": r'"-"? ("0" | [1-9] [0-9]{0,15})',
    "json-number": r'json-integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "json-boolean": r'"true" | "false"',
    "json-null": r'"null"',
    "json-value": ("json-object | json-array | json-string | json-number | json-boolean"
                   " | json-null"),
    "json-object": (r'"{" ws ( json-string ws ":" ws json-value ws '
                    r'( "," ws json-string ws ":" ws json-value ws )* )? "}"'),
    "json-array": r'"[" ws ( json-value ws ( "," ws json-value ws )* )? "]"',
}
_TYPE_RULES = {"string": "json-string", "integer": "json-integer", "number": "json-number",
               "boolean": "json-boolean", "null": "json-null", "object": "json-object",
               "array": "json-array"}


class UnsupportedSchema(ValueError):
    """The schema uses something constrained decoding cannot guarantee; the message says what
    and where."""


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group(0)):02X}", escaped)
    return f'"{escaped}"'


def json_literal(value: Any) -> str:
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _repeat(item: str, low: int, high: int | None) -> str:
    """``item`` low..high times (``high`` None: unbounded), separated by commas."""
    sep = f'"," ws {item} ws'
    if high == 0:
        return ""
    first = f"{item} ws"
    if high is None:
        rest = f"( {sep} )*" if low <= 1 else f"( {sep} ){{{low - 1},}}"
    else:
        rest = f"( {sep} ){{{max(low - 1, 0)},{high - 1}}}"
    body = f"{first} {rest}"
    return body if low >= 1 else f"( {body} )?"


class SchemaGrammar:
    """Rules for any number of schemas in one grammar (shared primitives, unique names)."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._count = 0
        self._defs: dict[str, Any] = {}
        self._def_rules: dict[str, str] = {}

    def add(self, schema: Any, prefix: str) -> str:
        """The name of a rule matching exactly the JSON values ``schema`` accepts."""
        self._defs, self._def_rules = {}, {}
        if isinstance(schema, dict):
            for key in ("definitions", "$defs"):
                if isinstance(schema.get(key), dict):
                    self._defs.update(schema[key])
        return self._rule(schema, prefix, "$", 0)

    def text(self, root_rules: dict[str, str]) -> str:
        """The whole grammar: ``root_rules`` first (one named ``root``), then the others."""
        used = {**root_rules, **self.rules}
        for name, body in PRIMITIVES.items():
            used.setdefault(name, body)
        grammar = "\n".join(f"{name} ::= {body}" for name, body in used.items())
        if len(grammar) > MAX_GRAMMAR_CHARS:
            raise UnsupportedSchema(f"the schema makes a grammar over {MAX_GRAMMAR_CHARS} "
                                    "characters")
        return grammar + "\n"

    def _new(self, prefix: str, body: str) -> str:
        self._count += 1
        name = f"{prefix}-{self._count}"
        self.rules[name] = body
        return name

    def _rule(self, schema: Any, prefix: str, where: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise UnsupportedSchema(f"the schema is nested deeper than {MAX_DEPTH} at {where}")
        schema = self._checked(schema, where)
        if not schema:
            return "json-value"
        return self._new(prefix, self._body(schema, prefix, where, depth))

    def _body(self, schema: dict[str, Any], prefix: str, where: str, depth: int) -> str:
        if "$ref" in schema:
            return self._ref(schema["$ref"], prefix, where, depth)
        if "const" in schema:
            return json_literal(schema["const"]) + self._null_option(schema)
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise UnsupportedSchema(f"{where}.enum must be a non-empty array")
            return " | ".join(json_literal(v) for v in values) + self._null_option(schema)
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise UnsupportedSchema(f"{where}.{key} must be a non-empty array")
                if key == "allOf" and len(options) > 1:
                    raise UnsupportedSchema(f"{where}.allOf with several schemas cannot be "
                                            "enforced by constrained decoding")
                names = [self._rule(o, prefix, f"{where}.{key}[{n}]", depth + 1)
                         for n, o in enumerate(options)]
                return " | ".join(names) + self._null_option(schema)
        kinds = schema.get("type")
        if kinds is None:
            kinds = self._implied_type(schema)
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds:
            raise UnsupportedSchema(f"{where}.type must be a type name or a list of them")
        bodies = [self._typed(kind, schema, prefix, where, depth) for kind in kinds]
        return " | ".join(f"( {b} )" for b in bodies) + self._null_option(schema)

    @staticmethod
    def _null_option(schema: dict[str, Any]) -> str:
        return " | json-null" if schema.get("nullable") is True else ""

    @staticmethod
    def _implied_type(schema: dict[str, Any]) -> list[str]:
        if "properties" in schema or "additionalProperties" in schema:
            return ["object"]
        if "items" in schema:
            return ["array"]
        return list(_TYPE_RULES)

    def _ref(self, ref: Any, prefix: str, where: str, depth: int) -> str:
        name = None
        for lead in ("#/$defs/", "#/definitions/"):
            if isinstance(ref, str) and ref.startswith(lead):
                name = ref[len(lead):]
        if name is None or name not in self._defs:
            raise UnsupportedSchema(f"$ref {ref!r} at {where} does not name an entry of "
                                    "$defs or definitions")
        if name not in self._def_rules:
            self._count += 1
            rule = f"{prefix}-def-{re.sub(r'[^A-Za-z0-9]', '-', name)}-{self._count}"
            self._def_rules[name] = rule
            self.rules[rule] = ""  # reserved first: a recursive $ref refers to it
            target = self._checked(self._defs[name], ref)
            self.rules[rule] = (self._body(target, prefix, ref, depth + 1) if target
                                else "json-value")
        return self._def_rules[name]

    @staticmethod
    def _checked(schema: Any, where: str) -> dict[str, Any]:
        """``schema`` as an object ({} for any value), or UnsupportedSchema."""
        if schema is True or schema == {}:
            return {}
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"{where} is not a schema object")
        unknown = sorted(set(schema) - _HANDLED - _ANNOTATIONS)
        if unknown:
            raise UnsupportedSchema(f"JSON schema keyword {unknown[0]!r} at {where} cannot be "
                                    "enforced by constrained decoding")
        return schema

    def _typed(self, kind: Any, schema: dict[str, Any], prefix: str, where: str,
               depth: int) -> str:
        if kind == "object":
            return self._object(schema, prefix, where, depth)
        if kind == "array":
            return self._array(schema, prefix, where, depth)
        if kind == "string":
            return self._string(schema, where)
        if kind in ("integer", "number"):
            return self._number(schema, kind == "integer", where)
        if kind in _TYPE_RULES:
            return _TYPE_RULES[kind]
        raise UnsupportedSchema(f"{where}.type {kind!r} is not a JSON schema type")

    @staticmethod
    def _number(schema: dict[str, Any], integer: bool, where: str) -> str:
        numeric = {k: schema[k] for k in _NUMERIC if k in schema}
        kind = "integer" if integer else "number"
        try:
            if "multipleOf" in numeric:
                check = Draft202012Validator({"type": kind, **numeric})
                return multiples(numeric, integer, check.is_valid)
            return number_range(numeric, integer) or _TYPE_RULES[kind]
        except NumberKeywordError as exc:
            raise UnsupportedSchema(f"{where}: {exc}") from None

    def _string(self, schema: dict[str, Any], where: str) -> str:
        pattern, fmt = schema.get("pattern"), schema.get("format")
        if pattern is not None or fmt in FORMATS:
            for key in ("minLength", "maxLength", "format" if pattern is not None else ""):
                if key in schema:
                    raise UnsupportedSchema(f"JSON schema keyword {key!r} at {where} cannot be "
                                            "enforced by constrained decoding together with "
                                            f"{'pattern' if pattern is not None else 'format'}")
            try:
                if pattern is not None:
                    if not isinstance(pattern, str):
                        raise UnsupportedPattern("pattern must be a string")
                    return pattern_rule(pattern)
                return pattern_rule(FORMATS[fmt])
            except UnsupportedPattern as exc:
                raise UnsupportedSchema(f"JSON schema keyword 'pattern' at {where}: {exc}"
                                        ) from None
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if not isinstance(low, int) or not (high is None or isinstance(high, int)):
            raise UnsupportedSchema(f"{where}: minLength and maxLength must be integers")
        if low == 0 and high is None:
            return "json-string"
        count = f"{{{low},}}" if high is None else f"{{{low},{high}}}"
        return f'"\\"" json-char{count} "\\""'

    def _array(self, schema: dict[str, Any], prefix: str, where: str, depth: int) -> str:
        item = self._rule(schema.get("items", True), prefix, f"{where}.items", depth + 1)
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not isinstance(low, int) or not (high is None or isinstance(high, int)):
            raise UnsupportedSchema(f"{where}: minItems and maxItems must be integers")
        return f'"[" ws {_repeat(item, low, high)} "]"'

    def _object(self, schema: dict[str, Any], prefix: str, where: str, depth: int) -> str:
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        if not isinstance(properties, dict) or not isinstance(required, list):
            raise UnsupportedSchema(f"{where}: properties must be an object, required an array")
        extra = schema.get("additionalProperties", True)
        if not properties and not required:
            if extra is False:
                return '"{" ws "}"'
            value = self._rule(extra, prefix, f"{where}.additionalProperties", depth + 1)
            pair = self._new(prefix, f'json-string ws ":" ws {value}')
            return f'"{{" ws {_repeat(pair, 0, None)} "}}"'
        names = list(properties) + [n for n in required if n not in properties]
        pairs = {}
        for name in names:
            value = self._rule(properties.get(name, True), prefix,
                               f"{where}.properties.{name}", depth + 1)
            pairs[name] = f'{json_literal(name)} ws ":" ws {value} ws'
        must = [pairs[n] for n in names if n in required]
        optional = [pairs[n] for n in names if n not in required]
        tail = self._optional_chain(optional, prefix)
        if must:
            body = ' "," ws '.join(must)
            if tail:
                body += f' ( "," ws {tail} )?'
        else:
            body = f"( {tail} )?"
        return f'"{{" ws {body} "}}"'

    def _optional_chain(self, pairs: list[str], prefix: str) -> str:
        """A rule for any in-order subset (at least one) of ``pairs``, comma-separated."""
        if not pairs:
            return ""
        rest = ""
        for pair in reversed(pairs):
            if rest:
                rest = self._new(prefix, f'{pair} ( "," ws {rest} )? | {rest}')
            else:
                rest = self._new(prefix, pair)
        return rest
