"""The flow log: one JSON object per line, size-rotated, 0600, written off the event loop.

Records go in batches through a queue to a ``QueueListener`` thread, so a slow disk never
delays a client; a failing write warns once and the next batch retries the file. Every lost
record is also reported to ``on_failure`` (the metrics count them), since the warning is once.

Why batches: handing the thread one record at a time wakes it for every flow, and on a busy
proxy that wake-up (a context switch and the GIL passed back and forth) cost more CPU than
serialising the record. A record goes to the thread at once when none went in the last
``BATCH_SECONDS`` (a quiet proxy logs each flow as it ends); otherwise it waits for the rest of
that interval and goes with the others: one wake-up, one write and one flush a batch.
"""

from __future__ import annotations

import asyncio
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

import orjson

from .redact import redact_text

logger = logging.getLogger(__name__)
MAX_QUEUED = 1000  # batches waiting for the writer thread
BATCH_SECONDS = 0.05  # at most one hand-over to the writer thread per interval
MAX_BATCH = 500  # records: a larger batch goes at once


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
        """A batch: one line a flow record, the file rotated between lines, one flush."""
        lines = self.format(record).split("\n")  # JSON lines hold no raw line break
        try:
            if self.stream is None or not os.path.exists(self.baseFilename):
                if self.stream is not None:
                    self.stream.close()
                self.stream = self._open()
            for line in lines:
                line += self.terminator
                if self.maxBytes and self.position and (
                        self.position + len(line) >= self.maxBytes):
                    self.doRollover()
                    if self.stream is None:
                        self.stream = self._open()
                self.stream.write(line)
                self.position += len(line)  # characters, near enough to bytes for rotation
            self.stream.flush()
        except Exception as exc:
            self._failed(exc, len(lines))
            return
        if self.failing:
            self.failing = False
            logger.warning("flow log %s is writable again", self.baseFilename)

    def _failed(self, exc: Exception, lost: int) -> None:
        if self.on_failure is not None:
            for _ in range(lost):
                self.on_failure("write")
        if not self.failing:
            self.failing = True
            logger.warning("cannot write the flow log %s (%s); flows are still served",
                           self.baseFilename, exc)
        with contextlib.suppress(OSError):
            if self.stream is not None:
                self.stream.close()
        self.stream = None  # type: ignore[assignment]


# What orjson declines (a lone surrogate from a client's JSON, an integer past 64 bits, nesting
# past 254) goes through the stdlib's encoder instead.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def record_line(flow_record: dict[str, Any]) -> str:
    """A record as one line of compact JSON (orjson: a fifth of the stdlib's time), not yet
    redacted.

    Serialised when the record is written, not in the thread: a batch of dicts waiting for the
    thread outlives the garbage collector's young generations and makes its full collections
    (a whole-heap scan, ~60 ms here) frequent; a batch of strings is not tracked at all."""
    try:
        line = orjson.dumps(flow_record, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError included
        line = _stdlib_line(flow_record)
    # One record, one line, for every reader: escape what some treat as line breaks (looked
    # for first: ``translate`` costs a dict lookup per character).
    if "\x85" in line or "\u2028" in line or "\u2029" in line:
        line = line.translate(_LINE_BREAKS)
    return line


def _stdlib_line(flow_record: dict[str, Any]) -> str:
    try:
        return _ENCODER.encode(flow_record)
    except (RecursionError, ValueError, TypeError) as exc:
        # A pathological body (say, nested 10,000 deep) still leaves a record of the flow.
        keep = {k: flow_record.get(k) for k in ("event", "id", "route", "model", "status",
                                               "error", "started", "total_ms")}
        keep["log_error"] = f"record not serialisable: {type(exc).__name__}"
        return json.dumps(keep, default=str)


class JSONRecordFormatter(logging.Formatter):
    """Redacts a batch of record lines in the listener thread, off the event loop."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        # Redaction runs on the serialised lines, where a secret appears JSON-escaped.
        self.secrets = tuple({form for s in secrets
                              for form in (s, json.dumps(s, ensure_ascii=False)[1:-1])})

    def format(self, record: logging.LogRecord) -> str:
        """The batch's lines (``record.msg``), redacted in one pass: the key patterns stop at
        quotes and line breaks, so none spans two records."""
        return redact_text("\n".join(record.msg), self.secrets)


class RecordListener(logging.handlers.QueueListener):
    """Takes batches (lists of record lines) off the queue: the ``LogRecord`` the handler
    needs is made here, in the listener thread, not on the event loop."""

    def prepare(self, record: Any) -> logging.LogRecord:
        return logging.makeLogRecord({"msg": record, "levelno": logging.INFO,
                                      "levelname": "INFO"})


class FlowLogWriter:
    """Owns the file handler and its listener thread, and the batch being collected."""

    def __init__(self, path: str, max_bytes: int, backups: int, secrets: tuple[str, ...],
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.path = path
        # SimpleQueue: one C call a batch (Queue's put takes a Python lock and a condition).
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.on_failure = on_failure
        self.handler = PrivateRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                  encoding="utf-8", delay=True,
                                                  on_failure=on_failure)
        self.handler.setFormatter(JSONRecordFormatter(secrets))
        self.listener = RecordListener(self.queue, self.handler)
        self.listener.start()
        self.batch: list[dict[str, Any]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.flushed_at = float("-inf")  # time.monotonic() of the last hand-over

    def write(self, record: dict[str, Any]) -> None:
        record.setdefault("ts", time.time())
        self.batch.append(record_line(record))
        if self.timer is not None and len(self.batch) < MAX_BATCH:
            return  # goes with the batch when the timer fires
        wait = self.flushed_at + BATCH_SECONDS - time.monotonic()
        if wait <= 0 or len(self.batch) >= MAX_BATCH:
            self.flush()
            return
        try:
            self.timer = asyncio.get_running_loop().call_later(wait, self.flush)
        except RuntimeError:  # no event loop (a unit test, or mitmproxy shutting down)
            self.flush()

    def flush(self) -> None:
        """Hand the batch collected so far to the writer thread."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flushed_at = time.monotonic()
        batch, self.batch = self.batch, []
        if not batch:
            return
        if self.queue.qsize() >= MAX_QUEUED:  # the disk fell behind: drop, and say so
            if self.on_failure is not None:
                for _ in batch:
                    self.on_failure("queue_full")
            return
        self.queue.put_nowait(batch)

    def close(self) -> None:
        self.flush()
        self.listener.stop()
        self.handler.close()
