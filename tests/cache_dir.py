"""Where the suite caches its slow set-ups between runs and checkouts, and the lock that makes
concurrent first uses (parallel workers, the background warm-up, other checkouts) build each
thing once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "gpt-oss-harmony-groq"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing); a second holder waits. The
    kernel drops it when the process dies, so a killed set-up never leaves it stuck."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
