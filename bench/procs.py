"""Processes of the benchmark: start, pin to a CPU, and watch CPU time and RSS via /proc."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads it starts later inherit the mask)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(task.name), cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # minus idle and iowait


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MIB


@dataclass
class Usage:
    """CPU time and peak RSS of each watched process over one or more measured intervals."""

    elapsed: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    others_seconds: float = 0.0  # every other process on the machine: contention
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    def cpu_percent(self, name: str) -> float:
        """CPU % of one core (100 = one core busy all the time)."""
        return 100 * self.cpu_seconds[name] / self.elapsed

    @property
    def others_percent(self) -> float:
        return 100 * self.others_seconds / self.elapsed

    def __add__(self, other: Usage) -> Usage:
        names = self.cpu_seconds.keys() | other.cpu_seconds.keys()
        return Usage(
            self.elapsed + other.elapsed,
            {n: self.cpu_seconds.get(n, 0.0) + other.cpu_seconds.get(n, 0.0) for n in names},
            self.others_seconds + other.others_seconds,
            {n: max(self.peak_rss_mib.get(n, 0.0), other.peak_rss_mib.get(n, 0.0))
             for n in self.peak_rss_mib.keys() | other.peak_rss_mib.keys()})


class Monitor:
    """``with Monitor(pids) as usage:`` fills ``usage`` when the block ends (RSS every 20 ms)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.usage = Usage()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.usage.peak_rss_mib[name] = max(self.usage.peak_rss_mib.get(name, 0.0),
                                                    rss_mib(pid))
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> Usage:
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._busy = busy_seconds()
        self._started = time.perf_counter()
        self._thread.start()
        return self.usage

    def __exit__(self, *exc: object) -> None:
        self.usage.elapsed = time.perf_counter() - self._started
        self._stop.set()
        self._thread.join()
        for name, pid in self.pids.items():
            self.usage.cpu_seconds[name] = cpu_seconds(pid) - self._cpu[name]
        others = busy_seconds() - self._busy - sum(self.usage.cpu_seconds.values())
        self.usage.others_seconds = max(0.0, others)


class Service:
    """A server subprocess: output drained in a thread, ready when ``ready`` says so."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.output: list[str] = []
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env, cwd=cwd)
        self._line = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._line:
                self.output.append(line)
                self._line.notify_all()
        with self._line:
            self._line.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first output line matching ``pattern``; raises if none comes in time."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._line:
            while True:
                for line in self.output[seen:]:
                    if match := pattern.search(line):
                        return match
                seen = len(self.output)
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.output))
                self._line.wait(min(left, 0.5))

    def wait_until(self, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.output))
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
