"""A real ``redis-server`` on a free loopback port, without persistence, for the state store
tests; Debian's ``redis-server`` package is installed with apt-get when missing (a fresh CI
machine runs as root), otherwise the tests that need it are skipped with the command to run."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from debian import find_or_install
from proxy_process import terminate

PASSWORD = "store-secret-Pa55word"  # every test server requires it: it must never be shown


def find_or_install_redis() -> str:
    return find_or_install("redis-server", ("redis-server",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """``start``/``kill``/``start`` again on the same port: what a crash and a restart do."""

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable, self.workdir = executable, workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://default:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.executable, "--bind", "127.0.0.1", "--port", str(self.port),
             "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(f"AUTH {PASSWORD}\r\nPING\r\n".encode())
                    if b"PONG" in sock.recv(100):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def version(self) -> str:
        done = subprocess.run([self.executable, "--version"], capture_output=True, text=True,
                              timeout=10)
        return done.stdout.split(" v=", 1)[-1].split(" ", 1)[0]

    def kill(self) -> None:
        """SIGKILL: the store is gone mid-run, with everything in it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
