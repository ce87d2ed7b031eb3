"""The key book: every person's key as its SHA-256 hash, its name and its limits.

A key is ``sk-hgg-`` and 43 URL-safe characters (256 random bits); only its hash is kept, so
the book (a file or Redis) can be read without giving a key away, and a key is found by its
hash. ``FileBook`` keeps the book in ``KEYS_FILE`` (one proxy), ``RedisBook`` in the state
store's Redis (every proxy that uses it), with a version counter the proxies poll.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import fnmatch
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

PREFIX = "sk-hgg-"
REDIS_BOOK = "hgg:v1:keys:book"  # hash: key hash -> the key's JSON
REDIS_VERSION = "hgg:v1:keys:version"  # bumped on every change; proxies poll it


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Key:
    """One person's key: its hash (never the key), name and limits (0: none)."""

    name: str
    hash: str
    models: tuple[str, ...] = ()  # globs, matched case-insensitively; empty: every model
    rpm: int = 0
    tpm: int = 0
    groq_tokens_per_day: int = 0
    max_inflight: int = 0
    expires: float = 0.0  # a UNIX time; 0: never
    created: float = 0.0

    def allows(self, model: str) -> bool:
        lowered = model.lower()
        return not self.models or any(fnmatch.fnmatchcase(lowered, glob.lower())
                                      for glob in self.models)

    def expired(self, now: float) -> bool:
        return bool(self.expires) and now >= self.expires

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.groq_tokens_per_day or self.max_inflight)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, data: str | bytes) -> Key:
        value: dict[str, Any] = json.loads(data)
        value["models"] = tuple(value.get("models") or ())
        return cls(**{name: value[name] for name in cls.__dataclass_fields__ if name in value})


def expiry(text: str) -> float:
    """``--expires``: a date (``2027-01-31``, the end of that UTC day) or an ISO time."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--expires {text!r} is not a date (YYYY-MM-DD) or an ISO time") \
            from None
    if len(text) == 10:
        moment += datetime.timedelta(days=1)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


class Book(Protocol):
    """Where the keys are kept; the CLI writes, the proxies read."""

    def load(self) -> dict[str, Key]:
        """Every key, by hash."""
        ...

    def version(self) -> str:
        """Changes whenever the book does (cheap: polled twice a second)."""
        ...

    def put(self, key: Key, replaces: str | None = None) -> None: ...

    def remove(self, key_hash: str) -> None: ...


@dataclass
class FileBook:
    """``KEYS_FILE``: a JSON object of keys by hash, written whole (a temp file renamed over
    it) under an exclusive lock, mode 0600."""

    path: Path

    def version(self) -> str:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return "none"
        return f"{stat.st_mtime_ns}:{stat.st_size}:{stat.st_ino}"

    def load(self) -> dict[str, Key]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {h: Key.from_json(json.dumps(v)) for h, v in raw.get("keys", {}).items()}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Key]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self.load()
            yield keys
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
            with os.fdopen(fd, "w") as out:
                json.dump({"keys": {h: json.loads(k.to_json()) for h, k in keys.items()}},
                          out, indent=1, sort_keys=True)
            os.replace(tmp, self.path)

    def put(self, key: Key, replaces: str | None = None) -> None:
        with self._locked() as keys:
            if replaces:
                keys.pop(replaces, None)
            keys[key.hash] = key

    def remove(self, key_hash: str) -> None:
        with self._locked() as keys:
            keys.pop(key_hash, None)


class RedisBook:
    """The book in Redis (synchronous: the CLI's side, and the proxies' poller thread)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def version(self) -> str:
        value = self.client.get(REDIS_VERSION)
        return value.decode() if value else "0"

    def load(self) -> dict[str, Key]:
        return {h.decode(): Key.from_json(v) for h, v in self.client.hgetall(REDIS_BOOK).items()}

    def put(self, key: Key, replaces: str | None = None) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            if replaces:
                pipe.hdel(REDIS_BOOK, replaces)
            pipe.hset(REDIS_BOOK, key.hash, key.to_json())
            pipe.incr(REDIS_VERSION)
            pipe.execute()

    def remove(self, key_hash: str) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(REDIS_BOOK, key_hash)
            pipe.incr(REDIS_VERSION)
            pipe.execute()


def book_for(state_store: str, keys_file: str) -> Book:
    """Redis when the state store is Redis (every proxy shares it), else ``keys_file``."""
    if state_store.startswith(("redis://", "rediss://", "unix://")):
        return RedisBook(state_store)
    return FileBook(Path(keys_file).expanduser())


def by_name(keys: dict[str, Key], name: str) -> Key | None:
    return next((k for k in keys.values() if k.name == name), None)


def rotated(key: Key, new_hash: str) -> Key:
    return replace(key, hash=new_hash)
