"""The real Codex CLI (npm ``@openai/codex``, pinned in agents.py) run headless (``codex exec``)
against the real mitmdump and a rule-driven model server: Codex speaks only the Responses API.

Codex's config is the one docs/clients.md gives users: a custom provider whose ``base_url`` is the
proxy, ``model_catalog_url`` for the gpt-oss catalog (context window, freeform ``apply_patch``),
and the settings that keep it offline.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from harmony_groq.local import CODEX_INSTRUCTIONS

from agents import run_headless
from fakes import FakeGroq, FakeTransformers
from harmony_rules import final, last_message, tool_call, tool_names
from proxy_process import ProxyProcess

CONFIG = """\
model = "{model}"
model_provider = "proxy"
check_for_update_on_startup = false
web_search = "disabled"

[model_providers.proxy]
name = "gpt-oss-harmony-groq"
base_url = "{base_url}"
env_key = "PROXY_KEY"
wire_api = "responses"
model_catalog_url = "{base_url}/models"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false
[features]
plugins = false
goals = false
[agents]
enabled = false
[skills.bundled]
enabled = false
"""


@pytest.fixture()
def codex(agent_cli) -> Path:
    return agent_cli("codex")


def run_codex(codex: Path, proxy: ProxyProcess, tmp_path: Path, prompt: str,
              model: str = "gpt-oss-20b", succeeds: bool = True) -> tuple[str, str]:
    """``codex exec`` in a fresh CODEX_HOME; its stdout is the final answer only
    (``succeeds``: whether it must exit 0, or fail)."""
    home, work = tmp_path / "home", tmp_path / "work"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(CONFIG.format(model=model,
                                                          base_url=proxy.base_url))
    # Codex's own command sandbox is off: its workspace-write mode wraps every command in the
    # system's bwrap when bubblewrap is installed (the code-execution tests install it), and
    # the npm build then fails each command ("bwrap: execvp codex-linux-sandbox: No such file
    # or directory", exit 1), while without bwrap it uses its Landlock helper and works. These
    # tests are about the proxy, not Codex's sandbox; the commands are the fake model's own
    # (cat, apply_patch) in this test's temporary work folder, so they run the same either way.
    done = run_headless(codex, ["exec", "--skip-git-repo-check", "--ephemeral",
                                "-s", "danger-full-access", prompt],
                        home=home, cwd=work, timeout=90,
                        env={"CODEX_HOME": str(codex_home), "PROXY_KEY": "sk-codex-client"})
    assert (done.returncode == 0) is succeeds, \
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    return done.stdout, done.stderr


def test_model_server_closing_before_answering_is_a_json_error(
        codex: Path, proxy: ProxyProcess, fake_transformers: FakeTransformers,
        tmp_path: Path) -> None:
    """Issue #28's note: a rule of the fake model server raised, the server closed the
    connection, and Codex printed ``unexpected status 502 Bad Gateway: <html>…``. Now Codex
    reads the Responses API's JSON error (after the proxy's one retry on a fresh connection)."""
    def rule(prompt: str) -> str:
        raise RuntimeError("the rule failed")

    fake_transformers.respond(rule)
    stdout, stderr = run_codex(codex, proxy, tmp_path, "Say something.", succeeds=False)
    printed = stdout + stderr
    assert "<html" not in printed and "Bad Gateway</" not in printed
    assert "closed the connection before answering" in printed, printed[-4000:]


def test_plain_answer(codex: Path, proxy: ProxyProcess, fake_transformers: FakeTransformers,
                      tmp_path: Path) -> None:
    answer = f"PLAIN-{secrets.token_hex(4)}"
    fake_transformers.respond(lambda prompt: final(answer))
    stdout, _ = run_codex(codex, proxy, tmp_path, "Say something.")
    assert stdout.strip() == answer
    prompt = fake_transformers.prompts[-1]
    assert "Say something." in prompt and "<|start|>developer" in prompt
    assert {"exec_command", "apply_patch"} <= set(tool_names(prompt))  # the catalog was read
    assert CODEX_INSTRUCTIONS in prompt  # its base prompt, as the developer instructions


def test_shell_round_trip(codex: Path, proxy: ProxyProcess,
                          fake_transformers: FakeTransformers, tmp_path: Path) -> None:
    secret = f"SECRET-{secrets.token_hex(6)}"
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text(secret + "\n")

    def rule(prompt: str) -> str:
        last = last_message(prompt)
        if last.author == "functions.exec_command":
            quoted = next(line for line in last.content.splitlines() if "SECRET-" in line)
            return final(f"The file says {quoted}.")
        return tool_call("exec_command", {"cmd": "cat notes.txt"}, "Read the file first.")

    fake_transformers.respond(rule)
    stdout, _ = run_codex(codex, proxy, tmp_path, "What does notes.txt say?")
    assert stdout.strip() == f"The file says {secret}."
    # The second turn rendered the tool's output, and Codex's echoed reasoning before the call.
    second = fake_transformers.prompts[-1]
    assert secret in second and "Read the file first." in second
    records = [r for r in proxy.log_records(wait_for=proxy.log_mark())
               if r.get("dialect") == "responses"]
    assert records[-1]["client_request"]["body"]["store"] is False


def test_apply_patch_edits_a_file(codex: Path, proxy: ProxyProcess,
                                  fake_transformers: FakeTransformers, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    target = tmp_path / "work" / "hello.txt"
    target.write_text("hello world\n")
    patch = ("*** Begin Patch\n*** Update File: hello.txt\n@@\n-hello world\n"
             "+hello patched world\n*** End Patch\n")

    def rule(prompt: str) -> str:
        if last_message(prompt).author == "functions.apply_patch":
            return final("PATCHED")
        return tool_call("apply_patch", {"input": patch}, "Edit the greeting.")

    fake_transformers.respond(rule)
    stdout, _ = run_codex(codex, proxy, tmp_path, "Change the greeting in hello.txt.")
    assert stdout.strip() == "PATCHED"
    assert target.read_text() == "hello patched world\n"
    # The patch went to Codex as a freeform custom_tool_call (the raw text, not JSON).
    answered = [r for r in proxy.log_records(wait_for=proxy.log_mark())
               if r.get("dialect") == "responses"]
    history = answered[-1]["client_request"]["body"]["input"]
    call = next(item for item in history if item.get("type") == "custom_tool_call")
    assert call["name"] == "apply_patch" and call["input"] == patch


def test_groq_model(codex: Path, proxy: ProxyProcess, fake_groq: FakeGroq,
                    tmp_path: Path) -> None:
    stdout, _ = run_codex(codex, proxy, tmp_path, "Hello Groq.",
                          model="llama-3.3-70b-versatile")
    assert stdout.strip() == "groq responses says: Hello Groq."
    sent = fake_groq.requests[-1]
    assert sent["path"] == "/openai/v1/responses"
    body = json.loads(sent["raw"])
    assert "client_metadata" not in body and "prompt_cache_key" not in body
    assert "sk-codex-client" not in json.dumps(sent["headers"])
