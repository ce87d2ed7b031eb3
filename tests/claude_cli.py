"""The real Claude Code CLI (npm ``@anthropic-ai/claude-code``, pinned), installed once into
``~/.cache/gpt-oss-harmony-groq/agents/<package>@<version>/`` and run headless (``claude -p``).

A lock next to the install folder lets concurrent test sessions install it once; a stamp
marks a complete install. Tests skip only when npm cannot reach its registry: a pinned
version that stopped installing fails them. Runs get a fresh ``HOME``, no inherited keys or
proxies, a hard timeout, and their whole process group killed at the end (Claude Code starts
shells).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

PACKAGE, VERSION = "@anthropic-ai/claude-code", "2.1.332"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "gpt-oss-harmony-groq" / "agents"
FOLDER = CACHE / f"{PACKAGE.replace('/', '+')}@{VERSION}"
EXECUTABLE = FOLDER / "node_modules" / ".bin" / "claude"
# Headless, quiet and strict: nothing but /v1/messages leaves the CLI (no telemetry, update
# checks or api.anthropic.com), no stream:false fallback to hide a broken stream, one retry.
QUIET = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
         "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
         "CLAUDE_CODE_MAX_RETRIES": "1", "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "131072",
         "ENABLE_TOOL_SEARCH": "false"}
KEPT_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR")


def install() -> Path:
    """The ``claude`` executable, installed into the cache unless a complete install is
    there."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: Node 20+ with npm runs the Claude Code tests")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(FOLDER.with_name(FOLDER.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (FOLDER / ".installed").exists():
            return EXECUTABLE
        try:
            reachable = subprocess.run(["npm", "ping"], capture_output=True,
                                       timeout=60).returncode == 0
        except subprocess.TimeoutExpired:
            reachable = False
        if not reachable:
            pytest.skip(f"the npm registry is unreachable (npm ping failed): cannot install "
                        f"{PACKAGE}@{VERSION}")
        shutil.rmtree(FOLDER, ignore_errors=True)
        done = subprocess.run(["npm", "install", "--prefix", str(FOLDER), "--no-audit",
                               "--no-fund", "--no-save", "--loglevel=error",
                               f"{PACKAGE}@{VERSION}"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not EXECUTABLE.exists():
            pytest.fail(f"npm install {PACKAGE}@{VERSION} failed ({done.returncode}):\n"
                        f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
        (FOLDER / ".installed").touch()
    return EXECUTABLE


def run_claude(executable: Path, prompt: str, *, base_url: str, model: str, home: Path,
               cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``claude -p PROMPT`` against ``base_url`` with Bash and Read allowed."""
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env.update(QUIET, HOME=str(home), ANTHROPIC_BASE_URL=base_url, ANTHROPIC_MODEL=model,
               ANTHROPIC_AUTH_TOKEN="sk-ant-test-token-not-for-upstream", CI="1",
               NO_COLOR="1", NO_PROXY="127.0.0.1,localhost")
    process = subprocess.Popen(
        [str(executable), "-p", prompt, "--allowedTools", "Bash", "Read"], cwd=cwd, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"claude -p ran over {timeout} s\nstdout:\n{stdout[-3000:]}\n"
                    f"stderr:\n{stderr[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # what it left behind (a shell) goes too
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
