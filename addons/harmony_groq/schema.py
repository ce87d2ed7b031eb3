"""JSON-schema normalisation so pydantic/MCP tool schemas render as types, not ``any``.

openai-harmony's TypeScript renderer understands object/properties/required, enums, type lists,
``nullable`` and ``oneOf``; it renders ``$ref``, ``anyOf``, ``const`` and ``allOf`` as ``any``.
"""

from __future__ import annotations

from typing import Any

_MAX_DEPTH = 24


def normalize_schema(schema: Any) -> Any:
    """Return a copy of ``schema`` with refs inlined and unsupported combinators rewritten."""
    if not isinstance(schema, dict):
        return schema
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _normalize(schema, defs, 0, frozenset())


def _resolve_ref(ref: str, defs: dict[str, Any]) -> tuple[str, Any] | None:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            name = ref[len(prefix):]
            if name in defs:
                return name, defs[name]
    return None


def _is_null(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "null"


def _normalize(node: Any, defs: dict[str, Any], depth: int, seen: frozenset[str]) -> Any:
    if isinstance(node, list):
        return [_normalize(item, defs, depth + 1, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if depth > _MAX_DEPTH:
        return {}
    node = dict(node)
    node.pop("$defs", None)
    node.pop("definitions", None)
    node.pop("$schema", None)

    ref = node.pop("$ref", None)
    if isinstance(ref, str):
        resolved = _resolve_ref(ref, defs)
        if resolved is None or resolved[0] in seen:  # unknown or recursive: leave it open
            base: dict[str, Any] = {}
        else:
            name, target = resolved
            base = _normalize(target, defs, depth + 1, seen | {name})
        node = {**base, **{k: v for k, v in node.items() if k not in base or k == "description"}}

    if "const" in node:
        node["enum"] = [node.pop("const")]
    if isinstance(node.get("enum"), list):
        _typed_enum(node)

    all_of = node.pop("allOf", None)
    if isinstance(all_of, list):
        for part in all_of:
            part = _normalize(part, defs, depth + 1, seen)
            if isinstance(part, dict):
                _merge_into(node, part)

    for key in ("anyOf", "oneOf"):
        options = node.pop(key, None)
        if not isinstance(options, list):
            continue
        options = [_normalize(o, defs, depth + 1, seen) for o in options]
        non_null = [o for o in options if not _is_null(o)]
        if len(non_null) < len(options):
            node["nullable"] = True
        if len(non_null) == 1 and isinstance(non_null[0], dict):
            _merge_into(node, non_null[0])
        elif non_null:
            node["oneOf"] = non_null

    for key, value in list(node.items()):
        if key == "properties" and isinstance(value, dict):
            node[key] = {p: _normalize(s, defs, depth + 1, seen) for p, s in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict | list):
            node[key] = _normalize(value, defs, depth + 1, seen)
    return node


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return None


def _typed_enum(node: dict[str, Any]) -> None:
    """Harmony renders an enum only with a ``type`` and drops ``null`` members silently."""
    values = node["enum"]
    if None in values and any(v is not None for v in values):
        node["enum"] = values = [v for v in values if v is not None]
        node["nullable"] = True
    if "type" not in node:
        kinds = {_json_type(v) for v in values}
        if len(kinds) == 1 and None not in kinds:
            node["type"] = kinds.pop()


def _merge_into(target: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if key == "properties" and isinstance(target.get(key), dict):
            target[key] = {**target[key], **value}
        elif key == "required" and isinstance(target.get(key), list):
            target[key] = list(dict.fromkeys(target[key] + list(value)))
        elif key not in target:
            target[key] = value
