"""``./run.sh serve`` refusals, before anything starts (the full run: test_realserver_e2e.py).

A stand-in ``transformers`` executable is a script whose ``#!`` interpreter sees fake
``transformers-X.dist-info`` and ``torch-Y.dist-info`` on PYTHONPATH, so ``scripts/serve.sh``
reads versions X and Y from it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "scripts" / "serve.sh"


def fake_transformers(tmp_path: Path, version: str, torch: str = "2.8.0") -> dict[str, str]:
    """Environment with TRANSFORMERS_BIN = a stand-in claiming these versions."""
    site = tmp_path / "site"
    for name, number in (("transformers", version), ("torch", torch)):
        dist = site / f"{name}-{number}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {number}\n")
    binary = tmp_path / "bin" / "transformers"
    binary.parent.mkdir()
    binary.write_text(f"#!{sys.executable}\nraise SystemExit('must not be started')\n")
    binary.chmod(0o755)
    return {"TRANSFORMERS_BIN": str(binary), "PYTHONPATH": str(site)}


def run_serve(args: list[str], env: dict[str, str], tmp_path: Path
              ) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRANSFORMERS_VENV":
            str(tmp_path / "no-venv"), "TRANSFORMERS_URL": "http://127.0.0.1:8000"}
    return subprocess.run(["bash", str(SERVE), *args], capture_output=True, text=True,
                          timeout=60, env={**base, **env}, cwd=tmp_path)


def test_without_transformers_it_prints_the_install_commands(tmp_path: Path) -> None:
    done = run_serve(["some-model"], {}, tmp_path)
    assert done.returncode == 1
    assert "no `transformers` executable found" in done.stderr
    assert "pip install -U torch 'transformers[serving]>=5.6'" in done.stderr
    assert "TRANSFORMERS_BIN" in done.stderr


def test_too_old_transformers_is_refused_with_the_upgrade(tmp_path: Path) -> None:
    done = run_serve(["some-model"], fake_transformers(tmp_path, "5.5.0"), tmp_path)
    assert done.returncode == 1
    assert "transformers 5.5.0" in done.stderr and "too old" in done.stderr
    assert "-m pip install -U 'transformers[serving]>=5.6'" in done.stderr


def test_a_busy_port_is_refused_before_preparing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**fake_transformers(tmp_path, "5.24.0"),
               "TRANSFORMERS_URL": f"http://127.0.0.1:{port}"}
        done = run_serve([str(tmp_path / "model")], env, tmp_path)
    assert done.returncode == 1
    assert "transformers 5.24.0, torch 2.8.0" in done.stderr
    assert f"already listens on 127.0.0.1:{port}" in done.stderr
    assert "CPU-only" not in done.stderr


@pytest.mark.parametrize(("args", "warned"), [([], True), (["--device", "cpu"], False)])
def test_a_cpu_only_torch_is_pointed_out_unless_cpu_is_asked_for(
        tmp_path: Path, args: list[str], warned: bool) -> None:
    with socket.socket() as busy:  # stops the script right after the checks
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**fake_transformers(tmp_path, "5.24.0", torch="2.13.0+cpu"),
               "TRANSFORMERS_URL": f"http://127.0.0.1:{busy.getsockname()[1]}"}
        done = run_serve(["model", *args], env, tmp_path)
    assert done.returncode == 1 and "already listens" in done.stderr
    assert ("torch 2.13.0+cpu is a CPU-only build" in done.stderr) is warned


@pytest.mark.parametrize(("args", "env", "status", "message"), [
    ([], {}, 2, "no model given"),
    (["m"], {"TRANSFORMERS_URL": "https://gpu.example:8000"}, 1, "must be http://HOST:PORT"),
    (["m"], {"TRANSFORMERS_URL": "http://127.0.0.1:8000,http://127.0.0.1:8001"}, 1,
     "lists several replicas;\n./run.sh serve starts one model server"),
])
def test_bad_invocations_say_why(tmp_path: Path, args: list[str], env: dict[str, str],
                                 status: int, message: str) -> None:
    done = run_serve(args, env, tmp_path)
    assert done.returncode == status
    assert message in done.stderr


def test_model_can_come_from_the_environment(tmp_path: Path) -> None:
    """TRANSFORMERS_MODEL_PATH stands in for the argument (refused later, for a busy port)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**fake_transformers(tmp_path, "5.24.0"), "TRANSFORMERS_MODEL_PATH": "m",
               "TRANSFORMERS_URL": f"http://127.0.0.1:{busy.getsockname()[1]}"}
        done = run_serve(["--device", "cpu"], env, tmp_path)
    assert done.returncode == 1
    assert "no model given" not in done.stderr and "already listens" in done.stderr
