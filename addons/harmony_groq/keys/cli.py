"""``./run.sh keys``: add, list, revoke and rotate the keys people use with the proxy.

The book is the one the proxies read: Redis when ``STATE_STORE`` is a Redis URL, else
``KEYS_FILE`` (``harmony-groq-keys.json`` in the current folder). A new key is printed once,
alone on the last line; only its hash is kept.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time

from redis.exceptions import RedisError

from ..redact import redact_text
from .book import Book, FileBook, Key, book_for, by_name, expiry, hash_of, new_secret, rotated

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


def _name(text: str) -> str:
    if not NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a name is 1-64 letters, digits and . _ @ + - (it labels the metrics)")
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _book() -> Book:
    return book_for(os.environ.get("STATE_STORE", "memory").strip(),
                    os.environ.get("KEYS_FILE", "harmony-groq-keys.json"))


def _when(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M") \
        if stamp else "-"


def add(args: argparse.Namespace, book: Book) -> int:
    if by_name(book.load(), args.name) is not None:
        print(f"keys: {args.name!r} exists; rotate it or revoke it first", file=sys.stderr)
        return 1
    try:
        expires = expiry(args.expires) if args.expires else 0.0
    except ValueError as exc:
        print(f"keys: {exc}", file=sys.stderr)
        return 2
    secret = new_secret()
    models = tuple(m.strip() for m in (args.models or "").split(",") if m.strip())
    book.put(Key(args.name, hash_of(secret), models, args.rpm, args.tpm,
                 args.groq_tokens_per_day, args.max_inflight, expires, time.time()))
    print(f"key {args.name!r} added; it is shown once, here:", file=sys.stderr)
    print(secret)
    return 0


def list_keys(book: Book) -> int:
    keys = sorted(book.load().values(), key=lambda k: k.name)
    print(f"{'name':<20} {'models':<24} {'rpm':>6} {'tpm':>9} {'groq/day':>10} "
          f"{'inflight':>8}  {'expires':<16} created")
    for k in keys:
        print(f"{k.name:<20} {','.join(k.models) or '*':<24} {k.rpm or '-':>6} "
              f"{k.tpm or '-':>9} {k.groq_tokens_per_day or '-':>10} "
              f"{k.max_inflight or '-':>8}  {_when(k.expires):<16} {_when(k.created)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run.sh keys", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("add", help="a new key for NAME, printed once")
    new.add_argument("name", type=_name)
    new.add_argument("--models", help="comma-separated globs of the models it may use")
    for option in ("rpm", "tpm", "groq-tokens-per-day", "max-inflight"):
        new.add_argument(f"--{option}", type=_positive, default=0, metavar="N")
    new.add_argument("--expires", help="YYYY-MM-DD (the end of that UTC day) or an ISO time")
    commands.add_parser("list", help="the keys' names and limits (never the keys)")
    for verb, what in (("revoke", "stop NAME's key at once"),
                       ("rotate", "a new key for NAME (the old one stops), printed once")):
        commands.add_parser(verb, help=what).add_argument("name")
    args = parser.parse_args(argv)
    book = _book()
    try:
        return _run(args, book)
    except (OSError, ValueError, RedisError) as exc:  # one clear line, no traceback
        where = book.path if isinstance(book, FileBook) else "STATE_STORE's Redis"
        print(f"keys: cannot use the key book in {where}: {type(exc).__name__}: "
              f"{redact_text(str(exc))}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, book: Book) -> int:
    if args.command == "add":
        return add(args, book)
    if args.command == "list":
        return list_keys(book)
    key = by_name(book.load(), args.name)
    if key is None:
        print(f"keys: no key named {args.name!r}", file=sys.stderr)
        return 1
    if args.command == "revoke":
        book.remove(key.hash)
        print(f"key {args.name!r} revoked", file=sys.stderr)
        return 0
    secret = new_secret()
    book.put(rotated(key, hash_of(secret)), replaces=key.hash)
    print(f"key {args.name!r} rotated; the old key no longer works; the new one, once:",
          file=sys.stderr)
    print(secret)
    return 0
