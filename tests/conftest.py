"""Shared fixtures: fake upstreams on loopback and the real proxy process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

import agents
import suite_plan
from fakes import GROQ_KEY, FakeGroq, FakeTransformers
from fakes_backends import FakeLlamaCpp, FakeVllm
from mcp_servers import McpProcess
from proxy_process import ProxyProcess
from redis_server import RedisServer, find_or_install_redis

PINNED_DATE = "2026-01-15"


# -- parallel workers and slow set-ups (suite_plan) ---------------------------------------------

def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return suite_plan.worker_count(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # noqa: ANN001 (xdist's WorkerController)
    """The controller decides once which set-ups are cold, so every worker orders alike."""
    node.workerinput["cold_setups"] = _cold_setups(node.config)


COLD_SETUPS = pytest.StashKey[list[str]]()


def _cold_setups(config: pytest.Config) -> list[str]:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return workerinput["cold_setups"]
    if COLD_SETUPS not in config.stash:
        config.stash[COLD_SETUPS] = suite_plan.cold_setups()
    return config.stash[COLD_SETUPS]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    suite_plan.order(items, set(_cold_setups(config)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """One process starts the background warm-up: the first worker, or the only process."""
    first = os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0"
    if first and not session.config.option.collectonly:
        suite_plan.start_warming(session.items, set(_cold_setups(session.config)))


@pytest.fixture(scope="session")
def transformers_server() -> Iterator[FakeTransformers]:
    server = FakeTransformers()
    yield server
    server.close()


@pytest.fixture(scope="session")
def groq_server() -> Iterator[FakeGroq]:
    server = FakeGroq()
    yield server
    server.close()


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpProcess]:
    """This suite's MCP server (tests/mcp_servers.py) over streamable HTTP on loopback."""
    server = McpProcess.fixture("http")
    yield server
    server.close()


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[FakeVllm]:
    server = FakeVllm()
    yield server
    server.close()


@pytest.fixture(scope="module")
def llamacpp_server() -> Iterator[FakeLlamaCpp]:
    server = FakeLlamaCpp()
    yield server
    server.close()


@pytest.fixture()
def fake_transformers(transformers_server: FakeTransformers) -> FakeTransformers:
    transformers_server.reset_state()
    return transformers_server


@pytest.fixture()
def fake_groq(groq_server: FakeGroq) -> FakeGroq:
    groq_server.reset_state()
    return groq_server


def default_options(transformers: FakeTransformers, groq: FakeGroq) -> dict[str, str]:
    return {
        "transformers_url": transformers.url,
        "groq_base_url": groq.base_url,
        "harmony_date": PINNED_DATE,
        "upstream_timeout": "5",
    }


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory, transformers_server: FakeTransformers,
          groq_server: FakeGroq) -> Iterator[ProxyProcess]:
    """One proxy for the session, with a Groq key configured."""
    process = ProxyProcess(tmp_path_factory.mktemp("proxy"), upstream=transformers_server.url,
                           options=default_options(transformers_server, groq_server),
                           env={"GROQ_API_KEY": GROQ_KEY})
    yield process
    process.stop()


@pytest.fixture()
def start_proxy(tmp_path: Path, transformers_server: FakeTransformers, groq_server: FakeGroq
                ) -> Iterator[Callable[..., ProxyProcess]]:
    """Start a proxy with custom options or environment for one test."""
    started: list[ProxyProcess] = []

    def start(options: dict[str, str] | None = None, env: dict[str, str] | None = None,
              **kwargs) -> ProxyProcess:
        merged = {**default_options(transformers_server, groq_server), **(options or {})}
        process = ProxyProcess(tmp_path / f"p{len(started)}", upstream=transformers_server.url,
                               options=merged, env=env, **kwargs)
        started.append(process)
        return process

    for directory in range(4):
        (tmp_path / f"p{directory}").mkdir()
    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def redis_executable() -> str:
    """Debian's redis-server, installed with apt-get on a fresh machine."""
    return find_or_install_redis()


@pytest.fixture()
def redis_server(redis_executable: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A real Redis on a free loopback port, with a password and no persistence."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(redis_executable, tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def agent_cli() -> Callable[[str], Path]:
    """``agent_cli("opencode")``: the executable of a pinned agent CLI (``agents.AGENTS``),
    installed from npm on first use; the test is skipped only if the registry is unreachable."""
    return lambda name: agents.install(agents.AGENTS[name])


@pytest.fixture()
def client(proxy: ProxyProcess) -> openai.OpenAI:
    """The real openai SDK pointed at the proxy, with a client key the proxy must strip."""
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-client-key-should-not-leak-123",
                         max_retries=0, timeout=20)


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
