"""Debian packages the tests need, installed with apt-get when missing (a fresh CI machine runs
as root); where that cannot be done, the test is skipped with the command to run.

Parallel workers (and the background warm-up, tests/warm_caches.py) install under one lock
file, and apt-get waits for dpkg's own lock rather than failing while another process (another
checkout's tests, unattended upgrades) holds it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from cache_dir import CACHE_ROOT, file_lock

# apt-get's wait for dpkg's lock held by any other process, in seconds.
DPKG_LOCK_TIMEOUT = 600


def find_or_install(executable: str, packages: tuple[str, ...]) -> str:
    """The path of ``executable``, after ``apt-get install packages`` if it is missing."""
    found = shutil.which(executable)
    if found:
        return found
    command = f"apt-get install {' '.join(packages)}"
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(f"{executable} is missing and cannot be installed here (needs apt-get as "
                    f"root): {command}")
    with file_lock(CACHE_ROOT / "apt-get.lock"):  # a second worker waits, then finds it
        found = shutil.which(executable)
        if found:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        wait = ["-o", f"DPkg::Lock::Timeout={DPKG_LOCK_TIMEOUT}"]
        for step in (["apt-get", *wait, "update"], ["apt-get", *wait, "install", "-y", *packages]):
            done = subprocess.run(step, capture_output=True, text=True, env=env,
                                  timeout=900 + DPKG_LOCK_TIMEOUT)
            if done.returncode != 0:
                pytest.skip(f"installing {executable} failed ({' '.join(step)}):\n"
                            f"{done.stderr[-2000:]}")
    found = shutil.which(executable)
    if not found:
        pytest.skip(f"apt-get installed {executable} but it is not on PATH")
    return found


def find_or_install_bwrap() -> str:
    """bubblewrap, the code-execution sandbox (tools/sandbox.py)."""
    return find_or_install("bwrap", ("bubblewrap",))


def find_or_install_chromium() -> str:
    """Debian's chromium (and the emoji font the screenshots show), for the mitmweb tests."""
    return find_or_install("chromium", ("chromium", "fonts-noto-color-emoji"))
