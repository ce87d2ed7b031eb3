"""The agent installer's contract: a complete install is reused without npm, an unreachable
registry skips, any other install failure fails the test."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

import agents
from fakes import FakeNpmRegistry

pytestmark = [pytest.mark.agents,
              pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")]

MISSING = agents.Agent("no-such-agent-cli", "1.0.0", "no-such-agent")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(agents, "CACHE", tmp_path / "agents")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    return tmp_path / "agents"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_complete_install_is_reused_without_npm(cache: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # npm cannot even be found
    MISSING.executable.parent.mkdir(parents=True)
    (MISSING.folder / ".installed").touch()
    assert agents.install(MISSING) == MISSING.executable


def test_unreachable_registry_skips(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{closed_port()}/")
    with pytest.raises(pytest.skip.Exception, match="npm registry is unreachable"):
        agents.install(MISSING)


def test_failed_install_fails(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = FakeNpmRegistry()
    try:
        monkeypatch.setenv("npm_config_registry", registry.url + "/")
        with pytest.raises(pytest.fail.Exception, match="no-such-agent-cli@1.0.0 failed"):
            agents.install(MISSING)
    finally:
        registry.close()
    assert any(r["path"].startswith("/no-such-agent-cli") for r in registry.requests)
    assert not (MISSING.folder / ".installed").exists()
