"""Issue 28's measurements: what the code sandbox costs (tools/sandbox.py, containers.py).

*First call*: a new container (prlimit + bwrap + the kernel starting) and one ``pass`` in it,
as the first ``python`` call of a conversation pays. *Warm call*: one ``pass`` in a live
container, the proxy's own overhead per later call (request to the kernel and its answer, the
output files read back). *Memory*: 16 containers live and idle at once, the proportional set
size (PSS, shared pages split among their users) of all their processes, per container.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from pathlib import Path

from harmony_groq.tools.containers import ContainerPool
from harmony_groq.tools.sandbox import SandboxLimits, problem

UID_BASE = 220000
LIVE = 16


def _quantiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94]


def _tree_pss_kib(root: int) -> int:
    """PSS of a process and its descendants (children files of /proc)."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in rollup.splitlines()
                      if line.startswith("Pss:"))
        pending.extend(int(child) for child in children)
    return total


async def _measure(first_n: int, warm_n: int) -> dict[str, float]:
    limits = SandboxLimits()
    pool = ContainerPool(limits, UID_BASE, LIVE, 600)
    try:
        first = []
        for _ in range(first_n):
            began = time.perf_counter()
            container = await pool.create()
            await container.execute("pass")
            first.append((time.perf_counter() - began) * 1000)
            await pool.end(container.id, "measured")
        container = await pool.create()
        await container.execute("pass")
        warm = []
        for _ in range(warm_n):
            began = time.perf_counter()
            await container.execute("pass")
            warm.append((time.perf_counter() - began) * 1000)
        while len(pool) < LIVE:
            await (await pool.create()).execute("x = 1")
        await asyncio.sleep(0.5)
        pss = [_tree_pss_kib(c.process.pid) for c in pool._by_id.values() if c.process]
    finally:
        await pool.close()
    first_p50, first_p95 = _quantiles(first)
    warm_p50, warm_p95 = _quantiles(warm)
    return {"first_p50": first_p50, "first_p95": first_p95, "warm_p50": warm_p50,
            "warm_p95": warm_p95, "pss_mib": statistics.mean(pss) / 1024, "live": len(pss)}


def code_section(quick: bool) -> list[str]:
    """The report's code-execution section (Markdown lines)."""
    lines = ["## Code execution sandbox (bubblewrap)", ""]
    why = problem("bwrap", SandboxLimits(), UID_BASE) if shutil.which("bwrap") else (
        "bwrap is not installed (apt-get install bubblewrap)")
    if why:
        return [*lines, f"Skipped: {why}.", ""]
    first_n, warm_n = (5, 50) if quick else (40, 400)
    result = asyncio.run(_measure(first_n, warm_n))
    lines += [
        f"{os.cpu_count()} CPUs; {first_n} new containers, {warm_n} warm calls, "
        f"{result['live']} idle containers for memory.", "",
        "| what | p50 | p95 |", "| --- | --- | --- |",
        f"| first call, new container (sandbox start + `pass`) | {result['first_p50']:.1f} ms "
        f"| {result['first_p95']:.1f} ms |",
        f"| warm call (`pass` in a live container) | {result['warm_p50']:.2f} ms "
        f"| {result['warm_p95']:.2f} ms |", "",
        f"Memory per idle container ({LIVE} live): {result['pss_mib']:.1f} MiB PSS "
        "(prlimit/bwrap, bwrap's init and the kernel).", ""]
    return lines
