"""Schemas that use every keyword of OpenAI's strict-mode list, shared by the compiler's unit
tests, the vLLM fake's checks and the real llama-server measurements."""

from __future__ import annotations

import jsonschema

NUMBERS = {
    "type": "object",
    "properties": {
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50},
        "temp": {"type": "number", "minimum": -40.5, "maximum": 50, "multipleOf": 0.5},
        "level": {"type": "number", "minimum": 2.25, "exclusiveMaximum": 9},
    },
    "required": ["days", "confidence", "ratio", "step", "temp", "level"],
    "additionalProperties": False,
}
STRINGS = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$"},
        "when": {"type": "string", "format": "date-time"},
        "at": {"type": "string", "format": "time"},
        "day": {"type": "string", "format": "date"},
        "span": {"type": "string", "format": "duration"},
        "mail": {"type": "string", "format": "email"},
    },
    "required": ["code", "when", "at", "day", "span", "mail"],
    "additionalProperties": False,
}
NETWORK = {
    "type": "object",
    "properties": {
        "host": {"type": "string", "format": "hostname"},
        "v4": {"type": "string", "format": "ipv4"},
        "v6": {"type": "string", "format": "ipv6"},
        "id": {"type": "string", "format": "uuid"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    },
    "required": ["host", "v4", "v6", "id", "tags"],
    "additionalProperties": False,
}
SCHEMAS = {"numbers": NUMBERS, "strings": STRINGS, "network": NETWORK}
CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER  # formats checked, not annotations
