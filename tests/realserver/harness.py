"""Real ``transformers serve`` processes on tiny models, for the end-to-end tests.

The transformers venv comes from ``setup_env.sh`` (created once, then cached). The unprepared
tiny model is built once per version of ``build_tiny_model.py`` into ``tiny-models/`` inside
that venv (git-ignored, and gone with the venv whose torch built it); each test session then
runs the same ``harmony-groq-prepare`` command users run on it and writes the scripted copies
(cheap: symlinks plus one ``generation_config.json``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from cache_dir import file_lock

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SETUP_ENV = HERE / "setup_env.sh"
BUILDER = HERE / "build_tiny_model.py"


class RealServerSetupError(RuntimeError):
    """The real-server environment or models could not be made; the message says why."""


def _run(args: list[str | os.PathLike[str]], what: str, timeout: float,
         env: dict[str, str] | None = None) -> str:
    """Run a set-up command; its stdout, or RealServerSetupError with its output."""
    try:
        done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RealServerSetupError(f"{what} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise RealServerSetupError(
            f"{what} failed (exit {done.returncode}):\n{done.stderr[-4000:]}{done.stdout[-2000:]}"
        )
    return done.stdout


def ensure_env() -> Path:
    """The transformers venv, created by ``setup_env.sh`` if missing (minutes, once)."""
    out = _run(["bash", SETUP_ENV], "tests/realserver/setup_env.sh", timeout=1800)
    return Path(out.strip().splitlines()[-1])


def builder_key() -> str:
    """Cache key: the builder's content, so a changed model definition is rebuilt."""
    return hashlib.sha256(BUILDER.read_bytes()).hexdigest()[:16]


def cached_base_model(venv: Path) -> Path:
    """The unprepared tiny model, built once into ``<venv>/tiny-models/<builder hash>/base``."""
    folder = venv / "tiny-models" / builder_key()
    base = folder / "base"

    def built() -> bool:
        return (base / "model.safetensors").is_file() and (base / "tokenizer_config.json").is_file()

    if built():
        return base
    with file_lock(folder.with_name(folder.name + ".lock")):  # parallel workers build it once
        if built():
            return base
        tmp = folder / f".base.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _run([venv / "bin" / "python", BUILDER, tmp], "building the tiny model", timeout=300)
            shutil.rmtree(base, ignore_errors=True)
            os.replace(tmp, base)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return base


def prepare_command() -> str:
    """The ``harmony-groq-prepare`` console script of the interpreter running the tests."""
    from proxy_process import tool

    return tool("harmony-groq-prepare")


def prepare(source: Path, output: Path | None = None) -> Path:
    """Run the user's preparation command; the folder it prints on its last line."""
    args: list[str | os.PathLike[str]] = [prepare_command(), source]
    if output is not None:
        args += ["--output", output]
    out = _run(args, "harmony-groq-prepare", timeout=120)
    return Path(out.strip().splitlines()[-1])


def scripted_copy(venv: Path, base: Path, output: Path, script: str) -> Path:
    """A copy of ``base`` whose greedy answer is the builder's ``script`` ('final', 'tool')."""
    _run([venv / "bin" / "python", BUILDER, output, "--script", script, "--from", base],
         f"writing the {script!r} scripted model", timeout=120)
    return output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(hub_cache: Path) -> dict[str, str]:
    """Offline, loopback-only environment for ``transformers serve``."""
    hub_cache.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache), TOKENIZERS_PARALLELISM="false")
    return env


def health_problem(process: subprocess.Popen, url: str, timeout: float) -> str | None:
    """Poll ``url/health`` until it answers 200 (None), the process exits or time runs out
    (what happened, as words)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited ({process.returncode})"
        try:
            if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return f"not healthy after {timeout:.0f} s"


class TransformersServer:
    """``transformers serve MODEL --device cpu`` on a free loopback port (started at once)."""

    def __init__(self, venv: Path, model: Path, log_path: Path, hub_cache: Path) -> None:
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [str(venv / "bin" / "transformers"), "serve", str(model), "--host", "127.0.0.1",
                 "--port", str(self.port), "--device", "cpu"],
                stdout=log, stderr=subprocess.STDOUT, env=server_env(hub_cache),
                start_new_session=True,
            )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_healthy(self, timeout: float = 120) -> None:
        """Poll ``/health`` until 200; RealServerSetupError if it exits or never gets there."""
        problem = health_problem(self.process, self.url, timeout)
        if problem is not None:
            raise RealServerSetupError(f"transformers serve {self.model} {problem}:\n"
                                       + self.log_tail())

    def signal_stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 20) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def start_servers(venv: Path, models: dict[str, Path], logs: Path, hub_cache: Path
                  ) -> dict[str, TransformersServer]:
    """Start one server per model in parallel; return them once all are healthy."""
    servers = {name: TransformersServer(venv, model, logs / f"serve-{name}.log", hub_cache)
               for name, model in models.items()}
    try:
        for server in servers.values():
            server.wait_healthy()
    except BaseException:
        stop_servers(servers.values())
        raise
    return servers


def stop_servers(servers: Iterable[TransformersServer]) -> None:
    """Stop servers together: SIGTERM to all, then wait for each."""
    servers = list(servers)
    for server in servers:
        server.signal_stop()
    for server in servers:
        server.wait_stopped()
