"""The state store's URL (``STATE_STORE``): is it one, and the password never shown.

Below ``settings`` (which validates the option with it) and ``state/`` (which connects with it),
so neither imports the other's package to read a URL.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis.connection import parse_url

from .redact import REDACTED

SCHEMES = ("redis", "rediss")


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
