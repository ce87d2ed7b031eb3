"""Real MCP servers on loopback for the MCP tests.

``python tests/mcp_servers.py http|sse PORT`` runs this suite's own server, written with the
``mcp`` SDK's ``MCPServer`` (FastMCP's successor): tools that add, echo the request headers they
got (so a test sees which headers reached the server), sleep, return a large text, fail, and
kill the process mid-call. ``McpProcess`` starts it (or the third-party
``@modelcontextprotocol/server-everything`` from npm, installed like the agent CLIs) on a free
port and waits until it answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

HERE = Path(__file__).resolve().parent
EVERYTHING_VERSION = "2026.8.31"


def serve(transport: str, port: int) -> None:
    server = MCPServer("fixture", instructions="A test server: arithmetic and diagnostics.")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def seen_headers(ctx: Context) -> dict[str, str]:
        """The HTTP headers of the request that called this tool, and in ``_peer`` the
        client's port (the same port: the same kept-alive connection)."""
        request = ctx.request_context.request
        if request is None:
            return {}
        return {**request.headers, "_peer": str(request.client.port if request.client else "")}

    @server.tool()
    async def slow(seconds: float) -> str:
        """Wait, then answer."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    def big(size: int) -> str:
        """A text of ``size`` bytes."""
        return "x" * size

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with ``message``."""
        raise ToolError(message)

    @server.tool()
    def die() -> str:
        """Ends the server's process in the middle of the call."""
        os._exit(3)

    if transport == "http":
        server.run("streamable-http", host="127.0.0.1", port=port)
    else:
        server.run("sse", host="127.0.0.1", port=port)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class McpProcess:
    """An MCP server process on a free loopback port; ``url`` is its endpoint."""

    def __init__(self, command: list[str], path: str, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = {**os.environ, "PORT": str(self.port), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @classmethod
    def fixture(cls, transport: str = "http") -> McpProcess:
        path = "/mcp" if transport == "http" else "/sse"
        return cls([sys.executable, str(HERE / "mcp_servers.py"), transport, "{port}"], path)

    @classmethod
    def everything(cls) -> McpProcess:
        import agents

        executable = agents.install(agents.Agent("@modelcontextprotocol/server-everything",
                                                 EVERYTHING_VERSION, "mcp-server-everything"))
        return cls([str(executable), "streamableHttp"], "/mcp")

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MCP server {self.command} exited ({self.process.returncode})")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"MCP server {self.command} did not listen within 30 s")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
