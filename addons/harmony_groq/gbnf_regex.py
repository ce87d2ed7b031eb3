"""String ``pattern`` and ``format`` → GBNF for the string's JSON text.

A pattern is parsed by Python's own regex parser (``re._parser``: the parser jsonschema's
``re.search`` uses, so the grammar and the validator read a pattern alike) and its tree is
written as GBNF over the JSON-escaped text: ``"`` and ``\\`` are written escaped, ``<`` as
``\\u003c`` (llama.cpp matches a control token by its text, and ``<|`` would pose as one),
control characters are left out. The grammar allows the strings that match the pattern
whole (a subset of ``re.search``'s: every one of them is valid). Look-arounds, back
references, word boundaries and inline flags cannot be written as GBNF: ``UnsupportedPattern``.

The formats of OpenAI's strict list are patterns here, each a subset of what jsonschema's
format checker accepts (dates up to day 28, IPv6 in full form, …): what is generated always
validates.
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?"
_DATE = r"[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)"
_DAYS = r"(\d{1,3}Y(\d{1,3}M)?(\d{1,3}D)?|\d{1,3}M(\d{1,3}D)?|\d{1,3}D)"
_HOURS = r"T(\d{1,3}H(\d{1,3}M)?(\d{1,3}S)?|\d{1,3}M(\d{1,3}S)?|\d{1,3}S)"
_HOSTNAME = rf"({_HOST_LABEL}\.){{0,3}}[A-Za-z]{{2,8}}"
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_HEX4 = r"[0-9a-f]{1,4}"
FORMATS = {
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE}T{_TIME}",
    "duration": rf"P({_DAYS}({_HOURS})?|{_HOURS}|\d{{1,3}}W)",
    "email": rf"[A-Za-z0-9_+-]{{1,20}}(\.[A-Za-z0-9_+-]{{1,20}}){{0,2}}@{_HOSTNAME}",
    "hostname": _HOSTNAME,
    "ipv4": rf"{_OCTET}(\.{_OCTET}){{3}}",
    "ipv6": rf"{_HEX4}(:{_HEX4}){{7}}",
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
}
_MAX_CODE = 0x10FFFF
_ESCAPED = {ord('"'): '"\\\\\\""', ord("\\"): '"\\\\\\\\"', ord("<"): '"\\\\u003c"'}
_LEFT_OUT = [(0, 0x1F), (0x7F, 0x7F)]  # control characters: never generated
_CATEGORIES = {
    sre.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    sre.CATEGORY_SPACE: [(0x20, 0x20)],  # \s: the space (tabs, newlines are controls)
}
_NEGATED = {sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT, sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
            sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE}
_SPACES = [(0x09, 0x0D), (0x20, 0x20), (0x1C, 0x1F), (0x85, 0x85), (0xA0, 0xA0)]


class UnsupportedPattern(ValueError):
    """The regex uses something GBNF cannot express; the message says what."""


def pattern_rule(pattern: str) -> str:
    """GBNF for the JSON text (quotes included) of the strings matching ``pattern`` whole."""
    try:
        tree = sre_parse.parse(pattern)
    except re.error as exc:
        raise UnsupportedPattern(f"the pattern {pattern!r} is not a valid regex: {exc}") from None
    items = list(tree)
    if items and items[0][0] == sre.AT and items[0][1] in (sre.AT_BEGINNING,
                                                           sre.AT_BEGINNING_STRING):
        items = items[1:]
    if items and items[-1][0] == sre.AT and items[-1][1] in (sre.AT_END, sre.AT_END_STRING):
        items = items[:-1]
    return f'"\\"" {_sequence(items, pattern) or ""} "\\""'.replace("  ", " ")


def format_rule(name: str) -> str | None:
    """GBNF for a string of format ``name``, or None for a format outside the strict list."""
    return pattern_rule(FORMATS[name]) if name in FORMATS else None


def _sequence(items: list[Any], pattern: str) -> str:
    return " ".join(part for part in (_item(op, av, pattern) for op, av in items) if part)


def _item(op: Any, av: Any, pattern: str) -> str:
    if op == sre.LITERAL:
        return _class([(av, av)])
    if op == sre.NOT_LITERAL:
        return _class(_complement([(av, av)]))
    if op == sre.ANY:
        return _class(_complement([(0x0A, 0x0A)]))
    if op == sre.IN:
        return _class(_in(av, pattern))
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, high, body = av
        inner = _sequence(list(body), pattern)
        if high == sre.MAXREPEAT:
            count = "*" if low == 0 else "+" if low == 1 else f"{{{low},}}"
        else:
            count = f"{{{low},{high}}}" if low != high else f"{{{low}}}"
        return f"( {inner} ){count}"
    if op == sre.SUBPATTERN:
        _group, add_flags, del_flags, body = av
        if add_flags or del_flags:
            raise UnsupportedPattern(f"inline flags in the pattern {pattern!r}")
        return f"( {_sequence(list(body), pattern)} )"
    if op == sre.ATOMIC_GROUP:
        return f"( {_sequence(list(av), pattern)} )"
    if op == sre.BRANCH:
        return "( " + " | ".join(_sequence(list(b), pattern) or '""' for b in av[1]) + " )"
    what = {sre.AT: "an anchor or boundary inside", sre.GROUPREF: "a back reference in",
            sre.ASSERT: "a look-around in", sre.ASSERT_NOT: "a look-around in"}.get(
        op, f"{str(op).lower()} in")
    raise UnsupportedPattern(f"{what} the pattern {pattern!r} cannot be enforced")


def _in(items: list[Any], pattern: str) -> list[tuple[int, int]]:
    negate = bool(items) and items[0][0] == sre.NEGATE
    ranges: list[tuple[int, int]] = []
    for op, av in items[1:] if negate else items:
        if op == sre.LITERAL:
            ranges.append((av, av))
        elif op == sre.RANGE:
            ranges.append(av)
        elif op == sre.CATEGORY and av in _CATEGORIES:
            ranges += _CATEGORIES[av]
        elif op == sre.CATEGORY and av in _NEGATED:
            source = _SPACES if av == sre.CATEGORY_NOT_SPACE else _CATEGORIES[_NEGATED[av]]
            ranges += _complement(source)
        else:
            raise UnsupportedPattern(f"a character class in the pattern {pattern!r} cannot "
                                     "be enforced")
    return _complement(ranges) if negate else _merge(ranges)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    result, start = [], 0
    for low, high in _merge(ranges):
        if low > start:
            result.append((start, low - 1))
        start = max(start, high + 1)
    if start <= _MAX_CODE:
        result.append((start, _MAX_CODE))
    return result


def _char(code: int) -> str:
    return chr(code) if chr(code).isalnum() and code < 0x80 else f"\\u{code:04X}" \
        if code <= 0xFFFF else f"\\U{code:08X}"


def _class(ranges: list[tuple[int, int]]) -> str:
    """GBNF for one character of ``ranges`` as JSON text."""
    allowed = _complement(_complement(ranges) + _LEFT_OUT + [(c, c) for c in _ESCAPED])
    options = [escape for code, escape in _ESCAPED.items()
               if any(low <= code <= high for low, high in ranges)]
    if allowed:
        body = "".join(_char(low) if low == high else f"{_char(low)}-{_char(high)}"
                       for low, high in allowed)
        options.insert(0, f"[{body}]")
    if not options:
        raise UnsupportedPattern("a character class leaves no character")
    return options[0] if len(options) == 1 else "( " + " | ".join(options) + " )"
