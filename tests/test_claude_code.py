"""The real Claude Code CLI (pinned, from npm) headless through the real proxy: a plain answer,
a Bash round trip, a Read round trip on gpt-oss (a scripted model server answering each
prompt by a rule), and a Groq model (fake Groq).

Claude Code runs without its non-streaming fallback (``claude_cli.QUIET``), so a stream it
cannot use fails the test instead of being papered over by a ``stream: false`` retry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from claude_cli import install, run_claude

from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from proxy_process import ProxyProcess

MARKER = "kumquat-7f3a"


@pytest.fixture(scope="module")
def claude() -> Path:
    return install()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "hello.txt").write_text(f"hello {MARKER}\n")
    return tmp_path


def final(answer: str) -> str:
    return (f"<|channel|>analysis<|message|>Answer now.<|end|><|start|>assistant"
            f"<|channel|>final<|message|>{answer}<|return|>")


def tool_call(name: str, arguments: dict[str, Any]) -> str:
    return (f"<|channel|>analysis<|message|>Use {name}.<|end|><|start|>assistant"
            f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
            f"{json.dumps(arguments)}<|call|>")


def last_message(prompt: str) -> tuple[str, str]:
    """The header and text of the prompt's last message, before the reply starts."""
    body = prompt.removesuffix("<|start|>assistant")
    header, _, text = body[body.rindex("<|start|>") + len("<|start|>"):].partition(
        "<|message|>")
    return header, text.removesuffix("<|end|>")


def run(claude: Path, proxy: ProxyProcess, workdir: Path, prompt: str,
        model: str = "gpt-oss-20b") -> str:
    done = run_claude(claude, prompt, base_url=proxy.root_url, model=model,
                      home=workdir / "home", cwd=workdir / "work")
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_plain_answer(claude: Path, proxy: ProxyProcess, workdir: Path,
                      fake_transformers: FakeTransformers) -> None:
    fake_transformers.respond(lambda prompt: final(f"The answer is {MARKER}."))
    out = run(claude, proxy, workdir, "What is the answer?")
    assert out.strip() == f"The answer is {MARKER}."
    prompt = fake_transformers.prompts[0]
    assert "What is the answer?" in prompt and "x-anthropic-billing-header" not in prompt
    assert "type Bash = " in prompt and "type Read = " in prompt
    assert all(json.loads(r["raw"])["stream"] for r in fake_transformers.requests)


def test_bash_round_trip(claude: Path, proxy: ProxyProcess, workdir: Path,
                         fake_transformers: FakeTransformers) -> None:
    def rule(prompt: str) -> str:
        header, text = last_message(prompt)
        if header.startswith("functions.Bash"):
            return final(f"The file says: {text.strip()}")
        return tool_call("Bash", {"command": "cat hello.txt", "description": "Print it"})

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
        header, text = last_message(prompt)
        if header.startswith("functions.Read"):
            return final(f"Read gave: {text.strip()}")
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
