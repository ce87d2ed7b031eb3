"""Optional sampling profiles of the proxy with py-spy, summarised as the hottest functions.

py-spy is not a project dependency: ``--profile DIR`` uses ``$PY_SPY`` or ``py-spy`` on PATH
(``pip install py-spy`` into any venv). Each profiled phase leaves ``DIR/<phase>.txt``
(py-spy's collapsed stacks) and ``DIR/<phase>-top.txt`` (self and inclusive sample shares).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


def py_spy() -> str:
    found = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not found:
        raise SystemExit("bench: --profile needs py-spy: pip install py-spy into any venv and "
                         "put it on PATH or set PY_SPY=/path/to/py-spy")
    return found


@contextlib.contextmanager
def profiled(directory: Path | None, phase: str, pid: int) -> Iterator[None]:
    """Sample ``pid`` while the block runs (no-op when ``directory`` is None)."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"{phase}.txt"
    sampler = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--rate", "250",
                                "--nonblocking", "--format", "raw", "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(30)
    if raw.exists():
        (directory / f"{phase}-top.txt").write_text(summarize(raw.read_text()))


def summarize(collapsed: str, top: int = 25) -> str:
    """Self and inclusive shares of samples per function from collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "", "self %  function"]
    lines += [f"{100 * n / total:5.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * n / total:5.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
