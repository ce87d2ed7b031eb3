"""Make the suite's slow set-ups in the background, concurrently, while the fast tests run.

    python tests/warm_caches.py [llamacpp] [realserver] [agents] [browser] [redis]

Started by the test session (``suite_plan.start_warming``) for the set-ups its tests need and
the cache lacks. Each step is the very code a test runs (under the same locks), so a test that
gets there first waits for this one and then finds the result; a step that fails here is left
for its tests to fail or skip with the reason. Prints one line per step with its time.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable

import agents
from debian import find_or_install_chromium
from llamacpp import harness as llamacpp
from realserver import harness as realserver
from redis_server import find_or_install_redis


def step(name: str, work: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        work()
        outcome = "ready"
    except BaseException as exc:  # noqa: BLE001 (pytest.skip/fail are BaseExceptions)
        outcome = f"not made ({type(exc).__name__}): {exc}".splitlines()[0]
        traceback.print_exc()
    print(f"warm_caches: {name} {outcome} in {time.monotonic() - started:.0f} s", flush=True)


def realserver_env() -> None:
    realserver.cached_base_model(realserver.ensure_env())


def llama_server() -> None:
    if llamacpp.build_prerequisites_missing() is None:
        _, source = llamacpp.llama_server_binary()
        llamacpp.tiny_gguf(source)


def agent_clis() -> None:
    for agent in agents.AGENTS.values():
        agents.install(agent)


def debian_packages(wanted: set[str]) -> None:
    # One at a time: apt-get holds dpkg's lock for the whole install.
    if "redis" in wanted:
        find_or_install_redis()
    if "browser" in wanted:
        find_or_install_chromium()


def main(wanted: set[str]) -> None:
    steps = {"realserver": realserver_env, "llamacpp": llama_server, "agents": agent_clis}
    threads = [threading.Thread(target=step, args=(name, work))
               for name, work in steps.items() if name in wanted]
    if wanted & {"redis", "browser"}:
        threads.append(threading.Thread(
            target=step, args=("debian packages", lambda: debian_packages(wanted))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(set(sys.argv[1:]))
