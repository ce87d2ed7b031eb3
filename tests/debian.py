"""Debian packages the tests need, installed with apt-get when missing (a fresh CI machine runs
as root); where that cannot be done, the test is skipped with the command to run."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def find_or_install(executable: str, packages: tuple[str, ...]) -> str:
    """The path of ``executable``, after ``apt-get install packages`` if it is missing."""
    found = shutil.which(executable)
    if found:
        return found
    command = f"apt-get install {' '.join(packages)}"
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(f"{executable} is missing and cannot be installed here (needs apt-get as "
                    f"root): {command}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=900)
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
