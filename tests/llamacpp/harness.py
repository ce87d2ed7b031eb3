"""Real llama.cpp ``llama-server`` processes on the tiny gpt-oss model, for tests and benchmarks.

``llama_server_binary`` builds the server once from the llama.cpp tree vendored in PyPI's
``llama-cpp-python`` source package (``build_server.sh``; minutes once, then cached under
``~/.cache/gpt-oss-harmony-groq/llama.cpp/<version>/``). ``tiny_gguf`` converts the tiny model
that ``tests/realserver`` builds into a GGUF with the vendored converter (cached next to the
binary, keyed on the model builder). ``LlamaServer`` runs one server on a free loopback port;
``start_servers`` several (replicas). Replies are made exact with ``script_grammar``: the
script's token ids as a grammar, and its end-of-generation token (which a grammar cannot name)
picked with a logit bias. ``repeating_args`` makes every reply one analysis message of one
token repeated up to ``max_tokens``, which a continuation (prompt + generated ids, on another
replica) goes on exactly: the replica-pool tests' resume.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from harmony_groq.encoding import harmony_encoding

from cache_dir import file_lock
from proxy_process import terminate
from realserver import harness as realserver

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_server.sh"
END_OF_GENERATION = (200002, 200012, 199999)  # <|return|>, <|call|>, <|endoftext|>


class LlamaCppSetupError(RuntimeError):
    """llama-server or the GGUF could not be made; the message says why."""


def build_prerequisites_missing() -> str | None:
    """Why the build cannot run here (no compiler and no way to install one), or None."""
    if shutil.which("cmake") and shutil.which("c++"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return None  # build_server.sh installs them
    return "cmake and a C++ compiler are missing (Debian: apt-get install cmake build-essential)"


def llama_server_binary() -> tuple[Path, Path]:
    """``(llama-server, vendored source folder)``, built once by ``build_server.sh``."""
    env = {**os.environ, "PIP": f"{sys.executable} -m pip"}
    try:
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                              timeout=3600, env=env)
    except subprocess.TimeoutExpired:
        raise LlamaCppSetupError("building llama-server took over an hour") from None
    if done.returncode != 0:
        raise LlamaCppSetupError(f"tests/llamacpp/build_server.sh failed:\n{done.stderr[-4000:]}")
    dest = Path(done.stdout.strip().splitlines()[-1])
    return dest / "bin" / "llama-server", dest / "src"


def tiny_gguf(source: Path) -> Path:
    """The tiny gpt-oss model as GGUF (f16), converted once per model builder version."""
    out = source.parent / "models" / f"tiny-{realserver.builder_key()}.gguf"
    if out.is_file():
        return out
    try:
        venv = realserver.ensure_env()
        base = realserver.cached_base_model(venv)
    except realserver.RealServerSetupError as exc:
        raise LlamaCppSetupError(f"the tiny model could not be built: {exc}") from None
    with file_lock(out.with_suffix(".lock")):  # parallel workers convert it once
        if out.is_file():
            return out
        tmp = out.with_suffix(f".tmp-{os.getpid()}")
        env = {**os.environ, "PYTHONPATH": str(source / "gguf-py")}
        try:
            realserver._run([venv / "bin" / "python", source / "convert_hf_to_gguf.py", base,
                             "--outfile", tmp, "--outtype", "f16"],
                            "converting the tiny model to GGUF", timeout=300, env=env)
            os.replace(tmp, out)
        except realserver.RealServerSetupError as exc:
            raise LlamaCppSetupError(str(exc)) from None
        finally:
            tmp.unlink(missing_ok=True)
    return out


def script_grammar(script: str) -> tuple[str, int]:
    """``(grammar, end token)`` making a greedy server answer ``script`` (harmony text that
    ends with an end-of-generation token) token for token."""
    ids = harmony_encoding().encode(script, allowed_special="all")
    if ids[-1] not in END_OF_GENERATION:
        raise ValueError("a script ends with <|return|> or <|call|>")
    return "root ::= " + " ".join(f"<[{t}]>" for t in ids[:-1]) + "\n", ids[-1]


REPEATED = 27693  # " tick"
HEADER = (200005, 35644, 200008)  # <|channel|>analysis<|message|>


def repeating_args(workdir: Path) -> list[str]:
    """Server arguments under which every reply is ``<|channel|>analysis<|message|>`` and then
    `` tick`` until ``max_tokens``, and a continuation from the prompt plus any of it (two
    ticks or more) goes on with ticks: the reply an unbroken run would have given.

    A command-line grammar restarts with every request, so it cannot know where a continuation
    starts; the server's sampler does (it is fed the prompt). The grammar allows the header or
    a tick first; the header's logit bias (+20) picks it in a fresh reply, a negative frequency
    penalty (each tick in the last 64 tokens: +50) picks ticks once two are in the prompt.
    The end-of-generation tokens are barred, so only ``max_tokens`` ends a reply.
    """
    grammar = workdir / "repeating.gbnf"
    grammar.write_text("root ::= ( " + " ".join(f"<[{t}]>" for t in HEADER)
                       + f" )? <[{REPEATED}]>*\n")
    bias = [f"{HEADER[0]}+20", *(f"{t}-100" for t in END_OF_GENERATION)]
    return ["--grammar-file", str(grammar), "--temp", "0", "--frequency-penalty", "-50",
            *(arg for b in bias for arg in ("--logit-bias", b))]


class LlamaServer:
    """``llama-server`` on a free loopback port (or ``port``: a restart), one slot, started at
    once.

    ``script``: every request (without a grammar of its own) is answered with it, greedily.
    """

    def __init__(self, binary: Path, model: Path, workdir: Path, *, context: int = 4096,
                 script: str | None = None, extra_args: Iterable[str] = (),
                 threads: int = 2, port: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or realserver.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.context = context
        self.log_path = workdir / f"llama-server-{self.port}.log"
        args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                "-c", str(context), "-np", "1", "-t", str(threads), "--swa-full"]
        if script is not None:
            grammar, end = script_grammar(script)
            grammar_file = workdir / f"script-{self.port}.gbnf"
            grammar_file.write_text(grammar)
            args += ["--grammar-file", str(grammar_file), "--temp", "0",
                     "--logit-bias", f"{end}+100"]
        args += list(extra_args)
        with self.log_path.open("a") as log:  # a restart on the same port appends
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_healthy(self, timeout: float = 60) -> None:
        problem = realserver.health_problem(self.process, self.url, timeout)
        if problem is not None:
            raise LlamaCppSetupError(f"llama-server {problem}:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (mid-stream tests)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        terminate(self.process)


def start_servers(binary: Path, model: Path, workdir: Path, count: int,
                  **options: object) -> list[LlamaServer]:
    """``count`` servers (replicas) with the same options, returned once all are healthy."""
    servers = [LlamaServer(binary, model, workdir, **options)  # type: ignore[arg-type]
               for _ in range(count)]
    try:
        for server in servers:
            server.wait_healthy()
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers: Iterable[LlamaServer]) -> None:
    for server in servers:
        server.stop()


def stream_raw(url: str, body: dict[str, Any], headers: dict[str, str], word: bytes,
               interrupt: Callable[[], None] | None) -> bytes:
    """A streamed reply's bytes as the client got them; ``interrupt`` (a server's kill) is
    called once, as soon as ``word`` has reached the client three times."""
    raw = b""
    with httpx.stream("POST", url, json=body, timeout=60, headers=headers) as reply:
        assert reply.status_code == 200
        for data in reply.iter_bytes():
            raw += data
            if interrupt is not None and raw.count(word) >= 3:
                interrupt()
                interrupt = None
    return raw
