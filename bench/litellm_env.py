"""LiteLLM's proxy as the comparison point: installed into its own venv, pointed at the fake.

LiteLLM is not a project dependency, so the benchmark installs it into ``.venv-litellm`` (once;
a stamp file records the spec). 1.106.12 is the newest release whose ``proxy`` extra resolves
from PyPI here (later ones need ``litellm-proxy-extras`` versions that are not published).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from httpclient import Target
from procs import Service

LITELLM_SPEC = "litellm[proxy]==1.106.12"
MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 2


def ensure_litellm(venv: Path) -> Path:
    """The ``litellm`` executable in ``venv``, installing it first if needed."""
    stamp = venv / (".installed-" + LITELLM_SPEC.replace("[", "-").replace("]", ""))
    if not stamp.exists():
        print(f"bench: installing {LITELLM_SPEC} into {venv} (once)", file=sys.stderr)
        try:
            if not (venv / "bin" / "python").exists():
                subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", LITELLM_SPEC], check=True)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"bench: installing {LITELLM_SPEC} failed ({exc}); run with "
                             "--no-litellm to benchmark without it") from None
        stamp.touch()
    return venv / "bin" / "litellm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_litellm(executable: Path, model: str, groq_base_url: str, api_key: str,
                  workdir: Path) -> tuple[Service, Target]:
    """LiteLLM with one openai-compatible model on the fake Groq; no access log, no DB."""
    config = {"model_list": [{"model_name": model, "litellm_params": {
        "model": f"openai/{model}", "api_base": groq_base_url, "api_key": api_key}}],
        "litellm_settings": {"telemetry": False}}
    (workdir / "litellm.yaml").write_text(json.dumps(config))  # JSON is YAML
    (workdir / "logging.json").write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "loggers": {"uvicorn.access": {"level": "WARNING"}}}))
    env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR", "NO_PROXY": "127.0.0.1,localhost"}
    port = free_port()
    service = Service("litellm", [str(executable), "--config", "litellm.yaml", "--host",
                                  "127.0.0.1", "--port", str(port), "--num_workers", "1",
                                  "--log_config", "logging.json"], env=env, cwd=workdir)

    def live() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1,
                             trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    service.wait_until(live, timeout=180)
    return service, Target("litellm", port, "/v1/chat/completions",
                           (("authorization", f"Bearer {MASTER_KEY}"),))
