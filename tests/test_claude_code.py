"""The real Claude Code CLI (pinned, from npm) headless through the real proxy: a plain answer,
a Bash round trip, a Read round trip on gpt-oss (a scripted model server answering each
prompt by a rule), and a Groq model (fake Groq).

Claude Code runs without its non-streaming fallback (``QUIET``), so a stream it
cannot use fails the test instead of being papered over by a ``stream: false`` retry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents import run_headless
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from harmony_rules import final, last_message, tool_call
from proxy_process import ProxyProcess

MARKER = "kumquat-7f3a"
# Headless, quiet and strict: nothing but /v1/messages leaves the CLI (no telemetry, update
# checks or api.anthropic.com), no stream:false fallback to hide a broken stream, one retry.
QUIET = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
         "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
         "CLAUDE_CODE_MAX_RETRIES": "1", "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "131072",
         "ENABLE_TOOL_SEARCH": "false"}


@pytest.fixture()
def claude(agent_cli) -> Path:
    return agent_cli("claude")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "hello.txt").write_text(f"hello {MARKER}\n")
    return tmp_path


def run(claude: Path, proxy: ProxyProcess, workdir: Path, prompt: str,
        model: str = "gpt-oss-20b") -> str:
    """``claude -p PROMPT`` against the proxy with Bash and Read allowed."""
    done = run_headless(claude, ["-p", prompt, "--allowedTools", "Bash", "Read"],
                        home=workdir / "home", cwd=workdir / "work", timeout=90,
                        env={**QUIET, "ANTHROPIC_BASE_URL": proxy.root_url,
                             "ANTHROPIC_MODEL": model,
                             "ANTHROPIC_AUTH_TOKEN": "sk-ant-test-token-not-for-upstream"})
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_plain_answer(claude: Path, proxy: ProxyProcess, workdir: Path,
                      fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(lambda prompt: final(f"The answer is {MARKER}.", "Answer now."))
    out = run(claude, proxy, workdir, "What is the answer?")
    assert out.strip() == f"The answer is {MARKER}."
    prompt = fake_transformers.prompts[0]
    assert "What is the answer?" in prompt and "x-anthropic-billing-header" not in prompt
    assert "type Bash = " in prompt and "type Read = " in prompt
    assert all(json.loads(r["raw"])["stream"] for r in fake_transformers.requests)


def test_bash_round_trip(claude: Path, proxy: ProxyProcess, workdir: Path,
                         fake_transformers: FakeTransformers) -> None:
    def rule(prompt: str) -> str:
        last = last_message(prompt)
        if last.author == "functions.Bash":
            return final(f"The file says: {last.content.strip()}")
        return tool_call("Bash", {"command": "cat hello.txt", "description": "Print it"},
                         "Use Bash.")

    fake_transformers.respond(rule)
    out = run(claude, proxy, workdir, "Print hello.txt")
    assert f"The file says: hello {MARKER}" in out
    # The call came back after its reasoning (the thinking block Claude Code echoed).
    assert ("<|channel|>analysis<|message|>Use Bash.<|end|><|start|>assistant to=functions.Bash"
            "<|channel|>commentary json<|message|>") in fake_transformers.prompts[-1]


def test_read_round_trip(claude: Path, proxy: ProxyProcess, workdir: Path,
                         fake_transformers: FakeTransformers) -> None:
    path = workdir / "work" / "hello.txt"

    def rule(prompt: str) -> str:
        last = last_message(prompt)
        if last.author == "functions.Read":
            return final(f"Read gave: {last.content.strip()}")
        return tool_call("Read", {"file_path": str(path)})

    fake_transformers.respond(rule)
    out = run(claude, proxy, workdir, "Read hello.txt")
    assert "Read gave:" in out and f"hello {MARKER}" in out


def test_groq_model(claude: Path, proxy: ProxyProcess, workdir: Path,
                    fake_groq: FakeGroq) -> None:
    out = run(claude, proxy, workdir, f"Say {MARKER}", model="llama-3.3-70b-versatile")
    assert out.startswith("groq says:") and f"Say {MARKER}" in out
    sent = [r for r in fake_groq.requests if r["path"].endswith("/chat/completions")]
    body = json.loads(sent[0]["raw"])
    assert body["model"] == "llama-3.3-70b-versatile" and body["stream"] is True
    assert {tool["function"]["name"] for tool in body["tools"]} >= {"Bash", "Read"}
    headers = {name.lower(): value for name, value in sent[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {GROQ_KEY}"
