"""The flow log: one JSON object per line, size-rotated, 0600, written off the event loop.

Records go through a ``QueueHandler`` to a ``QueueListener`` thread, so a slow disk never
delays a client; a failing write warns once and the next record retries the file. Every lost
record is also reported to ``on_failure`` (the metrics count them), since the warning is once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import queue
import stat
import time
from collections.abc import Callable
from typing import Any

from .redact import redact_text, redact_value

logger = logging.getLogger(__name__)
MAX_QUEUED = 10000  # records waiting for the writer thread


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler whose files are created with mode 0600 and that survives
    write failures (disk full, file removed): it warns once and reopens on the next record."""

    def __init__(self, *args: Any, on_failure: Callable[[str], None] | None = None,
                 **kwargs: Any) -> None:
        self.failing = False
        self.position = 0
        self.on_failure = on_failure
        super().__init__(*args, **kwargs)

    def _open(self):  # noqa: ANN202 - signature of the stdlib method
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode):  # never chmod a device such as /dev/null
            os.fchmod(fd, 0o600)
        self.position = status.st_size
        # A lone surrogate (JSON "\ud800" from a client) is written as its escape, not lost.
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if self.stream is None or not os.path.exists(self.baseFilename):
                if self.stream is not None:
                    self.stream.close()
                self.stream = self._open()
            if self.maxBytes and self.position and self.position + len(line) >= self.maxBytes:
                self.doRollover()
                if self.stream is None:
                    self.stream = self._open()
            self.stream.write(line)
            self.stream.flush()
            self.position += len(line)  # characters, near enough to bytes for rotation
        except Exception as exc:
            self._failed(exc)
            return
        if self.failing:
            self.failing = False
            logger.warning("flow log %s is writable again", self.baseFilename)

    def _failed(self, exc: Exception) -> None:
        if self.on_failure is not None:
            self.on_failure("write")
        if not self.failing:
            self.failing = True
            logger.warning("cannot write the flow log %s (%s); flows are still served",
                           self.baseFilename, exc)
        with contextlib.suppress(OSError):
            if self.stream is not None:
                self.stream.close()
        self.stream = None  # type: ignore[assignment]


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JSONRecordFormatter(logging.Formatter):
    """Serialises and redacts a record's dict in the listener thread, off the event loop."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        # Redaction runs on the serialised line, where a secret appears JSON-escaped.
        self.secrets = tuple({form for s in secrets
                              for form in (s, json.dumps(s, ensure_ascii=False)[1:-1])})

    def format(self, record: logging.LogRecord) -> str:
        try:
            line = redact_text(json.dumps(record.msg, ensure_ascii=False, default=str),
                               self.secrets)  # one pass; the patterns stop at quotes
            # One record, one line, for every reader: escape what some treat as line breaks
            # (looked for first: ``translate`` costs a dict lookup per character).
            if "\x85" in line or "\u2028" in line or "\u2029" in line:
                line = line.translate(_LINE_BREAKS)
            return line
        except (RecursionError, ValueError, TypeError) as exc:
            # A pathological body (say, nested 10,000 deep) still leaves a record of the flow.
            keep = {k: record.msg.get(k) for k in ("event", "id", "route", "model", "status",
                                                   "error", "started", "total_ms")}
            keep["log_error"] = f"record not serialisable: {type(exc).__name__}"
            return json.dumps(redact_value(keep, self.secrets), default=str)


class RecordListener(logging.handlers.QueueListener):
    """Takes the records' plain dicts off the queue: the ``LogRecord`` the handler needs is
    made here, in the listener thread, not on the event loop (~5 µs a flow)."""

    def prepare(self, record: Any) -> logging.LogRecord:
        return logging.makeLogRecord({"msg": record, "levelno": logging.INFO,
                                      "levelname": "INFO"})


class FlowLogWriter:
    """Owns the file handler and its listener thread."""

    def __init__(self, path: str, max_bytes: int, backups: int, secrets: tuple[str, ...],
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.path = path
        # SimpleQueue: one C call a record (Queue's put takes a Python lock and a condition).
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.on_failure = on_failure
        self.handler = PrivateRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                  encoding="utf-8", delay=True,
                                                  on_failure=on_failure)
        self.handler.setFormatter(JSONRecordFormatter(secrets))
        self.listener = RecordListener(self.queue, self.handler)
        self.listener.start()
        self.dropped = 0

    def write(self, record: dict[str, Any]) -> None:
        record.setdefault("ts", time.time())
        if self.queue.qsize() >= MAX_QUEUED:  # the disk fell behind: drop, and say so
            self.dropped += 1
            if self.on_failure is not None:
                self.on_failure("queue_full")
            return
        self.queue.put_nowait(record)

    def close(self) -> None:
        self.listener.stop()
        self.handler.close()
