"""The code sandbox itself (tools/sandbox.py, containers.py), with the real bubblewrap: state
kept in a container and absent from another, limits, escape attempts reported as the code's
own output, the pool's bound and idle end. The same through the proxy: test_code_execution_e2e."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from harmony_groq.tools.containers import ContainerPool, ContainersFull
from harmony_groq.tools.sandbox import SandboxLimits, problem

from debian import find_or_install_bwrap

LIMITS = SandboxLimits(timeout_s=3, memory_mb=512, max_processes=24, max_file_mb=16,
                       output_chars=2000)
UID_BASE = 210000


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    return find_or_install_bwrap()


def run(coroutine):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def in_one_container(*codes: str, limits: SandboxLimits = LIMITS) -> list:
    pool = ContainerPool(limits, UID_BASE, 4, 60)
    try:
        container = await pool.create()
        return [await container.execute(code) for code in codes]
    finally:
        await pool.close()


def test_self_test_passes_and_reports_a_missing_python() -> None:
    assert problem("bwrap", LIMITS, UID_BASE) is None
    assert problem("off", LIMITS, UID_BASE) == "CODE_SANDBOX=off"
    missing = SandboxLimits(python="/usr/bin/no-such-python3")
    assert "self-test failed" in problem("bwrap", missing, UID_BASE)


def test_state_is_kept_in_a_container_and_absent_from_another() -> None:
    async def scenario() -> tuple:
        pool = ContainerPool(LIMITS, UID_BASE, 4, 60)
        try:
            first, second = await pool.create(), await pool.create()
            await first.execute("x = 41\nopen('/mnt/data/kept.txt', 'w').write('file')")
            kept = await first.execute("print(x + 1, open('kept.txt').read())")
            other = await second.execute("print(open('/mnt/data/kept.txt').read())")
            missing = await second.execute("x")
            return kept, other, missing
        finally:
            await pool.close()

    kept, other, missing = run(scenario())
    assert (kept.stdout, kept.return_code) == ("42 file\n", 0)
    assert "FileNotFoundError" in other.stderr and other.return_code == 1
    assert "NameError: name 'x' is not defined" in missing.stderr


def test_a_last_expression_is_shown_and_silent_code_gets_the_reference_warning() -> None:
    shown, silent = run(in_one_container("6 * 7", "y = 1"))
    assert shown.text == "42"
    assert silent.text.startswith("[WARN] No output available")


def test_no_secret_no_proxy_files_no_root_no_writes_outside_mnt_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "gsk_sandbox_secret_0123456789"
    monkeypatch.setenv("GROQ_API_KEY", secret)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    flow_log = tmp_path / "flows.log"
    flow_log.write_text(f'{{"key": "{secret}"}}\n')
    outputs = run(in_one_container(
        "import os; print(sorted(os.environ))",
        "print(open('/proc/1/environ').read() == '', os.getuid(), os.geteuid())",
        f"print(open({str(flow_log)!r}).read())",
        "print(sorted(os.listdir('/')))",
        "open('/usr/evil', 'w')",
        "open('/evil', 'w')",
        "open('/mnt/data/fine.txt', 'w').write('ok')",
    ))
    texts = [output.text for output in outputs]
    assert all(secret not in text for text in texts)
    assert texts[0] == "['HOME', 'LANG', 'MPLBACKEND', 'PATH', 'PWD']"
    assert texts[1] == "True 65534 65534"
    assert "FileNotFoundError" in texts[2]
    assert "'home'" not in texts[3] and "'root'" not in texts[3] and "'work'" not in texts[3]
    assert "Read-only file system" in texts[4]
    assert "Errno" in texts[5] and outputs[5].return_code == 1
    assert texts[6] == "2"


def test_no_network_even_to_a_listening_loopback_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        [output] = run(in_one_container(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"))
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the proxy's loopback
    assert output.return_code == 1
    assert "ConnectionRefusedError" in output.stderr or "OSError" in output.stderr


def test_limits_fork_bomb_memory_output_and_time() -> None:
    fork_bomb = ("import os, time\nn = 0\ntry:\n    while n < 10000:\n        if os.fork() == 0:"
                 "\n            time.sleep(2)\n            os._exit(0)\n        n += 1\n"
                 "except OSError as error:\n    print('stopped after', n, error.errno)")
    started = time.monotonic()
    outputs = run(in_one_container(
        "kept = 'yes'", fork_bomb, "b = bytearray(3 * 1024 ** 3)", "print('x' * (100 * 2 ** 20))",
        "while True:\n    pass", "print(kept)"))
    bomb, memory, flood, loop, after = outputs[1:]
    assert bomb.stdout.startswith("stopped after") and bomb.stdout.split()[-1] == "11"  # EAGAIN
    assert int(bomb.stdout.split()[2]) < LIMITS.max_processes
    assert "MemoryError" in memory.stderr
    assert len(flood.stdout) == LIMITS.output_chars and "File too large" in flood.stderr
    assert "[stdout truncated: 16777216 bytes in all" in flood.note
    assert loop.timed_out and "timed out after 3 s; the container's state is kept" in loop.text
    assert after.stdout == "yes\n"  # the same kernel goes on
    assert time.monotonic() - started < 20


def test_code_that_ignores_the_timeout_ends_its_container() -> None:
    stubborn = ("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                "while True:\n    pass")
    ignored, after = run(in_one_container(stubborn, "print(1)"))
    assert ignored.timed_out and "the container was ended, its state is lost" in ignored.text
    assert "the container has stopped" in after.text


def test_the_pool_is_bounded_oldest_idle_first_and_idle_containers_end() -> None:
    async def scenario() -> tuple:
        pool = ContainerPool(LIMITS, UID_BASE, 2, 1)
        try:
            first = await pool.create()
            await asyncio.sleep(0.05)
            second = await pool.create()
            await second.execute("1")  # the second was used last
            third = await pool.create()
            live_after_bound = {c for c in (first, second, third) if c.alive}
            busy = asyncio.create_task(second.execute("import time; time.sleep(2)"))
            await asyncio.sleep(0.3)
            fourth = await pool.create()  # the idle third ends, not the busy second
            await busy
            try:
                busy_again = asyncio.create_task(second.execute("import time; time.sleep(1)"))
                other = asyncio.create_task(fourth.execute("import time; time.sleep(1)"))
                await asyncio.sleep(0.2)
                await pool.create()
                full = None
            except ContainersFull as error:
                full = str(error)
            await asyncio.gather(busy_again, other)
            await asyncio.sleep(1.2)
            await pool.expire()
            return live_after_bound, (first, second, third, fourth), full, len(pool)
        finally:
            await pool.close()

    live_after_bound, (first, second, third, fourth), full, left = run(scenario())
    assert live_after_bound == {second, third}
    assert not third.alive and not fourth.alive and not second.alive
    assert full == "all 2 code containers are busy"
    assert left == 0


def test_sandbox_processes_never_run_as_root_outside() -> None:
    if os.geteuid() != 0:
        pytest.skip("outside uids are assigned only when the proxy runs as root")

    async def scenario() -> set[int]:
        pool = ContainerPool(LIMITS, UID_BASE, 4, 60)
        try:
            container = await pool.create()
            await container.execute("import time")
            kernel_pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            uids = set()
            for pid in kernel_pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"stateful notebook" in cmdline:  # bwrap and the kernel (its source)
                    uids.add(int(status.split("Uid:")[1].split()[0]))
            return uids
        finally:
            await pool.close()

    uids = run(scenario())
    assert uids and 0 not in uids and all(uid > UID_BASE for uid in uids)
