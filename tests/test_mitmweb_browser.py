"""mitmweb as a person uses it: ``./run.sh web`` against the fakes, headless Chromium on its UI.

Chromium (Debian's ``chromium`` package) is installed with apt-get when missing; the test is
skipped, saying why, only when that is impossible. It is driven over the DevTools protocol on a
pipe (``--remote-debugging-pipe``: fd 3 in, fd 4 out, NUL-separated JSON), so no driver or
extra Python package is needed. Screenshots go to ``test-output/``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harmony_groq.redact import REDACTED
from harmony_groq.views import split_messages

from conftest import PINNED_DATE
from debian import find_or_install_chromium
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from proxy_process import PrintedLines, terminate

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
PASSWORD = "mitmweb-test-password"
PROXY_LISTENING = re.compile(r"listening at (?:\*|[\d.]+):(\d+)")
WEB_LISTENING = re.compile(r"Web server listening at (http://\S+)")
ANSWER = ("<|channel|>analysis<|message|>The user wants the weather in Paris; the tool said "
          "sunny.<|end|><|start|>assistant<|channel|>final<|message|>It is sunny in Paris.")
CHAT = [{"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 °C"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-pipe", "--window-size=1600,1000", "--hide-scrollbars")

    def __init__(self, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_browser, self._send = os.pipe()
        self._receive, from_browser = os.pipe()
        # The browser reads fd 3 and writes fd 4; the shell moves our ends there, from fds
        # above 9 so that neither move overwrites the other.
        to_browser, from_browser = (_high_fd(fd) for fd in (to_browser, from_browser))
        script = f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}'
        self.process = subprocess.Popen(
            ["bash", "-c", script, executable, *self.FLAGS, f"--user-data-dir={self.profile}",
             "about:blank"], pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.replies: dict[int, queue.Queue] = {}
        self.events: list[dict[str, Any]] = []
        self.last_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._receive, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                *messages, buffer = (buffer + chunk).split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message and message["id"] in self.replies:
                        self.replies[message["id"]].put(message)
                    elif "method" in message:
                        self.events.append(message)

    def call(self, method: str, *, in_page: bool = False, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        ident = self.last_id
        self.replies[ident] = queue.Queue()
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if in_page:
            message["sessionId"] = self.session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        try:
            reply = self.replies[ident].get(timeout=20)
        finally:
            del self.replies[ident]
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", in_page=True, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def click(self, element: str) -> None:
        """Click the middle of ``element`` (a JS expression) with real mouse events."""
        x, y = self.js(f"(() => {{ const e = {element}; e.scrollIntoView({{block: 'center'}});"
                       " const r = e.getBoundingClientRect();"
                       " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", in_page=True, type=kind, x=x, y=y,
                      button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", in_page=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(10)
        except (RuntimeError, queue.Empty, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
        os.close(self._send)
        shutil.rmtree(self.profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunShWeb:
    """``./run.sh web`` in the foreground, as a person starts it, with the fakes as upstreams."""

    def __init__(self, tmp: Path, transformers: FakeTransformers, groq: FakeGroq) -> None:
        self.web_port = free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in ("PROXY_API_KEY", "HTTP_PROXY", "HTTPS_PROXY")}
        env.update(HOST="127.0.0.1", PORT="0", WEB_PORT=str(self.web_port),
                   TRANSFORMERS_URL=transformers.url, GROQ_BASE_URL=groq.base_url,
                   GROQ_API_KEY=GROQ_KEY, HARMONY_DATE=PINNED_DATE,
                   LOG_FILE=str(tmp / "flows.log"))
        if sys.prefix != sys.base_prefix:  # the venv running the tests is the one to use
            env["VENV"] = sys.prefix
        (tmp / "confdir").mkdir()
        self.process = subprocess.Popen(
            [str(ROOT / "run.sh"), "web", "--set", f"confdir={tmp / 'confdir'}",
             "--set", f"web_password={PASSWORD}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
        self.printed = PrintedLines(self.process, "./run.sh web")
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.web_port}", timeout=10,
                                headers={"Authorization": f"Bearer {PASSWORD}"})
        try:
            self.proxy_port = int(self.printed.wait_for(PROXY_LISTENING, 60))
            self.web_url = self.printed.wait_for(WEB_LISTENING, 60)
        except AssertionError:
            self.stop()
            raise

    def flows(self) -> list[dict[str, Any]]:
        return self.api.get("/flows").raise_for_status().json()

    def stop(self) -> None:
        self.api.close()
        terminate(self.process)


@dataclass
class Session:
    """One mitmweb session: the UI open in Chromium, then the traffic a person would send."""

    web: RunShWeb
    browser: Chromium
    prompt: str
    answer: Any
    streamed: str
    groq: Any
    chats: list[dict[str, Any]]


def _send_traffic(web: RunShWeb, transformers: FakeTransformers) -> dict[str, Any]:
    """A gpt-oss request, a streamed one, and the same two to Groq, with the openai SDK."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{web.proxy_port}/v1",
                           api_key="sk-client-key-0123456789", max_retries=0, timeout=20)
    transformers.script(ANSWER, ANSWER)
    answer = client.chat.completions.create(model="gpt-oss-20b", messages=CHAT, tools=TOOLS)
    prompt = transformers.prompts[-1]
    chunks = client.chat.completions.create(model="gpt-oss-20b", messages=CHAT, tools=TOOLS,
                                            stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    groq = client.chat.completions.create(model="llama-3.3-70b-versatile",
                                          messages=[{"role": "user", "content": "hello groq"}])
    for _ in client.chat.completions.create(model="llama-3.3-70b-versatile", stream=True,
                                            messages=[{"role": "user", "content": "stream"}]):
        pass
    return {"prompt": prompt, "answer": answer, "streamed": streamed, "groq": groq}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (a fresh CI machine)."""
    return find_or_install_chromium()


@pytest.fixture(scope="module")
def session(chromium: str, tmp_path_factory: pytest.TempPathFactory,
            transformers_server: FakeTransformers, groq_server: FakeGroq) -> Iterator[Session]:
    transformers_server.reset_state()
    groq_server.reset_state()
    web = RunShWeb(tmp_path_factory.mktemp("mitmweb"), transformers_server, groq_server)
    browser = None
    try:
        browser = Chromium(chromium)
        browser.call("Network.enable", in_page=True)
        browser.call("Page.navigate", in_page=True, url=f"{web.web_url}?token={PASSWORD}")
        browser.wait_for("document.querySelector('.connection-indicator.established') !== null")
        sent = _send_traffic(web, transformers_server)
        deadline = time.monotonic() + 10
        chats: list[dict[str, Any]] = []
        while len(chats) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            chats = [f for f in web.flows() if f["comment"]]
        OUTPUT.mkdir(exist_ok=True)
        yield Session(web, browser, chats=chats, **sent)
    finally:
        if browser is not None:
            browser.close()
        web.stop()


DETAIL_TEXT = "document.querySelector('.flow-detail .contentview')?.innerText || ''"


def _open_flow(browser: Chromium, flow: dict[str, Any], tab: str, expect: str) -> str:
    """Click the flow's row in the list (found by its comment), then ``tab``; the body text."""
    comment = json.dumps(flow["comment"])
    browser.wait_for(f"document.body.innerText.includes({comment})")
    browser.click("[...document.querySelectorAll('.flow-table tbody tr')]"
                  f".find(r => r.innerText.includes({comment}))")
    browser.wait_for("document.querySelector('.flow-detail') !== null")
    browser.click("[...document.querySelectorAll('.flow-detail nav a')]"
                  f".find(a => a.innerText.trim() === {json.dumps(tab)})")
    browser.wait_for(f"({DETAIL_TEXT}).includes({json.dumps(expect)})")
    browser.js("document.querySelector('.flow-detail .contentview').scrollIntoView()")
    return browser.js(DETAIL_TEXT)


def test_run_sh_web_prints_the_ui_url(session: Session) -> None:
    web = session.web
    printed = "".join(web.printed.lines)
    assert f"run.sh: mitmweb UI at http://127.0.0.1:{web.web_port}/ " in printed
    assert web.web_url == f"http://127.0.0.1:{web.web_port}/"
    assert httpx.get(web.web_url, timeout=5).status_code == 403  # the UI needs the password


def test_flow_list_shows_route_model_status_tokens_and_ttft(session: Session) -> None:
    assert [f["marked"] for f in session.chats] == ["🤖", "🤖", "⚡", "⚡"]
    usage, groq = session.answer.usage, session.groq.usage
    expected = [
        f"gpt-oss · gpt-oss-20b · 200 · {usage.prompt_tokens}→{usage.completion_tokens} tok",
        "gpt-oss · gpt-oss-20b · 200 · ",
        f"groq · llama-3.3-70b-versatile · 200 · {groq.prompt_tokens}→{groq.completion_tokens} "
        "tok",
        "groq · llama-3.3-70b-versatile · 200 · ",
    ]
    for flow, start in zip(session.chats, expected, strict=True):
        assert flow["comment"].startswith(start)
        assert re.search(r" · TTFT \d+ ms$", flow["comment"])
    # The comment column that run.sh adds shows them in the list.
    table = session.browser.js("document.querySelector('.flow-table').innerText")
    assert all(flow["comment"] in table for flow in session.chats)


def test_harmony_view_shows_the_prompt_and_the_parsed_answer(session: Session) -> None:
    browser, gpt_oss = session.browser, session.chats[0]
    request = _open_flow(browser, gpt_oss, "Request", "HARMONY PROMPT")
    browser.screenshot(OUTPUT / "mitmweb-harmony-request.png")
    assert browser.js("document.querySelector('.flow-detail .contentview h5').innerText") \
        == "Harmony"
    for number, message in enumerate(split_messages(session.prompt), 1):
        assert f"── [{number}] {message.author}" in request
        for line in message.content.splitlines():
            assert line.strip() in request
    assert "to=functions.get_weather · channel=commentary · type=json" in request
    assert "What's the weather in Paris?" in request.split("OPENAI REQUEST FROM THE CLIENT")[1]

    response = _open_flow(browser, gpt_oss, "Response", "GENERATED MESSAGES")
    browser.screenshot(OUTPUT / "mitmweb-harmony-response.png")
    answer = session.answer.choices[0].message
    assert f"channel=final · no end token\n   {answer.content}" in response
    assert "channel=analysis\n   The user wants the weather in Paris" in response
    assert f'"content": "{answer.content}"' in response.split("OPENAI RESPONSE TO THE CLIENT")[1]


def test_streamed_flows_are_inspectable(session: Session) -> None:
    browser, streamed = session.browser, session.chats[1]
    text = _open_flow(browser, streamed, "Response", "streamed: ")
    browser.screenshot(OUTPUT / "mitmweb-harmony-streamed.png")
    assert "Content is missing" not in text
    assert f'"content": "{session.streamed}"' in text
    groq_stream = session.web.api.get(f"/flows/{session.chats[3]['id']}/response/content.data")
    assert groq_stream.status_code == 200 and groq_stream.text.endswith("data: [DONE]\n\n")


def _ui_texts(session: Session) -> list[str]:
    """Everything mitmweb's REST API gives a logged-in user about these flows."""
    api = session.web.api
    texts = [api.get(path).text for path in ("/flows", "/options", "/state", "/events")]
    for flow in session.chats:
        for side in ("request", "response"):
            texts.append(api.get(f"/flows/{flow['id']}/{side}/content/auto.json").text)
            texts.append(api.get(f"/flows/{flow['id']}/{side}/content.data").text)
    return texts


def test_groq_key_is_not_shown_by_mitmweb(session: Session) -> None:
    groq_request = session.chats[2]["request"]
    assert ["authorization", f"Bearer {REDACTED}"] in [
        [name.lower(), value] for name, value in groq_request["headers"]]
    texts = _ui_texts(session)
    assert len(texts) == 4 + 4 * len(session.chats) and all(texts)
    assert [text[:200] for text in texts if GROQ_KEY in text] == []


def test_groq_key_is_never_sent_to_the_browser(session: Session) -> None:
    frames = [event["params"]["response"]["payloadData"] for event in session.browser.events
              if event["method"] == "Network.webSocketFrameReceived"]
    assert any('"flows/update"' in frame for frame in frames)
    assert [frame[:200] for frame in frames if GROQ_KEY in frame] == []


def test_flows_can_be_saved(session: Session) -> None:
    saved = session.web.api.get("/flows/dump")
    assert saved.status_code == 200 and len(saved.content) > 1000


def test_replay_resends_the_clients_request(session: Session,
                                            transformers_server: FakeTransformers) -> None:
    """mitmweb's Replay sends the client's original OpenAI request through the proxy again (not
    the rewritten prompt, which the proxy would refuse), and the flow gets the new answer."""
    flow = session.chats[0]
    before = len(transformers_server.prompts)
    transformers_server.script(ANSWER)
    # As a person would: select the flow, then Flow → Replay.
    _open_flow(session.browser, flow, "Request", "HARMONY PROMPT")
    session.browser.click("[...document.querySelectorAll('a, button')]"
                          ".find(e => e.innerText.trim() === 'Flow')")
    session.browser.click("[...document.querySelectorAll('button, a')]"
                          ".find(e => e.innerText.trim() === 'Replay')")
    deadline = time.monotonic() + 10
    while len(transformers_server.prompts) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert transformers_server.prompts[before:] == [session.prompt]
    body = {}
    while time.monotonic() < deadline:
        content = session.web.api.get(f"/flows/{flow['id']}/response/content.data")
        if content.status_code == 200 and '"chat.completion"' in content.text:
            body = content.json()
            break
        time.sleep(0.1)
    original = session.answer.choices[0]
    assert body["choices"][0]["message"]["content"] == original.message.content
    assert body["choices"][0]["finish_reason"] == original.finish_reason
