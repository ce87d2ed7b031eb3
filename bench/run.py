"""Benchmark of the proxy on loopback: starts the fakes, the addon, bare mitmdump and LiteLLM.

    ./run.sh bench [--quick] [--no-litellm] [--only PART] [--markdown FILE] [--profile DIR]

Prints the results as Markdown tables; see bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests")]

from code_bench import code_section  # noqa: E402
from httpclient import Target  # noqa: E402
from keys_bench import keys_section  # noqa: E402
from litellm_env import ensure_litellm, start_litellm  # noqa: E402
from llama_server import llamacpp_section  # noqa: E402
from mcp_bench import mcp_section  # noqa: E402
from phases import (  # noqa: E402
    FULL,
    QUICK,
    Results,
    Setup,
    groq_phase,
    groq_targets,
    oss_phase,
    store_phase,
    stream_phase,
)
from pool_bench import pool_phase  # noqa: E402
from pool_real import pool_llamacpp_section  # noqa: E402
from prefix import prefix_reuse  # noqa: E402
from procs import Service, pin, rss_mib  # noqa: E402
from report import FAKE, LOAD, PROXY, machine, render  # noqa: E402
from store import KINDS, StoreSetup, redis_server_binary  # noqa: E402
from strict import strict_section  # noqa: E402
from tools_bench import tools_section  # noqa: E402
from workloads import DATE, GROQ_MODEL  # noqa: E402

from fakes import GROQ_KEY  # noqa: E402
from proxy_process import ADDON, LISTEN_RE, tool  # noqa: E402
from redis_server import RedisServer  # noqa: E402

UNDER_TEST_CPU, SHARED_CPU = {0}, {1}
NOLOG = "addon, flow log off"
CLEARED_ENV = ("PROXY_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
PHASES = {"groq": groq_phase, "oss": oss_phase, "stream": stream_phase, "store": store_phase,
          "pool": pool_phase}
# Parts with processes of their own and their own report sections: real llama-servers (built
# once, minutes), the keys' fair share and check cost (bench/keys_bench.py), the server tools'
# in-process costs (web search; the code-execution sandbox), MCP calls on a real MCP server and
# the strict-schema grammar compiler (in-process, seconds).
REAL_SERVER_PARTS = {"llamacpp": llamacpp_section, "pool-llamacpp": pool_llamacpp_section,
                     "keys": keys_section, "tools": tools_section, "code": code_section,
                     "mcp": mcp_section, "strict": strict_section}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds per phase: checks the benchmark runs, not for quoting")
    parser.add_argument("--no-litellm", action="store_true",
                        help="skip LiteLLM (and its one-time install into .venv-litellm)")
    parser.add_argument("--only", choices=[*PHASES, *REAL_SERVER_PARTS], action="append",
                        metavar="PART",
                        help="run only this part: groq, oss, stream, store, pool, llamacpp, "
                             "pool-llamacpp (real llama-servers), keys, tools (web search), "
                             "code (the code sandbox), mcp or strict (these seven not in "
                             "--quick unless named) "
                             "(repeatable); a "
                             "change measured on one part need not wait for, or disturb, the "
                             "others")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample the addon proxy with py-spy during the heavy phases")
    parser.add_argument("--addon", type=Path, default=ADDON, metavar="SCRIPT",
                        help="the addon script to run (default addons/harmony.py); a patched "
                             "copy measures a change before it is made (set PYTHONPATH to the "
                             "copy's folder too, for the in-process timings)")
    return parser.parse_args(argv)


def start_fakes() -> tuple[Service, dict[str, int]]:
    fakes = Service("fakes", [sys.executable, str(BENCH / "fastfake.py")])
    ports = json.loads(fakes.wait_for_line(re.compile(r"^\{.*\}$"), timeout=60).group(0))
    return fakes, ports


def start_mitmdump(name: str, workdir: Path, upstream: str, addon: Path | None,
                   addon_options: dict[str, str]) -> tuple[Service, int]:
    """mitmdump in reverse mode to ``upstream``: bare, or with ``addon`` and its options."""
    workdir.mkdir()
    (workdir / "confdir").mkdir()
    argv = [tool("mitmdump"), "--mode", f"reverse:{upstream}@127.0.0.1:0",
            "--set", "connection_strategy=lazy", "--set", f"confdir={workdir / 'confdir'}",
            "--set", "termlog_verbosity=info", "--set", "flow_detail=0"]
    env = None
    if addon is not None:
        argv[1:1] = ["-s", str(addon)]
        argv += [arg for key, value in addon_options.items() for arg in ("--set", f"{key}={value}")]
        env = {**{k: v for k, v in os.environ.items() if k not in CLEARED_ENV},
               "GROQ_API_KEY": GROQ_KEY}
    service = Service(name, argv, env=env, cwd=workdir)
    port = int(service.wait_for_line(LISTEN_RE, timeout=60).group(1))
    if addon is not None:
        service.wait_until(lambda: _healthy(port), timeout=60)
    return service, port


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2,
                         trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def addon_options(ports: dict[str, int], log_file: str) -> dict[str, str]:
    return {"transformers_url": f"http://127.0.0.1:{ports['transformers']}",
            "groq_base_url": f"http://127.0.0.1:{ports['groq']}/openai/v1",
            "harmony_date": DATE, "upstream_timeout": "120", "log_file": log_file}


async def measure(setup: Setup, parts: list[str]) -> Results:
    results = Results()
    for part in parts:
        await PHASES[part](setup, results)
    results.prefix = await prefix_reuse()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.profile:  # one long run per target, so the profile covers all of it
        budget = dataclasses.replace(budget, rounds=1)
    pinned = (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, SHARED_CPU)  # children inherit; servers under test move to 0
    parts = args.only or [*PHASES, *([] if args.quick else REAL_SERVER_PARTS)]
    llama = [line for part in REAL_SERVER_PARTS if part in parts
             for line in REAL_SERVER_PARTS[part](args.quick)]
    parts = [part for part in parts if part not in REAL_SERVER_PARTS]
    if not parts:
        return _output("\n".join(llama), args.markdown)
    measured_against_litellm = not args.no_litellm and "groq" in parts
    litellm_exe = ensure_litellm(ROOT / ".venv-litellm") if measured_against_litellm else None
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fakes, ports = start_fakes()
        stack.callback(fakes.stop)
        groq = f"http://127.0.0.1:{ports['groq']}"
        transformers = f"http://127.0.0.1:{ports['transformers']}"
        ports_of: dict[str, int] = {}
        under_test: dict[str, int] = {}
        services = [fakes]
        for name, upstream, addon, options in (
                ("bare mitmdump", groq, None, {}),
                (PROXY, transformers, args.addon, addon_options(ports, str(work / "flows.log"))),
                (NOLOG, transformers, args.addon, addon_options(ports, ""))):
            service, ports_of[name] = start_mitmdump(name, work / f"mitmdump{len(ports_of)}",
                                                     upstream, addon, options)
            stack.callback(service.stop)
            services.append(service)
            under_test[name] = service.pid
        litellm: Target | None = None
        if litellm_exe is not None:
            (work / "litellm").mkdir()
            service, litellm = start_litellm(litellm_exe, GROQ_MODEL, f"{groq}/openai/v1",
                                             GROQ_KEY, work / "litellm")
            stack.callback(service.stop)
            services.append(service)
            under_test["litellm"] = service.pid
        store = None
        if "store" in parts:
            store = start_store(work, stack, services, under_test, transformers, args.addon,
                                addon_options(ports, ""))
        if pinned:
            for pid in under_test.values():
                pin(pid, UNDER_TEST_CPU)
        setup = Setup(
            budget=budget,
            groq_targets=groq_targets(ports["groq"], ports_of["bare mitmdump"], ports_of[PROXY],
                                      litellm),
            proxy=Target(PROXY, ports_of[PROXY], "/v1/chat/completions"),
            messages_proxy=Target(PROXY, ports_of[PROXY], "/v1/messages"),
            responses_proxy=Target(PROXY, ports_of[PROXY], "/v1/responses"),
            proxy_nolog=Target(NOLOG, ports_of[NOLOG], "/v1/chat/completions"),
            backend=Target("backend direct", ports["transformers"], "/v1/completions"),
            pids={**under_test, FAKE: fakes.pid, LOAD: os.getpid()},
            proxy_pid=under_test[PROXY], profile_dir=args.profile, store=store)
        idle = {name: rss_mib(pid) for name, pid in under_test.items()}
        try:
            results = asyncio.run(measure(setup, parts))
        except Exception:
            for service in services:
                if service.process.poll() is not None:
                    print(f"bench: {service.name} exited:\n{''.join(service.output[-40:])}",
                          file=sys.stderr)
            raise
        results.idle_rss_mib = {f"{name}, idle": mib for name, mib in idle.items()}
    litellm_version = None if litellm is None else _litellm_version(litellm_exe)
    text = render(results, machine(pinned, litellm_version), args.quick)
    return _output("\n".join([text, *llama]), args.markdown)


def _output(text: str, markdown: Path | None) -> int:
    print(text)
    if markdown:
        markdown.write_text(text)
    return 0


def start_store(work: Path, stack: contextlib.ExitStack, services: list[Service],
                under_test: dict[str, int], upstream: str, addon: Path,
                options: dict[str, str]) -> StoreSetup | None:
    """redis-server and four proxies (flow log off): two on memory, two sharing the Redis."""
    executable = redis_server_binary()
    if executable is None:
        print("bench: redis-server is missing, the store part is skipped "
              "(apt-get install redis-server)", file=sys.stderr)
        return None
    (work / "redis").mkdir()
    store = StoreSetup(RedisServer(executable, work / "redis"))
    stack.callback(store.redis.stop)
    assert store.redis.process is not None
    under_test["redis-server"] = store.redis.process.pid  # part of what is measured: CPU 0
    for kind in KINDS:
        state = "memory" if kind == "memory" else store.redis.url
        for proxy in "AB":
            name = f"addon, {kind} store {proxy}"
            service, port = start_mitmdump(name, work / f"store-{kind}-{proxy}", upstream, addon,
                                           {**options, "state_store": state})
            stack.callback(service.stop)
            services.append(service)
            under_test[name] = service.pid
            store.targets.setdefault(kind, []).append(Target(name, port, "/v1/responses"))
    return store


def _litellm_version(executable: Path | None) -> str | None:
    assert executable is not None
    site = next((executable.parent.parent / "lib").glob("python*/site-packages"))
    return next(metadata.distributions(name="litellm", path=[str(site)])).version


if __name__ == "__main__":
    sys.exit(main())
