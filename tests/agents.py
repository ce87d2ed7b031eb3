"""Real agent CLIs from the npm registry, installed once and run headless against the proxy.

Each CLI is pinned here (one place) and installed with ``npm install --prefix`` into
``~/.cache/gpt-oss-harmony-groq/agents/<package>@<version>/``, which later sessions reuse. A
lock file next to that folder makes concurrent sessions (other worktrees, several test files)
install it once. Tests are skipped only when the npm registry cannot be reached; any other
install failure fails them, since a pinned version that stopped installing is news.

Runs happen in a fresh HOME with XDG folders under it, no inherited API keys or proxies, npm
in offline mode (opencode installs its plugin package in the background on every start), a hard
timeout, and every process still carrying that HOME killed at the end: agents spawn shells and
daemons (Cline's hub daemon detaches into its own session) and ignore SIGTERM (Cline does).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from cache_dir import CACHE_ROOT, file_lock

CACHE = CACHE_ROOT / "agents"
INSTALL_TIMEOUT = 600
# Inherited variables that would point a CLI at a real service or the real home.
DROPPED_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
               "GROQ_API_KEY", "PROXY_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
               "https_proxy", "ALL_PROXY", "all_proxy", "CLINE_DIR", "CODEX_HOME",
               "CLAUDE_CONFIG_DIR", "OPENCODE_CONFIG", "OPENCODE_CONFIG_DIR")


@dataclass(frozen=True)
class Agent:
    """One pinned npm package and the executable it provides."""

    package: str
    version: str
    binary: str

    @property
    def folder(self) -> Path:
        return CACHE / f"{self.package.replace('/', '+')}@{self.version}"

    @property
    def executable(self) -> Path:
        return self.folder / "node_modules" / ".bin" / self.binary


AGENTS = {
    "opencode": Agent("opencode-ai", "1.18.33", "opencode"),
    "cline": Agent("cline", "3.0.65", "cline"),
    "codex": Agent("@openai/codex", "0.171.0", "codex"),
    "claude": Agent("@anthropic-ai/claude-code", "2.1.332", "claude"),
}


def registry_reachable() -> bool:
    """``npm ping`` with npm's own registry and proxy settings, without its retries (they
    take 70 s to give up on a refused connection)."""
    try:
        return subprocess.run(["npm", "ping", "--fetch-retries=0", "--fetch-timeout=20000"],
                              capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def install(agent: Agent) -> Path:
    """The agent's executable, installed into the cache unless a complete install is there."""
    stamp = agent.folder / ".installed"
    # a second session waits here, then finds the stamp
    with file_lock(agent.folder.with_name(agent.folder.name + ".lock")):
        if stamp.exists():
            return agent.executable
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed (Node 20+ with npm runs the agent CLI tests)")
        if not registry_reachable():
            pytest.skip(f"the npm registry is unreachable, cannot install "
                        f"{agent.package}@{agent.version} (npm ping failed)")
        shutil.rmtree(agent.folder, ignore_errors=True)  # a half-finished earlier attempt
        try:
            done = subprocess.run(
                ["npm", "install", "--prefix", str(agent.folder), "--no-audit", "--no-fund",
                 "--no-save", "--loglevel=error", f"{agent.package}@{agent.version}"],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm install {agent.package}@{agent.version} took over "
                        f"{INSTALL_TIMEOUT} s")
        if done.returncode != 0 or not agent.executable.exists():
            pytest.fail(f"npm install {agent.package}@{agent.version} failed "
                        f"(exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
        stamp.touch()
    return agent.executable


def isolated_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment with HOME and the XDG folders moved under ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    xdg = {"XDG_CONFIG_HOME": ".config", "XDG_DATA_HOME": ".local/share",
           "XDG_STATE_HOME": ".local/state", "XDG_CACHE_HOME": ".cache"}
    for name, relative in xdg.items():
        (home / relative).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / relative)
    env.update(HOME=str(home), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               NO_COLOR="1", TERM="dumb", npm_config_offline="true")
    env.update(extra or {})
    return env


def run_headless(executable: Path, args: list[str], *, home: Path, cwd: Path,
                 env: Mapping[str, str] | None = None, timeout: float = 60,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a CLI without a terminal (its own session: no controlling tty to open); fails the
    test with its output when it overruns."""
    # PWD too: opencode takes its project folder from it, not from the working directory.
    env = {"PWD": str(cwd), **(env or {})}
    process = subprocess.Popen([str(executable), *args], cwd=cwd, env=isolated_env(home, env),
                               stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_processes_of(home)
        stdout, stderr = process.communicate()
        pytest.fail(f"{executable.name} {' '.join(args)} ran over {timeout} s\n"
                    f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}")
    finally:
        kill_processes_of(home)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def kill_processes_of(home: Path) -> None:
    """SIGKILL every process whose environment has ``HOME=home``: only runs of this module
    have that (a fresh temporary folder), whatever process group they moved to."""
    marker = f"HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass  # gone meanwhile, or another user's process
