"""Random texts from a GBNF grammar (llama.cpp's syntax, less token references), for checking
without a server that everything a schema's grammar allows validates against the schema.

``Grammar(text).sample(rng)`` walks the grammar from ``root`` choosing alternatives and
repetition counts at random (unbounded repetitions: a few); ``matches(rule, text)`` translates
a rule to a Python regex (rules that do not recurse) to check a text is allowed.
"""

from __future__ import annotations

import random
import re
from typing import Any

_TOKEN = re.compile(r'\s*(?:(?P<lit>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])'
                    r'|(?P<rep>\{\d*(?:,\d*)?\}|[*+?])|(?P<name>[A-Za-z0-9-]+)|(?P<op>[()|]))')
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r"}
MAX_EXTRA = 3  # an unbounded repetition samples at most this many more than its minimum
MAX_DEPTH = 40


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _SIMPLE.get(code, code)
    return _ESCAPE.sub(one, text)


def _class_ranges(body: str) -> tuple[bool, list[tuple[str, str]]]:
    negate = body.startswith("^")
    chars = list(_unescape_class(body[1:] if negate else body))
    ranges, i = [], 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "\0-":
            ranges.append((chars[i], chars[i + 2]))
            i += 3
        else:
            ranges.append((chars[i], chars[i]))
            i += 1
    return negate, ranges


def _unescape_class(body: str) -> list[str]:
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            match = _ESCAPE.match(body, i)
            assert match
            out.append(_unescape(match.group(0)))
            i = match.end()
        elif body[i] == "-" and out and i + 1 < len(body):
            out.append("\0-")
            i += 1
        else:
            out.append(body[i])
            i += 1
    return out


class Grammar:
    def __init__(self, text: str) -> None:
        self.rules: dict[str, Any] = {}
        for line in text.strip().splitlines():
            name, body = line.split(" ::= ", 1)
            self.rules[name.strip()] = self._parse(body)

    def _parse(self, body: str) -> Any:
        tokens = []
        pos = 0
        while pos < len(body.rstrip()):
            match = _TOKEN.match(body, pos)
            assert match, f"cannot read {body[pos:pos + 30]!r}"
            tokens.append((match.lastgroup, match.group(match.lastgroup)))
            pos = match.end()
        node, rest = self._alternatives(tokens)
        assert not rest, rest
        return node

    def _alternatives(self, tokens: list[tuple[str, str]]) -> tuple[Any, list]:
        options = []
        seq, tokens = self._sequence(tokens)
        options.append(seq)
        while tokens and tokens[0] == ("op", "|"):
            seq, tokens = self._sequence(tokens[1:])
            options.append(seq)
        return ("alt", options), tokens

    def _sequence(self, tokens: list[tuple[str, str]]) -> tuple[Any, list]:
        items = []
        while tokens and tokens[0] not in (("op", "|"), ("op", ")")):
            kind, value = tokens[0]
            tokens = tokens[1:]
            if kind == "lit":
                item: Any = ("lit", _unescape(value[1:-1]))
            elif kind == "cls":
                item = ("cls", *_class_ranges(value[1:-1]))
            elif kind == "name":
                item = ("ref", value)
            elif value == "(":
                item, tokens = self._alternatives(tokens)
                assert tokens[0] == ("op", ")")
                tokens = tokens[1:]
            else:
                raise AssertionError(value)
            while tokens and tokens[0][0] == "rep":
                item = ("rep", *self._count(tokens[0][1]), item)
                tokens = tokens[1:]
            items.append(item)
        return ("seq", items), tokens

    @staticmethod
    def _count(text: str) -> tuple[int, int | None]:
        if text in "*+?":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[text]
        inner = text[1:-1]
        if "," not in inner:
            return int(inner), int(inner)
        low, high = inner.split(",")
        return int(low or 0), int(high) if high else None

    def sample(self, rng: random.Random, rule: str = "root") -> str:
        return self._sample(self.rules[rule], rng, 0)

    def _sample(self, node: Any, rng: random.Random, depth: int) -> str:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "cls":
            _, negate, ranges = node
            if negate:
                while True:
                    char = chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FF)]))
                    if not any(lo <= char <= hi for lo, hi in ranges):
                        return char
            low, high = rng.choice(ranges)
            return chr(rng.randint(ord(low), ord(high)))
        if kind == "ref":
            return self._sample(self.rules[node[1]], rng, depth + 1)
        if kind == "seq":
            return "".join(self._sample(item, rng, depth) for item in node[1])
        if kind == "alt":
            options = node[1]
            if depth > MAX_DEPTH:  # deep: prefer options that end
                options = sorted(options, key=lambda o: repr(o).count("ref"))[:1]
            return self._sample(rng.choice(options), rng, depth)
        _, low, high, item = node
        top = high if high is not None else low + (MAX_EXTRA if depth <= MAX_DEPTH else 0)
        return "".join(self._sample(item, rng, depth) for _ in range(rng.randint(low, top)))

    def regex(self, rule: str = "root") -> str:
        return self._regex(self.rules[rule])

    def _regex(self, node: Any) -> str:
        kind = node[0]
        if kind == "lit":
            return re.escape(node[1])
        if kind == "cls":
            _, negate, ranges = node
            body = "".join(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                           for lo, hi in ranges)
            return f"[{'^' if negate else ''}{body}]"
        if kind == "ref":
            return self._regex(self.rules[node[1]])
        if kind == "seq":
            return "".join(f"(?:{self._regex(item)})" for item in node[1])
        if kind == "alt":
            return "|".join(f"(?:{self._regex(o)})" for o in node[1])
        _, low, high, item = node
        return f"(?:{self._regex(item)}){{{low},{'' if high is None else high}}}"

    def matches(self, text: str, rule: str = "root") -> bool:
        return re.fullmatch(self.regex(rule), text, re.DOTALL) is not None
