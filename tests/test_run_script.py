"""``./run.sh`` and ``./run.sh web`` with options of their own: an option the user gives replaces
run.sh's default for it, instead of mitmproxy stopping at "Received multiple values"."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import PINNED_DATE
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from proxy_process import LISTEN_RE, PrintedLines, terminate

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "run-script-test-password"
WEB_LISTENING = re.compile(r"Web server listening at http://127\.0\.0\.1:(\d+)/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunSh:
    """``./run.sh ARGS…`` in the foreground with the fakes as upstreams, on a free port."""

    def __init__(self, tmp: Path, args: list[str], transformers: FakeTransformers,
                 groq: FakeGroq, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("PROXY_API_KEY", "HTTP_PROXY", "HTTPS_PROXY")}
        full_env.update(HOST="127.0.0.1", PORT="0", TRANSFORMERS_URL=transformers.url,
                        GROQ_BASE_URL=groq.base_url, GROQ_API_KEY=GROQ_KEY,
                        HARMONY_DATE=PINNED_DATE, LOG_FILE=str(tmp / "flows.log"), **(env or {}))
        if sys.prefix != sys.base_prefix:  # the venv running the tests is the one to use
            full_env["VENV"] = sys.prefix
        (tmp / "confdir").mkdir()
        self.process = subprocess.Popen(
            [str(ROOT / "run.sh"), *args, "--set", f"confdir={tmp / 'confdir'}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, cwd=tmp)
        self.printed = PrintedLines(self.process, "./run.sh")
        self.wait_for = self.printed.wait_for
        self.port = int(self.wait_for(LISTEN_RE))

    def health(self) -> dict:
        response = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=10)
        assert response.status_code == 200
        return response.json()


@pytest.fixture()
def run_sh(tmp_path: Path, transformers_server: FakeTransformers, groq_server: FakeGroq
           ) -> Iterator:
    started: list[RunSh] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RunSh:
        workdir = tmp_path / f"r{len(started)}"
        workdir.mkdir()
        started.append(RunSh(workdir, list(args), transformers_server, groq_server, env))
        return started[-1]

    yield start
    for process in started:
        terminate(process.process)


def test_proxy_with_its_own_connection_strategy(run_sh, transformers_server: FakeTransformers
                                                ) -> None:
    proxy = run_sh("--set", "connection_strategy=eager")
    assert proxy.health()["groq"]["key_configured"] is True
    # Eager, not run.sh's lazy: the client's connection opened one to the reverse target,
    # though the addon answered /health itself.
    upstream = transformers_server.url.removeprefix("http://")
    deadline = time.monotonic() + 5
    while not any(f"server connect {upstream}" in line for line in proxy.printed.lines):
        assert time.monotonic() < deadline, "".join(proxy.printed.lines)
        time.sleep(0.05)


def test_web_with_its_own_port_and_columns(run_sh) -> None:
    web_port = free_port()
    web = run_sh("web", "--set", f"web_port={web_port}", "--set", f"web_password={PASSWORD}",
                 "--set=web_columns=path", "--set", "web_columns=comment",
                 env={"WEB_PORT": str(free_port())})  # the option beats run.sh's default
    assert web.wait_for(WEB_LISTENING) == str(web_port)
    assert web.health()["status"] == "ok"
    options = httpx.get(f"http://127.0.0.1:{web_port}/options", timeout=10,
                        headers={"Authorization": f"Bearer {PASSWORD}"}).json()
    assert options["web_columns"]["value"] == ["path", "comment"]
    assert options["connection_strategy"]["value"] == "lazy"  # run.sh's default, not given
    assert options["web_open_browser"]["value"] is False
    assert "run.sh: mitmweb UI at the web_port you set" in "".join(web.printed.lines)
