"""The done-when of spill-over: real Codex, Claude Code and opencode sessions (pinned CLIs,
agents.py) go on without an error when the local model server stops mid-session, the proxy
spilling to (fake) Groq's gpt-oss twin with the open tool chain's reasoning."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import run_headless
from conftest import PINNED_DATE
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from harmony_rules import final, tool_call, tool_names
from proxy_process import ProxyProcess
from test_agents_e2e import AGENT_SETUPS, RUN_TIMEOUT
from test_claude_code import run as run_claude
from test_codex import run_codex

pytestmark = pytest.mark.agents


@pytest.fixture()
def stopping_local() -> Iterator[FakeTransformers]:
    """A local model server of this test's own, which the test stops mid-session."""
    server = FakeTransformers()
    server.stopped = False  # type: ignore[attr-defined]
    yield server
    if not server.stopped:  # type: ignore[attr-defined]
        server.close()


@pytest.fixture()
def spill_proxy(tmp_path: Path, stopping_local: FakeTransformers,
                groq_server: FakeGroq) -> Iterator[ProxyProcess]:
    (tmp_path / "proxy").mkdir()
    process = ProxyProcess(tmp_path / "proxy", upstream=stopping_local.url, options={
        "transformers_url": stopping_local.url, "groq_base_url": groq_server.base_url,
        "harmony_date": PINNED_DATE, "upstream_timeout": "5", "spillover": "down"},
        env={"GROQ_API_KEY": GROQ_KEY})
    yield process
    process.stop()


def stop_after_this_answer(server: FakeTransformers) -> None:
    """Stop listening before this answer goes out (it still reaches the proxy on its own
    connection): the client's next request finds the server down."""
    if not server.stopped:  # type: ignore[attr-defined]
        server.stopped = True  # type: ignore[attr-defined]
        server.close()


def groq_bodies(fake: FakeGroq) -> list[dict[str, Any]]:
    return [json.loads(r["raw"]) for r in fake.requests
            if r["path"] == "/openai/v1/chat/completions"]


def check_spilled_turn(body: dict[str, Any], secret: str, reasoning: str) -> None:
    """Groq got the twin, the tool's output, and the reasoning before the open call."""
    assert body["model"] == "openai/gpt-oss-20b" and body["stream"] is True
    calls = [m for m in body["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
    assert calls[-1]["reasoning"] == reasoning
    assert any(secret in json.dumps(m) for m in body["messages"] if m["role"] == "tool")


def test_codex_goes_on_at_groq_when_local_stops(agent_cli, spill_proxy: ProxyProcess,
                                                stopping_local: FakeTransformers,
                                                fake_groq: FakeGroq, tmp_path: Path) -> None:
    secret = f"SECRET-{secrets.token_hex(6)}"
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text(secret + "\n")

    def rule(prompt: str) -> str:
        stop_after_this_answer(stopping_local)
        return tool_call("exec_command", {"cmd": "cat notes.txt"}, "Read the file first.")

    stopping_local.respond(rule)
    stdout, _ = run_codex(agent_cli("codex"), spill_proxy, tmp_path, "What does notes.txt say?")
    assert stdout.strip().startswith("groq says:")
    assert len(stopping_local.prompts) == 1
    (body,) = groq_bodies(fake_groq)
    check_spilled_turn(body, secret, "Read the file first.")
    records = [r for r in spill_proxy.log_records(wait_for=spill_proxy.log_mark())
               if r.get("served_by")]
    assert [r["served_by"] for r in records][-2:] == ["local", "groq"]


def test_claude_code_goes_on_at_groq_when_local_stops(agent_cli, spill_proxy: ProxyProcess,
                                                      stopping_local: FakeTransformers,
                                                      fake_groq: FakeGroq,
                                                      tmp_path: Path) -> None:
    secret = f"kumquat-{secrets.token_hex(4)}"
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "hello.txt").write_text(f"hello {secret}\n")

    def rule(prompt: str) -> str:
        stop_after_this_answer(stopping_local)
        return tool_call("Bash", {"command": "cat hello.txt", "description": "Print it"},
                         "Use Bash.")

    stopping_local.respond(rule)
    out = run_claude(agent_cli("claude"), spill_proxy, tmp_path, "Print hello.txt")
    assert out.strip().startswith("groq says:")
    (body,) = groq_bodies(fake_groq)
    check_spilled_turn(body, secret, "Use Bash.")


def test_opencode_goes_on_at_groq_when_local_stops(agent_cli, spill_proxy: ProxyProcess,
                                                   stopping_local: FakeTransformers,
                                                   fake_groq: FakeGroq, tmp_path: Path) -> None:
    opencode = AGENT_SETUPS[0]
    secret = f"SECRET-{secrets.token_hex(16)}"
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "secret.txt").write_text(f"{secret}\n")
    executable = agent_cli("opencode")
    opencode.configure(executable, home, spill_proxy.base_url)

    def rule(prompt: str) -> str:
        if opencode.shell_tool not in tool_names(prompt):
            return final("A title", thinking="A short title.")  # opencode's own request
        stop_after_this_answer(stopping_local)
        return tool_call(opencode.shell_tool, opencode.shell_arguments, "Run it.")

    stopping_local.respond(rule)
    done = run_headless(executable, opencode.command(home, "Print the file secret.txt"),
                        home=home, cwd=work, env=opencode.env, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "groq says:" in done.stdout
    body = next(b for b in groq_bodies(fake_groq) if b.get("tools"))
    check_spilled_turn(body, secret, "Run it.")
