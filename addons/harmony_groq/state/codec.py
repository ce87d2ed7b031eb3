"""Keys and values of the Redis store: versioned keys, compact values (its URL: store_url.py).

A value is compact JSON behind a one-byte tag: ``j`` as it is, ``z`` zlib-compressed (above
``COMPRESS_ABOVE`` bytes; Responses histories shrink 3-10×). A change of the format bumps
``VERSION`` in every key, so proxies of two versions never read each other's entries.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

VERSION = "v1"
PREFIX = f"hgg:{VERSION}"
COMPRESS_ABOVE = 1024


def entry_key(namespace: str, key: str) -> str:
    return f"{PREFIX}:{namespace}:{key}"


def meta_key(namespace: str, what: str) -> str:
    """Bookkeeping of a namespace, in its own key space: no client-chosen id can name it."""
    return f"{PREFIX}:meta:{namespace}:{what}"


def encode(value: Any) -> bytes:
    raw = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    if len(raw) > COMPRESS_ABOVE:
        return b"z" + zlib.compress(raw, 1)
    return b"j" + raw


def decode(data: bytes) -> Any:
    """The value, or ``None`` for bytes that are not one (another writer's key)."""
    tag, body = data[:1], data[1:]
    try:
        if tag == b"z":
            body = zlib.decompress(body)
        elif tag != b"j":
            return None
        return json.loads(body)
    except (zlib.error, ValueError):
        return None
