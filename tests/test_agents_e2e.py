"""Real coding agents end to end: opencode and Cline CLI (pinned, from npm) run headless → the
real mitmdump with the addon → fake ``transformers serve`` answering by rule.

The model is a rule over the harmony prompt, not a queue: the agents send requests of their own
(opencode asks for a session title first). Each run gets a fresh HOME; the assertions read what
the CLI printed and what the proxy logged.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents import AGENTS, run_headless
from fakes import FakeTransformers
from harmony_rules import final, last_message, last_user_text, messages, tool_call, tool_names
from proxy_process import ProxyProcess

pytestmark = pytest.mark.agents

MODEL = "gpt-oss-20b"
RUN_TIMEOUT = 60
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SECRET = re.compile(r"SECRET-[0-9a-f]{32}")


@dataclass(frozen=True)
class AgentSetup:
    """How one CLI is pointed at the proxy and asked one thing headless."""

    name: str
    shell_tool: str  # the client's own tool that runs a command
    shell_arguments: dict[str, Any]
    configure: Callable[[Path, Path, str], None]  # (executable, home, base_url)
    command: Callable[[Path, str], list[str]]  # (home, prompt) -> arguments
    env: dict[str, str]


def configure_opencode(executable: Path, home: Path, base_url: str) -> None:
    """A custom OpenAI-compatible provider in the user's opencode.json."""
    config = {"$schema": "https://opencode.ai/config.json", "provider": {"gpt-oss-proxy": {
        "npm": "@ai-sdk/openai-compatible", "name": "gpt-oss-harmony-groq",
        "options": {"baseURL": base_url, "apiKey": "unused"},
        "models": {MODEL: {"name": MODEL}}}}}
    path = home / ".config" / "opencode" / "opencode.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(config, indent=2))


def cline_data(home: Path) -> str:
    # --data-dir is Cline's sandbox mode: state in one folder and the session run in-process
    # (otherwise a hub daemon on the fixed port 25463 outlives the run and serves later ones).
    return str(home / "cline-data")


def configure_cline(executable: Path, home: Path, base_url: str) -> None:
    """Cline's own auth command with the OpenAI-compatible provider."""
    done = run_headless(executable, ["auth", "--provider", "openai-compatible",
                                     "--apikey", "unused", "--modelid", MODEL,
                                     "--baseurl", base_url, "--data-dir", cline_data(home)],
                        home=home, cwd=home, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr


AGENT_SETUPS = [
    AgentSetup("opencode", "bash", {"command": "cat secret.txt", "description": "Print secret.txt"},
          configure_opencode,
          # as typed in a shell: opencode wraps an argument holding spaces in quotes
          lambda home, prompt: ["run", "-m", f"gpt-oss-proxy/{MODEL}", "--thinking",
                                *prompt.split()],
          # models.dev cannot be reached from here; opencode would try on every start
          {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1"}),
    AgentSetup("cline", "run_commands", {"commands": ["cat secret.txt"]}, configure_cline,
          lambda home, prompt: ["--data-dir", cline_data(home), prompt], {}),
]


@dataclass
class Answers:
    """What the scripted model says in one test: unique strings the CLI must show."""

    plain: str
    thinking: str
    title: str


def coding_model(agent: AgentSetup, answers: Answers) -> Callable[[str], str]:
    """gpt-oss in a coding agent: asked about secret.txt it calls the client's shell tool; shown
    a tool's output it quotes the secret found there; other questions get ``answers.plain``.
    A request without tools is one of the agent's own (opencode's title): it gets a title."""

    def rule(prompt: str) -> str:
        if agent.shell_tool not in tool_names(prompt):
            return final(answers.title, thinking="A short title.")
        last = last_message(prompt)
        if last.author == f"functions.{agent.shell_tool}":
            found = SECRET.search(last.content)
            return final(f"The secret line is {found.group() if found else 'missing'}.",
                         thinking=answers.thinking)
        if "secret.txt" in last_user_text(prompt):
            return tool_call(agent.shell_tool, agent.shell_arguments, thinking=answers.thinking)
        return final(answers.plain, thinking=answers.thinking)

    return rule


@dataclass
class AgentRun:
    stdout: str
    records: list[dict[str, Any]]  # this run's gpt-oss flows in the proxy's log


@pytest.fixture(params=AGENT_SETUPS, ids=lambda agent: agent.name)
def agent(request: pytest.FixtureRequest) -> AgentSetup:
    return request.param


@pytest.fixture()
def answers() -> Answers:
    token = secrets.token_hex(6)
    return Answers(f"PLAIN-{token}", f"THINKING-{token}", f"TITLE-{token}")


@pytest.fixture()
def run_agent(agent: AgentSetup, answers: Answers, agent_cli: Callable[[str], Path],
              proxy: ProxyProcess, fake_transformers: FakeTransformers, tmp_path: Path
              ) -> Callable[[str], AgentRun]:
    """Install the agent, configure it in a fresh HOME, then ``run_agent(prompt)`` runs it in
    ``tmp_path / "work"`` against the rule-driven model."""
    executable = agent_cli(agent.name)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    agent.configure(executable, home, proxy.base_url)
    fake_transformers.respond(coding_model(agent, answers))

    def run(prompt: str) -> AgentRun:
        before = proxy.log_mark()
        done = run_headless(executable, agent.command(home, prompt), home=home, cwd=work,
                            env=agent.env, timeout=RUN_TIMEOUT)
        output = ANSI.sub("", done.stdout)
        assert done.returncode == 0, f"stdout:\n{output}\nstderr:\n{done.stderr[-4000:]}"
        # Every prompt the model server got is one logged gpt-oss flow.
        wanted = before + len(fake_transformers.prompts)
        records = [r for r in proxy.log_records(wait_for=wanted)[before:]
                   if r["route"] == "gpt-oss"]
        assert len(records) == len(fake_transformers.prompts)
        assert [r["status"] for r in records] == [200] * len(records)
        return AgentRun(output, records)

    return run


def agent_requests(run: AgentRun, agent: AgentSetup) -> list[dict[str, Any]]:
    """The flows of the agent's main loop (those that offered its shell tool)."""
    return [r for r in run.records
            if agent.shell_tool in tool_names(r["prompt"])]


def test_plain_answer(agent: AgentSetup, answers: Answers, run_agent: Callable[[str], AgentRun]
                      ) -> None:
    run = run_agent("What is the word of the day?")
    assert answers.plain in run.stdout
    assert answers.thinking in run.stdout  # reasoning_content reached the client and is shown
    [request] = agent_requests(run, agent)
    assert last_user_text(request["prompt"]) == "What is the word of the day?"
    assert request["client_request"]["body"]["stream"] is True


def test_shell_tool_round_trip(agent: AgentSetup, run_agent: Callable[[str], AgentRun],
                               tmp_path: Path) -> None:
    secret = f"SECRET-{secrets.token_hex(16)}"
    (tmp_path / "work" / "secret.txt").write_text(f"{secret}\n")
    run = run_agent("Print the file secret.txt")
    assert f"The secret line is {secret}." in run.stdout
    asked, answered = agent_requests(run, agent)
    assert secret not in asked["prompt"]
    result = messages(answered["prompt"])[-1]
    assert (result.author, result.channel) == (f"functions.{agent.shell_tool}", "commentary")
    assert secret in result.content
    # The client sent its call back as the model wrote it, and its tool output as a tool message.
    history = answered["client_request"]["body"]["messages"]
    [call] = next(m for m in history if m.get("tool_calls"))["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == agent.shell_arguments
    assert secret in next(m for m in history if m["role"] == "tool")["content"]


@pytest.mark.parametrize("name", ["codex", "claude"])
def test_other_agent_clis_start(name: str, agent_cli: Callable[[str], Path],
                                tmp_path: Path) -> None:
    """The installer also serves the Codex and Claude Code tests: their binaries start."""
    done = run_headless(agent_cli(name), ["--version"], home=tmp_path, cwd=tmp_path, timeout=30)
    assert done.returncode == 0, done.stderr
    assert AGENTS[name].version in done.stdout
