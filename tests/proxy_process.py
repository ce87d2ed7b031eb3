"""Start the real ``mitmdump`` (or ``mitmweb``) with the real addon as a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addons" / "harmony.py"
LISTEN_RE = re.compile(r"listening at (?:\*|[\d.]+):(\d+)")
# How long a child process may take to start: a guard against hangs, not a performance check.
# Python with mitmproxy starts in seconds, but in tens of seconds on a loaded machine (parallel
# workers, other jobs; a shared 2-core machine was seen at 35 s).
START_TIMEOUT = 120


def tool(name: str) -> str:
    """The mitmproxy executable of the interpreter running the tests."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


class ProxyProcess:
    """A running proxy: ``base_url`` is the OpenAI base URL (``…/v1``)."""

    def __init__(self, tmp: Path, *, upstream: str, options: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, mode: str | None = None,
                 program: str = "mitmdump", extra_args: list[str] | None = None,
                 script: Path = ADDON) -> None:
        self.tmp = tmp
        # Each option once: mitmdump silently ignores the script's deferred options when one
        # is given twice.
        options = {"log_file": str(tmp / "flows.log"), **(options or {})}
        self.log_path = Path(options["log_file"])
        confdir = tmp / "confdir"
        confdir.mkdir(exist_ok=True)
        self.output: list[str] = []
        args = [
            tool(program), "-s", str(script),
            "--mode", mode or f"reverse:{upstream}@127.0.0.1:0",
            "--set", "connection_strategy=lazy",
            "--set", f"confdir={confdir}",
            "--set", "termlog_verbosity=info",
            "--set", "flow_detail=0",
        ]
        for name, value in options.items():
            args += ["--set", f"{name}={value}"]
        args += extra_args or []
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("GROQ_API_KEY", "PROXY_API_KEY", "HTTP_PROXY", "HTTPS_PROXY")}
        full_env.update(env or {})
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=full_env, cwd=tmp)
        self.port = self._wait_listening()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.root_url = f"http://127.0.0.1:{self.port}"
        if mode is None or mode.startswith("reverse"):
            self._wait_healthy()

    def _drain(self, found: threading.Event, port: list[int]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = LISTEN_RE.search(line)
            if match and not port:
                port.append(int(match.group(1)))
                found.set()
        found.set()

    def _wait_listening(self) -> int:
        found, port = threading.Event(), []
        threading.Thread(target=self._drain, args=(found, port), daemon=True).start()
        found.wait(START_TIMEOUT)
        if not port:
            self.stop()
            raise RuntimeError("proxy did not start:\n" + "".join(self.output))
        return port[0]

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("proxy exited:\n" + "".join(self.output))
            try:
                response = httpx.get(f"{self.root_url}/health", timeout=2)
                if response.status_code == 200 and "groq" in response.json():
                    return  # answered by the addon, not forwarded to the reverse target
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("proxy never became healthy:\n" + "".join(self.output))

    def log_records(self, wait_for: int = 0, timeout: float = 5) -> list[dict]:
        """The flow records in the log; waits until at least ``wait_for`` are there."""
        import json

        deadline = time.monotonic() + timeout
        while True:
            records = []
            if self.log_path.exists():
                for line in self.log_path.read_text().split("\n"):
                    if not line:
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:  # the writer thread is mid-line
                        continue
                    if record.get("event") == "flow":
                        records.append(record)
            if len(records) >= wait_for or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def log_mark(self, timeout: float = 10) -> int:
        """How many flow records the log holds once every flow finished so far is in it.

        The log is written after each reply, in batches (``flowlog.BATCH_SECONDS``), so a count
        taken at once can miss the last flows' records. Records are written in the order the
        flows ended: a ``/health`` request marked with a fresh id is sent, and once its record
        is there, so are those of every flow before it."""
        import uuid

        mark = f"log-mark-{uuid.uuid4().hex}"
        httpx.get(f"{self.root_url}/health?{mark}", timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            records = self.log_records()
            at = next((i for i, r in enumerate(records) if mark in (r.get("path") or "")), None)
            if at is not None:
                return at + 1
            assert time.monotonic() < deadline, "the marked /health flow was never logged"
            time.sleep(0.05)

    def last_record(self, holding: str, count: int = 1, timeout: float = 5) -> dict:
        """The last flow record whose JSON holds ``holding``, once ``count`` such are written
        (the log is written after the reply went out, so the newest record may still be an
        earlier flow's)."""
        import json

        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.log_records() if holding in json.dumps(r)]
            if len(found) >= count or time.monotonic() > deadline:
                assert found, f"no flow record holds {holding!r}"
                return found[-1]
            time.sleep(0.05)

    def stop(self) -> int | None:
        return terminate(self.process)


def terminate(process: subprocess.Popen) -> int | None:
    """SIGTERM (mitmproxy shuts down cleanly on it), then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def run_to_exit(tmp: Path, args: list[str], env: dict[str, str] | None = None,
                timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
    """Run mitmdump with the addon expecting it to exit (bad settings)."""
    confdir = tmp / "confdir"
    confdir.mkdir(exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k not in ("GROQ_API_KEY", "PROXY_API_KEY")}
    full_env.update(env or {})
    return subprocess.run([tool("mitmdump"), "-s", str(ADDON), "--set", f"confdir={confdir}",
                           "--set", "connection_strategy=lazy", *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=tmp)


class PrintedLines:
    """What a child process prints, drained by a thread, and a wait for a line matching a
    pattern (its first group returned)."""

    def __init__(self, process: subprocess.Popen, what: str) -> None:
        self.process, self.what = process, what
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := pattern.search(line):
                    return match.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.what} never printed {pattern.pattern!r}:\n"
                             + "".join(self.lines))
