"""The real agent CLIs searching the web on local gpt-oss through the real mitmdump: Claude
Code's WebSearch (its side request whose only tool is ``web_search_20250305``) and Codex with
web search enabled. The fake model server is scripted to call harmony's browser; the search
engine is the SearXNG-shaped fake, the pages real HTML on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agents import run_headless
from fakes import FakeTransformers
from fakes_web import FakeSearxng, FakeWeb
from harmony_rules import browser_call, browser_declared, final, last_message, messages, tool_call
from proxy_process import ProxyProcess
from test_claude_code import QUIET
from test_codex import CONFIG
from test_websearch_e2e import searxng, searxng_server, tool_options, web  # noqa: F401

pytestmark = pytest.mark.agents
FORCED_SEARCH = "to=browser.search<|message|>"


@pytest.fixture()
def search_proxy(start_proxy: Callable[..., ProxyProcess], searxng: FakeSearxng  # noqa: F811
                 ) -> ProxyProcess:
    return start_proxy(tool_options(searxng))


def test_claude_code_web_search(agent_cli, search_proxy: ProxyProcess,
                                fake_transformers: FakeTransformers,
                                searxng: FakeSearxng, web: FakeWeb,  # noqa: F811
                                tmp_path: Path) -> None:
    """WebSearch's side request declares only the server tool (tool_choice auto in 2.1.332,
    forced in other versions: the proxy then prefills the call): the proxy runs harmony's
    browser and answers with server_tool_use + web_search_tool_result; Claude Code hands the
    links to the main model, which shows them."""
    def rule(prompt: str) -> str:
        if prompt.endswith(FORCED_SEARCH):  # the side request: the search call is prefilled
            return json.dumps({"query": "harmony response format"}) + "<|call|>"
        last = last_message(prompt)
        if last.author == "browser.search":
            return final("Two pages describe the harmony format.", "Summarise the results.")
        if browser_declared(prompt):  # the side request, with tool_choice auto
            return browser_call("search", {"query": "harmony response format"}, "Search.")
        if last.author == "functions.WebSearch":
            links = [line for line in last.content.splitlines() if "127.0.0.1" in line]
            return final("Sources:\n" + "\n".join(links), "Report the links.")
        return tool_call("WebSearch", {"query": "harmony response format"}, "Search the web.")

    fake_transformers.respond(rule)
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    done = run_headless(agent_cli("claude"),
                        ["-p", "Search the web for the harmony format",
                         "--allowedTools", "WebSearch"],
                        home=tmp_path / "home", cwd=tmp_path / "work", timeout=120,
                        env={**QUIET, "ANTHROPIC_BASE_URL": search_proxy.root_url,
                             "ANTHROPIC_MODEL": "gpt-oss-20b",
                             "ANTHROPIC_AUTH_TOKEN": "sk-ant-test-token-not-for-upstream"})
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    assert f"{web.url}/harmony" in done.stdout and f"{web.url}/tools" in done.stdout
    assert searxng.queries == ["harmony response format"]
    side = search_proxy.last_record('"web_search_20250305"')
    assert side["tool_steps"][0]["action"] == "search"
    assert side["tool_steps"][0]["backend"] == "searxng"


def test_codex_web_search(agent_cli, search_proxy: ProxyProcess,
                          fake_transformers: FakeTransformers, searxng: FakeSearxng,  # noqa: F811
                          web: FakeWeb, tmp_path: Path) -> None:  # noqa: F811
    """Codex with web search on: gpt-oss searches through the proxy, then runs a command;
    Codex's next request resends the web_search_call and is accepted."""
    def rule(prompt: str) -> str:
        authors = [m.author for m in messages(prompt)]
        if authors[-1] == "functions.exec_command":
            return final("Searched and listed.", "Done.")
        if authors[-1] == "browser.search":
            return tool_call("exec_command", {"cmd": "echo listed"}, "Now list.")
        return browser_call("search", {"query": "harmony format"}, "Search first.")

    fake_transformers.respond(rule)
    home, work = tmp_path / "home", tmp_path / "work"
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    work.mkdir()
    config = CONFIG.format(model="gpt-oss-20b", base_url=search_proxy.base_url)
    (codex_home / "config.toml").write_text(config.replace('web_search = "disabled"',
                                                           'web_search = "live"'))
    done = run_headless(agent_cli("codex"), ["exec", "--skip-git-repo-check", "--ephemeral",
                                             "-s", "workspace-write", "Search and list"],
                        home=home, cwd=work, timeout=120,
                        env={"CODEX_HOME": str(codex_home), "PROXY_KEY": "sk-codex-client"})
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    assert done.stdout.strip() == "Searched and listed."
    assert searxng.queries == ["harmony format"]
    bodies = [json.loads(r["raw"]) for r in fake_transformers.requests]
    assert len(bodies) == 3  # search step, the command call, the answer
    records = [r for r in search_proxy.log_records(wait_for=search_proxy.log_mark())
               if r.get("dialect") == "responses" and "client_request" in r]
    tools = records[0]["client_request"]["body"]["tools"]
    assert any(t.get("type") == "web_search" for t in tools)
    resent = [i for i in records[-1]["client_request"]["body"]["input"]
              if i.get("type") == "web_search_call"]
    assert resent  # Codex 0.171.0 resends it with its id and without action.sources
    assert resent[0]["action"]["query"] == "harmony format"
    replayed = fake_transformers.prompts[-1]
    assert "to=browser.search<|channel|>commentary" in replayed
    assert "Search results for `harmony format`" in replayed
