"""Keys, values and URLs of the Redis store: versioned keys, compact values, no password shown.

A value is compact JSON behind a one-byte tag: ``j`` as it is, ``z`` zlib-compressed (above
``COMPRESS_ABOVE`` bytes; Responses histories shrink 3-10×). A change of the format bumps
``VERSION`` in every key, so proxies of two versions never read each other's entries.
"""

from __future__ import annotations

import json
import zlib
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.connection import parse_url

from ..redact import REDACTED

VERSION = "v1"
PREFIX = f"hgg:{VERSION}"
COMPRESS_ABOVE = 1024
SCHEMES = ("redis", "rediss")


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


def is_store_url(url: str) -> bool:
    """A ``redis://`` or ``rediss://`` URL with a host and a numbered database, if any."""
    try:
        parse_url(url)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    db = parts.path.strip("/")
    return parts.scheme in SCHEMES and bool(parts.hostname) and (not db or db.isdigit())


def public_url(url: str) -> str:
    """The URL with its password masked: what logs, ``/health`` and mitmweb may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{REDACTED}@{host}").geturl()


def secret_url(shown: str, environ_url: str) -> str:
    """The URL to connect with: ``shown`` (the option, password masked when it came from the
    environment) with the environment's password put back when the rest is the same."""
    if environ_url and shown != environ_url and public_url(environ_url) == shown:
        return environ_url
    return shown


def passwords_of(url: str) -> tuple[str, ...]:
    """The password as written in the URL and as sent (percent-decoded): what to redact."""
    password = urlsplit(url).password
    return tuple(dict.fromkeys((password, unquote(password)))) if password else ()
