"""The sandbox model-written Python runs in: bubblewrap plus resource limits.

A proxy that a team shares must never run model code with its own rights (the Groq key is in
its environment, the flow log on its disk, model servers and Redis on its network). Each
container is one ``bwrap`` process tree with every namespace unshared (no network at all, its
own PID, IPC and UTS namespaces, no further user namespaces), only ``/usr`` mounted (read-only),
an empty environment, size-bounded tmpfs mounts as ``/mnt/data`` (working directory) and
``/tmp``, a non-root uid inside, and ``prlimit`` limits on address space, CPU time, processes,
file size and open files. When the proxy runs as root, each container also runs as its own
unprivileged uid outside (``CODE_SANDBOX_UID_BASE`` + slot), so its process limit counts only
its own processes and no container can touch another's. There is no cgroup: memory is bounded
per process (``RLIMIT_AS``) times the process limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SANDBOX_MODES = ("bwrap", "off")
KERNEL_SOURCE = (Path(__file__).parent / "kernel.py").read_text(encoding="utf-8")
INSIDE_UID = 65534  # "nobody" inside the sandbox's user namespace


@dataclass(frozen=True)
class SandboxLimits:
    """The limits one container runs under (each a setting, docs/server-tools.md)."""

    python: str = "/usr/bin/python3"
    timeout_s: int = 120  # wall time per call, as the model is told
    memory_mb: int = 1024  # address space per process
    cpu_s: int = 600  # CPU seconds per container, all calls together
    max_processes: int = 32
    max_file_mb: int = 64  # largest file the code may write (its captured output included)
    disk_mb: int = 256  # /mnt/data's tmpfs; /tmp gets max_file_mb * 2 + 16
    output_chars: int = 16000  # of stdout and of stderr, per call, before the note


def bwrap_command(limits: SandboxLimits) -> list[str]:
    """The command line of one container: prlimit, then bwrap, then the kernel."""
    mib = 1024 * 1024
    prlimit = [shutil.which("prlimit") or "prlimit", f"--as={limits.memory_mb * mib}",
               f"--cpu={limits.cpu_s}", f"--nproc={limits.max_processes}",
               f"--fsize={limits.max_file_mb * mib}",
               "--nofile=256", "--core=0", "--"]
    bwrap = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user",
             "--disable-userns", "--die-with-parent", "--new-session", "--clearenv",
             "--uid", str(INSIDE_UID), "--gid", str(INSIDE_UID),
             "--ro-bind", "/usr", "/usr",
             "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
             "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
             "--proc", "/proc", "--dev", "/dev",
             "--size", str(limits.disk_mb * mib), "--tmpfs", "/mnt/data",
             "--size", str((limits.max_file_mb * 2 + 16) * mib), "--tmpfs", "/tmp",
             "--remount-ro", "/", "--chdir", "/mnt/data",
             "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
             "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
             "--setenv", "MPLBACKEND", "Agg"]
    return [*prlimit, *bwrap, limits.python, "-I", "-u", "-c", KERNEL_SOURCE]


def outside_uid(base: int, slot: int) -> int | None:
    """The uid a container runs as outside: its own when the proxy is root, else the proxy's."""
    return base + slot if os.geteuid() == 0 else None


def problem(mode: str, limits: SandboxLimits, uid_base: int) -> str | None:
    """Why code execution cannot be offered (None: it can): the start-up self-test runs one
    container with the real command and checks that it is isolated as intended."""
    if mode == "off":
        return "CODE_SANDBOX=off"
    for tool in ("bwrap", "prlimit"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install bubblewrap util-linux)"
    if not limits.python.startswith("/usr/"):
        return f"CODE_PYTHON={limits.python} is outside /usr, the only tree the sandbox mounts"
    probe = ("import os, socket\n"
             "checks = [os.getuid() != 0, not os.environ.get('GROQ_API_KEY'),\n"
             "          open('/proc/1/environ').read() == '',\n"
             "          os.getcwd() == '/mnt/data', socket.if_nameindex() == [(1, 'lo')]]\n"
             "print('ok' if all(checks) else 'not isolated: %r' % checks)")
    request = json.dumps({"code": probe, "timeout": 10, "output_limit": 1000}) + "\n"
    uid = outside_uid(uid_base, 0)
    try:
        done = subprocess.run(bwrap_command(limits), input=request, capture_output=True,
                              text=True, timeout=20, cwd="/", env={}, user=uid, group=uid,
                              extra_groups=[] if uid is not None else None)
    except (OSError, subprocess.SubprocessError) as error:
        return f"the sandbox self-test could not run: {error}"
    answer = done.stdout.strip()
    if '"stdout": "ok\\n"' not in answer:
        detail = (done.stderr.strip() or answer or f"exit status {done.returncode}")[-300:]
        return f"the sandbox self-test failed: {detail}"
    return None

