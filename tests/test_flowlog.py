"""The flow log's writer: records handed to its thread in batches, at once when the proxy is
quiet, and every record lost reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from harmony_groq import flowlog
from harmony_groq.flowlog import BATCH_SECONDS, FlowLogWriter


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _writer(path: Path, failures: list[str] | None = None) -> FlowLogWriter:
    return FlowLogWriter(str(path), 0, 0, ("gsk_secret0123456789",),
                         None if failures is None else failures.append)


def test_a_burst_goes_to_the_thread_as_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    writer = _writer(path)
    emitted: list[int] = []
    emit = writer.handler.emit
    writer.handler.emit = lambda record: (emitted.append(len(record.msg)), emit(record))[1]

    async def burst() -> None:
        writer.write({"n": 0})  # the first after a quiet spell: handed over at once
        for n in range(1, 6):
            writer.write({"n": n, "key": "gsk_secret0123456789"})
        assert writer.timer is not None and len(writer.batch) == 5
        await asyncio.sleep(BATCH_SECONDS * 2)  # the timer's deadline is earlier
        assert writer.timer is None and writer.batch == []

    asyncio.run(burst())
    writer.close()
    records = _lines(path)
    assert [r["n"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert all(r["key"] == "***redacted***" for r in records[1:])
    assert emitted == [1, 5]  # two hand-overs, two writes


def test_close_writes_the_batch_still_collected(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    writer = _writer(path)

    async def write_two() -> None:
        writer.write({"n": 0})
        writer.write({"n": 1})  # waits for the interval to end
        writer.close()  # mitmproxy shutting down: nothing waits for the timer

    asyncio.run(write_two())
    assert [r["n"] for r in _lines(path)] == [0, 1]


def test_a_full_queue_drops_the_batch_and_reports_each_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flowlog, "MAX_QUEUED", 1)
    failures: list[str] = []
    writer = _writer(tmp_path / "flows.log", failures)
    writer.listener.stop()  # a disk that stopped: nothing leaves the queue
    writer.write({"n": 0})  # no event loop: handed over at once, and queued
    writer.batch = [json.dumps({"n": n}) for n in (1, 2, 3)]
    writer.flush()
    assert failures == ["queue_full"] * 3
    assert writer.queue.qsize() == 1


def test_a_batch_rotates_between_its_lines_and_a_lost_one_counts_each_record(
        tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    writer = FlowLogWriter(str(path), 300, 10, ())
    writer.batch = [json.dumps({"n": n, "text": "x" * 100}) for n in range(8)]
    writer.flush()
    writer.close()
    files = sorted(tmp_path.glob("flows.log*"))
    assert len(files) > 2  # rotated inside the batch, not after it
    assert all(len(f.read_bytes()) <= 300 + 150 for f in files)
    assert sorted(r["n"] for f in files for r in _lines(f)) == list(range(8))

    failures: list[str] = []
    lost = _writer(tmp_path / "missing-dir" / "flows.log", failures)
    lost.batch = [json.dumps({"n": n}) for n in range(3)]
    lost.flush()
    lost.close()
    assert failures == ["write"] * 3
