"""How the suite spreads over parallel workers (pytest-xdist; ``./run.sh test`` asks for it) and
overlaps its slow set-ups with the fast tests.

The slow set-ups (llama-server build, real transformers env, agent CLIs, Chromium, redis-server)
are cached and locked (``cache_dir``), so any worker may need any of them. Whatever the selected
tests need and the cache lacks is started at once in the background (``warm_caches.py``), and
the test modules that need it run last, so a fresh clone spends the install time on the fast
tests. Modules whose set-up is ready run first: they are the longest, and a long module that
starts last leaves the other workers idle at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Most tests wait on processes and sockets, so two cores keep three workers busy (docs/testing.md).
DEFAULT_WORKERS = 3
WARM_LOG = HERE.parent / "test-output" / "warm-caches.log"


def worker_count(config: pytest.Config) -> int:
    """``-n auto``: PYTEST_XDIST_AUTO_NUM_WORKERS if set; none (in-process) for tests of one
    file, where starting workers costs more than it saves; otherwise DEFAULT_WORKERS."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    files = {arg.split("::", 1)[0] for arg in config.args}
    if len(files) == 1 and next(iter(files)).endswith(".py"):
        return 0
    return DEFAULT_WORKERS


# The fixture that waits for each slow set-up.
SETUP_FIXTURES = {"llama_build": "llamacpp", "transformers_venv": "realserver",
                  "agent_cli": "agents", "chromium": "browser", "redis_executable": "redis"}


def setups_needed(item: pytest.Item) -> set[str]:
    """The slow set-ups a test waits for (names of ``SETUPS``)."""
    return {SETUP_FIXTURES[name] for name in getattr(item, "fixturenames", ())
            if name in SETUP_FIXTURES}


def _script_ready(script: str) -> bool:
    return subprocess.run(["bash", str(HERE / script), "--check"]).returncode == 0


def _agents_ready() -> bool:
    import agents

    return all((agent.folder / ".installed").exists() for agent in agents.AGENTS.values())


SETUPS = {
    "llamacpp": lambda: _script_ready("llamacpp/build_server.sh"),
    "realserver": lambda: _script_ready("realserver/setup_env.sh"),
    "agents": _agents_ready,
    "browser": lambda: shutil.which("chromium") is not None,
    "redis": lambda: shutil.which("redis-server") is not None,
}


def cold_setups() -> list[str]:
    """The slow set-ups the cache lacks now."""
    return sorted(name for name, ready in SETUPS.items() if not ready())


def order(items: list[pytest.Item], cold: set[str]) -> None:
    """Sort in place, by module: ready slow set-ups first, then the rest, then cold set-ups.
    Stable, and the same in every worker (``cold`` is decided once, by the controller)."""
    rank: dict[str, int] = {}
    for item in items:
        needed = setups_needed(item)
        value = 2 if needed & cold else 0 if needed else 1
        module = item.nodeid.split("::", 1)[0]
        rank[module] = max(rank.get(module, value), value)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])


def start_warming(items: list[pytest.Item], cold: set[str]) -> None:
    """Start ``warm_caches.py`` in the background for the cold set-ups these tests need. It
    runs in its own session and finishes even if the run is cut short: each set-up is written
    under a lock and stamped last, so the tests that need one wait for it, and a later run
    finds it."""
    needed = set().union(*(setups_needed(item) for item in items)) & cold
    if os.environ.get("SKIP_LLAMACPP") == "1":
        needed.discard("llamacpp")
    if os.environ.get("SKIP_REAL_SERVER") == "1":
        needed.discard("realserver")
    if not needed:
        return
    WARM_LOG.parent.mkdir(exist_ok=True)
    with WARM_LOG.open("a") as log:
        subprocess.Popen([sys.executable, str(HERE / "warm_caches.py"), *sorted(needed)],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
