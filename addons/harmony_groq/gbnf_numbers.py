"""Numeric keywords → GBNF: integer and number ranges (``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``) and ``multipleOf``.

Integer ranges are digit-by-digit alternatives, as llama.cpp's own converter writes them (its
``_generate_min_max_int``); every integer in the range is allowed. A number range allows every
integer in it and every decimal ``k.ddd`` whose unit interval ``[k, k+1)`` lies inside it (a
decimal range narrower than one unit is written digit by digit after the point). ``multipleOf``
is a list of literal values: the multiples inside the bounds (at most ``MAX_MULTIPLES``, the
ones nearest zero when there are more), each checked against the schema the way jsonschema
checks it (float quotients included), so what the grammar allows always validates.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

MAX_DIGITS = 16  # an unbounded side: at most this many digits, so that a random model ends
MAX_MULTIPLES = 256
FRACTION = '"." [0-9]{0,5} [1-9]'  # a decimal part never zero: k.ddd > k


class NumberKeywordError(ValueError):
    """A numeric keyword has a bad value, or leaves no value; the message names it."""


def _digits_between(low: str, high: str) -> str:
    """Fixed-width digit strings (leading zeros allowed) from ``low`` to ``high``."""
    if not low:
        return ""
    if low[0] == high[0]:
        rest = _digits_between(low[1:], high[1:])
        return f'"{low[0]}" ( {rest} )' if rest else f'"{low[0]}"'
    width = len(low) - 1
    tail = f" [0-9]{{{width}}}" if width else ""
    if width == 0:
        return f"[{low[0]}-{high[0]}]"
    parts = []
    first, last = int(low[0]), int(high[0])
    if low[1:] == "0" * width:
        first -= 1  # the whole first decade is in: folded into the middle
    else:
        parts.append(f'"{low[0]}" ( {_digits_between(low[1:], "9" * width)} )')
    lead_last = last + 1 if high[1:] == "9" * width else last
    if lead_last - first > 1:
        digits = f"[{first + 1}-{lead_last - 1}]" if lead_last - first > 2 else f'"{first + 1}"'
        parts.append(digits + tail)
    if high[1:] != "9" * width:
        parts.append(f'"{high[0]}" ( {_digits_between("0" * width, high[1:])} )')
    return " | ".join(parts)


def natural_range(low: int, high: int | None) -> str:
    """Decimal numerals without leading zeros for ``low`` ≤ n ≤ ``high`` (None: no bound)."""
    assert low >= 0
    top = high if high is not None else 10 ** MAX_DIGITS - 1
    if top < low:
        return ""
    parts = []
    for width in range(len(str(low)), len(str(top)) + 1):
        start = max(low, 10 ** (width - 1) if width > 1 else 0)
        end = min(top, 10 ** width - 1)
        if start <= end:
            parts.append(f"( {_digits_between(str(start), str(end))} )")
    return " | ".join(parts)


def integer_range(low: int | None, high: int | None) -> str:
    """Integers ``low`` ≤ n ≤ ``high`` (None: no bound) as JSON numerals."""
    parts = []
    if high is None or high >= 0:
        positive = natural_range(max(low, 0) if low is not None else 0, high)
        if positive:
            parts.append(positive)
    if low is None or low < 0:
        negative = natural_range(max(-high, 1) if high is not None else 1,
                                 -low if low is not None else None)
        if negative:
            parts.append(f'"-" ( {negative} )')
    return " | ".join(f"( {p} )" for p in parts)


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str
           ) -> tuple[float | None, bool]:
    """``(value, is_exclusive)`` of one side, the tighter of the two keywords (draft 4's
    boolean ``exclusiveMinimum`` too)."""
    value, strict = schema.get(inclusive), schema.get(exclusive)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise NumberKeywordError(f"{inclusive!r} must be a number")
    if strict is not None and not isinstance(strict, int | float):
        raise NumberKeywordError(f"{exclusive!r} must be a number")
    if isinstance(strict, bool):
        return value, strict and value is not None
    if strict is not None and (value is None or (strict >= value if inclusive == "minimum"
                                                 else strict <= value)):
        return strict, True
    return value, False


Bound = tuple[float | None, bool]


def bounds(schema: dict[str, Any]) -> tuple[Bound, Bound]:
    """``((low, exclusive), (high, exclusive))``."""
    return (_bound(schema, "minimum", "exclusiveMinimum"),
            _bound(schema, "maximum", "exclusiveMaximum"))


def _integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    (low, low_strict), (high, high_strict) = bounds(schema)
    first = None if low is None else (math.floor(low) + 1 if low_strict else math.ceil(low))
    last = None if high is None else (math.ceil(high) - 1 if high_strict else math.floor(high))
    return first, last


def _fraction_between(low: Decimal, high: Decimal) -> str:
    """Decimal parts ``.ddd`` for values strictly between two points of one unit interval
    (``0 ≤ low < high ≤ 1``): a fixed number of digits, enough to fit one value."""
    for places in range(1, 7):
        scale = Decimal(10) ** places
        first, last = math.floor(low * scale) + 1, math.ceil(high * scale) - 1
        if first <= last:
            width = places
            text = _digits_between(str(first).zfill(width), str(last).zfill(width))
            return f'"." ( {text} )'
    return ""


def number_range(schema: dict[str, Any], integer: bool) -> str | None:
    """The GBNF for a bounded integer or number, or None when nothing bounds it."""
    if not any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum",
                                     "exclusiveMaximum")):
        return None
    first, last = _integer_bounds(schema)
    parts = []
    if first is None or last is None or first <= last:
        parts.append(integer_range(first, last))
    (low, _), (high, _) = bounds(schema)
    if not integer:
        # k.ddd where [k, k+1) lies inside (k >= low, k + 1 <= high), and -k.ddd likewise
        up_first = max(0, math.ceil(low)) if low is not None else 0
        up_last = math.floor(high) - 1 if high is not None else None
        if up_last is None or up_first <= up_last:
            parts.append(f"( {integer_range(up_first, up_last)} ) {FRACTION}")
        down_first = max(0, math.ceil(-high)) if high is not None else 0
        down_last = math.floor(-low) - 1 if low is not None else None
        if down_last is None or down_first <= down_last:
            parts.append(f'"-" ( {integer_range(down_first, down_last)} ) {FRACTION}')
        if not parts and low is not None and high is not None:
            parts.append(_narrow(low, high))  # no integer inside: one unit interval
    parts = [p for p in parts if p]
    if not parts:
        raise NumberKeywordError("'minimum'/'maximum' leave no value")
    return " | ".join(f"( {p} )" for p in parts)


def _narrow(low: float, high: float) -> str:
    """A number range inside one unit interval: its integer part, then fixed decimals."""
    unit = math.floor(low)
    start, end = Decimal(repr(low)) - unit, Decimal(repr(high)) - unit
    if unit >= 0:
        fraction = _fraction_between(start, end)
        return f'"{unit}" {fraction}' if fraction else ""
    fraction = _fraction_between(1 - end, 1 - start)  # -(m + f), mirrored
    return f'"-{-unit - 1}" {fraction}' if fraction else ""


def _nearest_zero(first: int | None, last: int | None, limit: int):  # noqa: ANN202
    """Integers from ``first`` to ``last`` (None: unbounded), nearest zero first, at most
    ``limit`` of them."""
    centre = 0
    if first is not None and centre < first:
        centre = first
    if last is not None and centre > last:
        centre = last
    given, step = 0, 0
    while given < limit:
        inside = False
        for value in ((centre,) if step == 0 else (centre + step, centre - step)):
            if (first is None or value >= first) and (last is None or value <= last):
                inside = True
                given += 1
                yield value
        if not inside and step > 0:
            return
        step += 1


def multiples(schema: dict[str, Any], integer: bool, accepts: Any) -> str:
    """``multipleOf``: the multiples within the bounds as literals; ``accepts`` is the check
    (jsonschema's) a candidate value must pass."""
    step = schema.get("multipleOf")
    if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
        raise NumberKeywordError("'multipleOf' must be a number above 0")
    (low, _), (high, _) = bounds(schema)
    exact = Decimal(repr(step))
    first = math.floor(low / step) if low is not None else None
    last = math.ceil(high / step) if high is not None else None
    values: list[str] = []
    for count in _nearest_zero(first, last, MAX_MULTIPLES * 4):
        value = exact * count
        if integer and value != value.to_integral_value():
            continue
        text = _numeral(value)
        if accepts(int(text) if "." not in text else float(text)):
            values.append(text)
            if len(values) >= MAX_MULTIPLES:
                break
    if not values:
        raise NumberKeywordError("'multipleOf' leaves no value within the bounds")
    return literal_trie(values)


def literal_trie(values: list[str]) -> str:
    """Alternatives of ``values`` sharing their prefixes: llama.cpp keeps one grammar stack per
    open alternative and checks every candidate token against each, so 256 flat literals would
    slow each step at a value's start; a trie keeps at most one stack per next character."""
    groups: dict[str, list[str]] = {}
    for value in values:
        groups.setdefault(value[:1], []).append(value[1:])
    options = []
    for first, rests in groups.items():
        if not first:
            continue
        tails = [r for r in rests if r]
        if not tails:
            options.append(f'"{first}"')
            continue
        inner = literal_trie(tails)
        optional = "?" if "" in rests else ""
        options.append(f'"{first}" ( {inner} ){optional}')
    return " | ".join(options)


def _numeral(value: Decimal) -> str:
    """Plain decimal text (no exponent, no trailing zeros)."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
