"""Every ``./run.sh`` line in a ```sh block of README.md and docs/*.md, run through run.sh as a
user types it: the proxy starts, opens every listener the line asks for, and answers a gpt-oss
request that reaches each model server the line names (all on loopback fakes).

A line this harness cannot run must be in ``NOT_RUN`` with the reason, so a new documented line
fails here until it runs or is listed (and a listed line the docs dropped fails too).

The one change made to a documented line, so that it talks to 127.0.0.1 only:

- each ``HOST:PORT`` of a model server in ``TRANSFORMERS_URL`` or ``MODEL_SERVERS`` becomes
  ``127.0.0.1:<port of a fake server of that kind>`` (``BACKEND``'s kind for TRANSFORMERS_URL,
  the ``KIND:`` prefix in MODEL_SERVERS); the same ``HOST:PORT`` is the same fake;
- ``PORT=N`` gets port 0 (mitmproxy picks a free one and prints it); ``WEB_PORT=N``,
  ``--set web_port=N`` and a ``--mode …@HOST:PORT`` listen address a free loopback port.

The environment stands for the user's machine: the default ``TRANSFORMERS_URL`` is a fake
transformers server, ``GROQ_BASE_URL`` a fake Groq, ``LOG_FILE`` and ``HOME`` (mitmproxy's
confdir) a temporary folder, ``PORT`` 0, ``WEB_PORT`` a free port, ``VENV`` the tests' venv.
A line that sets another URL, a non-loopback ``HOST``, or uses the shell beyond ``NAME=value``
prefixes and ``export`` lines (``$(…)``, ``&``, ``|``) cannot run here and must be listed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from test_run_script import free_port

from harmony_groq.replica_spec import model_servers, replica_urls
from harmony_groq.settings import BACKENDS, OPTIONS

from fakes import FakeGroq, FakeServer, FakeTransformers
from fakes_backends import FakeLlamaCpp, FakeVllm
from proxy_process import PrintedLines, terminate

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")))
SH_BLOCK = re.compile(r"^[ \t]*```(?:sh|bash|shell)[ \t]*\n(.*?)^[ \t]*```", re.M | re.S)
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
REVERSE_LISTENING = re.compile(r"reverse proxy to \S+ listening at [\d.]+:(\d+)")
WEB_LISTENING = re.compile(r"Web server listening at http://127\.0\.0\.1:(\d+)/")
SHELL_OPERATORS = {"&", "&&", "|", "||", ";"}
FAKES: dict[str, type[FakeServer]] = {
    "transformers": FakeTransformers, "vllm": FakeVllm, "llamacpp": FakeLlamaCpp}

_TESTS = "runs the test suite this test is part of (CI runs it: .ci/run)"
_WEIGHTS = ("needs gpt-oss's weights (and a GPU to serve them); tests/test_serve_script.py "
            "runs ./run.sh serve with a stand-in transformers executable")
_PREPARE = ("needs gpt-oss-20b downloaded from the Hugging Face hub; tests/test_prepare.py "
            "prepares small model folders, tests/test_realserver_e2e.py a real one")
_DEPLOY = ("a production deployment: secrets read from /etc with $(…), a Redis at 10.0.0.5, "
           "HOST=0.0.0.0, logs in /var/log; tests/test_shared_state_e2e.py runs several "
           "proxies on one real redis-server")

# The documented lines that do not run here, as ``DocLine.key`` spells them (the block's
# exports, then the line, comments dropped): why not, and what covers them instead.
NOT_RUN: dict[str, str] = {
    "./run.sh test": _TESTS,
    "export GROQ_API_KEY=gsk_...; ./run.sh test": _TESTS,
    "./run.sh test tests/test_proxy_e2e.py": _TESTS,
    "SKIP_REAL_SERVER=1 ./run.sh test": _TESTS,
    "SKIP_LLAMACPP=1 ./run.sh test": _TESTS,
    "./run.sh test -n 0": _TESTS,
    "PYTEST_XDIST_AUTO_NUM_WORKERS=4 ./run.sh test": _TESTS,
    "./run.sh prepare openai/gpt-oss-20b": _PREPARE,
    "./run.sh serve openai/gpt-oss-20b": _WEIGHTS,
    "./run.sh serve [MODEL] [transformers serve args…] [-- proxy args…]":
        "the usage synopsis of ./run.sh serve, not a command",
    "./run.sh serve openai/gpt-oss-20b --device cuda:1": _WEIGHTS,
    "./run.sh serve ~/models/gpt-oss-20b -- --set reasoning_field=reasoning": _WEIGHTS,
    "TRANSFORMERS_URL=http://127.0.0.1:8001 PORT=3308 ./run.sh serve openai/gpt-oss-120b":
        _WEIGHTS,
    "TRANSFORMERS_BIN=/opt/hf/bin/transformers ./run.sh serve openai/gpt-oss-20b": _WEIGHTS,
    "export STATE_STORE='redis://default:s3cret@10.0.0.5:6379/0'; ./run.sh":
        "needs a Redis at 10.0.0.5 with that password; tests/test_shared_state_e2e.py runs "
        "STATE_STORE against a real redis-server",
    "export GROQ_API_KEY=gsk_...; export PROXY_API_KEY=$(cat /etc/harmony-groq/key); "
    'export STATE_STORE="redis://default:$(cat /etc/harmony-groq/redis-password)@10.0.0.5:'
    '6379/0"; BACKEND=vllm TRANSFORMERS_URL=http://vllm-lb.internal:8000 HOST=0.0.0.0 '
    "PORT=3307 LOG_FILE=/var/log/harmony-groq/proxy-$(hostname)-3307.log ./run.sh": _DEPLOY,
    "BACKEND=vllm TRANSFORMERS_URL=http://vllm-lb.internal:8000 HOST=0.0.0.0 PORT=3307 "
    "LOG_FILE=/var/log/harmony-groq/proxy-3307.log ./run.sh &": _DEPLOY,
    "BACKEND=vllm TRANSFORMERS_URL=http://vllm-lb.internal:8000 HOST=0.0.0.0 PORT=3308 "
    "LOG_FILE=/var/log/harmony-groq/proxy-3308.log ./run.sh &": _DEPLOY,
}


def without_comment(line: str) -> str:
    """The line up to a ``#`` that starts a shell comment, whitespace collapsed."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            line = line[:index]
            break
    return " ".join(line.split())


@dataclass(frozen=True)
class DocLine:
    """One documented ``./run.sh`` line and the ``export`` lines before it in its block."""

    where: str
    exports: tuple[str, ...]  # each without its "export "
    text: str

    @property
    def key(self) -> str:
        return "; ".join([*(f"export {e}" for e in self.exports), self.text])

    @property
    def env(self) -> tuple[tuple[str, str], ...]:
        """The exports', then the line's NAME=value prefixes, as the shell assigns them."""
        words = [w for e in self.exports for w in shlex.split(e)]
        words += shlex.split(self.text)[:self.prefix_length]
        return tuple(m.groups() for w in words if (m := ASSIGNMENT.match(w)))

    @property
    def prefix_length(self) -> int:
        words = shlex.split(self.text)
        return next((i for i, w in enumerate(words) if not ASSIGNMENT.match(w)), len(words))

    @property
    def words(self) -> tuple[str, ...]:
        """From ./run.sh on."""
        return tuple(shlex.split(self.text)[self.prefix_length:])

    def why_not_runnable(self) -> str | None:
        """What this harness cannot do for the line (None: it runs)."""
        if any(c in self.key for c in "$`"):
            return "it uses the shell's $(…) or `…`"
        if not self.words or self.words[0] != "./run.sh":
            return "it does not start with ./run.sh after NAME=value prefixes"
        if any(word in SHELL_OPERATORS for word in self.words):
            return "it uses the shell beyond NAME=value prefixes"
        if self.words[1:2] and self.words[1] in ("test", "bench", "prepare", "serve"):
            return f"./run.sh {self.words[1]} is not a proxy this harness can check"
        for name, value in self.env:
            if name == "HOST" and value not in ("127.0.0.1", "localhost"):
                return f"HOST={value} listens beyond loopback"
            if "://" in value and name not in ("TRANSFORMERS_URL", "MODEL_SERVERS"):
                return f"{name} names a URL the substitution does not map"
        return None


def documented_lines() -> list[DocLine]:
    """Every line of a ```sh block that mentions run.sh, continuation lines joined."""
    found = []
    for path in DOC_FILES:
        for block in SH_BLOCK.findall(path.read_text()):
            exports: list[str] = []
            for line in block.replace("\\\n", " ").splitlines():
                text = without_comment(line)
                if text.startswith("export "):
                    exports.append(text.removeprefix("export "))
                elif "run.sh" in text:
                    found.append(DocLine(str(path.relative_to(ROOT)), tuple(exports), text))
    return found


DOCUMENTED = documented_lines()
RUNNABLE = {line.key: line for line in DOCUMENTED if line.key not in NOT_RUN}


def test_the_docs_show_run_sh_lines_and_every_listed_one_is_still_there() -> None:
    keys = {line.key for line in DOCUMENTED}
    assert any(line.words == ("./run.sh",) for line in DOCUMENTED)  # the quick start
    assert any("," in dict(line.env).get("TRANSFORMERS_URL", "") for line in DOCUMENTED)
    stale = sorted(set(NOT_RUN) - keys)
    assert not stale, f"NOT_RUN lists lines the docs no longer show: {stale}"


@pytest.mark.parametrize("key", sorted(RUNNABLE), ids=str)
def test_documented_line_can_run_here(key: str) -> None:
    """A line not in NOT_RUN must be one this harness runs (else: make it runnable, or list
    it in NOT_RUN with the reason)."""
    line = RUNNABLE[key]
    assert line.why_not_runnable() is None, (
        f"{line.where}: {key!r} cannot run here ({line.why_not_runnable()}): make it runnable "
        "or add it to NOT_RUN with the reason")


@dataclass
class Substituted:
    """A documented line mapped onto loopback: its environment, arguments and the fakes."""

    env: dict[str, str]
    args: list[str]
    fakes: dict[str, FakeServer] = field(default_factory=dict)  # by documented HOST:PORT
    web_port: int | None = None
    listen_ports: list[int] = field(default_factory=list)  # of the line's own --mode listeners

    def fake_for(self, url: str, kind: str) -> str:
        scheme, _, rest = url.partition("://")
        hostport, slash, path = rest.partition("/")
        fake = self.fakes.get(hostport)
        if fake is None:
            fake = self.fakes[hostport] = FAKES[kind]()
        assert isinstance(fake, FAKES[kind]), f"{hostport} is documented as two kinds"
        return f"http://127.0.0.1:{fake.port}{slash}{path}"


def substitute(line: DocLine, base_env: dict[str, str]) -> Substituted:
    """The module docstring's substitution, and nothing else."""
    documented = dict(line.env)
    sub = Substituted({**base_env}, list(line.words[1:]))
    backend = documented.get("BACKEND", "transformers")
    for name, value in documented.items():
        if name == "TRANSFORMERS_URL":
            value = ",".join(sub.fake_for(url.strip(), backend) for url in value.split(","))
        elif name == "MODEL_SERVERS":
            value = re.sub(rf"({'|'.join(BACKENDS)}):(https?://[^|;,\s]+)",
                           lambda m: f"{m[1]}:{sub.fake_for(m[2], m[1])}", value)
        elif name == "PORT":
            value = "0"
        elif name == "WEB_PORT":
            value = str(free_port())
        sub.env[name] = value
    sub.web_port = int(sub.env["WEB_PORT"])
    for index, arg in enumerate(sub.args):
        previous = sub.args[index - 1] if index else ""
        if previous == "--mode" and "@" in arg:
            sub.listen_ports.append(free_port())
            sub.args[index] = arg.rsplit("@", 1)[0] + f"@127.0.0.1:{sub.listen_ports[-1]}"
        elif (previous == "--set" and arg.startswith("web_port=")) or arg.startswith(
                "--set=web_port="):
            sub.web_port = free_port()
            sub.args[index] = arg.rsplit("=", 1)[0] + f"={sub.web_port}"
    return sub


@pytest.fixture()
def base_env(tmp_path: Path, groq_server: FakeGroq) -> Iterator[tuple[dict[str, str], FakeServer]]:
    default_server = FakeTransformers()
    settings = {spec.env for spec in OPTIONS} | {"GROQ_API_KEY", "PROXY_API_KEY", "STATE_STORE"}
    env = {k: v for k, v in os.environ.items()
           if k not in settings and k not in ("HTTP_PROXY", "HTTPS_PROXY", "PORT", "HOST",
                                              "WEB_PORT")}
    (tmp_path / "home").mkdir()
    env.update(TRANSFORMERS_URL=default_server.url, GROQ_BASE_URL=groq_server.base_url,
               LOG_FILE=str(tmp_path / "flows.log"), HOME=str(tmp_path / "home"), PORT="0",
               WEB_PORT=str(free_port()))
    if sys.prefix != sys.base_prefix:  # the venv running the tests is the one to use
        env["VENV"] = sys.prefix
    yield env, default_server
    default_server.close()


def request_models(groups_env: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(a model id it serves, its replica URLs) for each group the proxy will have."""
    groups = model_servers(groups_env.get("MODEL_SERVERS", ""), BACKENDS)
    named = {group.model for group in groups}
    default_model = next(m for m in ("gpt-oss-20b", "gpt-oss-120b", "gpt-oss-other")
                         if m not in named)
    return [(group.model or default_model, list(group.urls)) for group in groups] + [
        (default_model, list(replica_urls("TRANSFORMERS_URL", groups_env["TRANSFORMERS_URL"])))]


@pytest.mark.parametrize("key", sorted(k for k, v in RUNNABLE.items()
                                       if v.why_not_runnable() is None), ids=str)
def test_documented_line_runs_as_written(key: str, base_env, tmp_path: Path) -> None:
    env, default_server = base_env
    line = RUNNABLE[key]
    sub = substitute(line, env)
    servers = {f"http://127.0.0.1:{fake.port}": fake
               for fake in (*sub.fakes.values(), default_server)}
    process = subprocess.Popen(["./run.sh", *sub.args], cwd=ROOT, env=sub.env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        printed = PrintedLines(process, f"{line.where}: {key}")
        port = int(printed.wait_for(REVERSE_LISTENING, timeout=60))
        if line.words[1:2] == ("web",):
            assert printed.wait_for(WEB_LISTENING) == str(sub.web_port)
        for listen_port in sub.listen_ports:
            printed.wait_for(re.compile(rf"(listening) at 127\.0\.0\.1:{listen_port}\b"))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                               max_retries=0, timeout=30)
        for model, urls in request_models(sub.env):
            replicas = [servers[url] for url in urls]
            for attempt in range(4 * len(replicas)):  # new conversations spread over replicas
                if all(server.prompts for server in replicas):
                    break
                # A new conversation, long enough that the shared system prompt leaves it
                # cold on every replica: cache-aware routing places it by load.
                words = " ".join(f"w{attempt}x{n}" for n in range(200))
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": words}])
                assert reply.choices[0].message.content == "Hello!"
            missed = [url for url, server in zip(urls, replicas, strict=True)
                      if not server.prompts]
            assert not missed, f"{model}: no request reached {missed}\n" + "".join(printed.lines)
    finally:
        terminate(process)
        for fake in sub.fakes.values():
            fake.close()
