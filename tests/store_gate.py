"""A TCP relay on loopback in front of a Redis server that holds back the state store's writes:
what a slow or distant store looks like to one proxy, made deterministic.

Every client→server read holding a script call (``EVALSHA``: the store's writes and deletes)
is forwarded ``delay`` seconds after it arrived; the rest of that connection's traffic waits
behind it (the order of a connection is kept), other connections and the answers pass at
once. ``writes`` lists (arrived, forwarded) times (``time.monotonic``) of each held write, so a
test can compare them with when its client got the end of a reply.
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlsplit

import redis

from harmony_groq.state.redis_store import DELETE_SCRIPT, PUT_SCRIPT

WRITE = b"EVALSHA"


class WriteGate:
    def __init__(self, redis_url: str, delay: float) -> None:
        self.redis_url, self.delay = redis_url, delay
        parts = urlsplit(redis_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.writes: list[tuple[float, float]] = []
        # Loaded once here, so a proxy's first write is one held EVALSHA (not EVALSHA,
        # NOSCRIPT, SCRIPT LOAD and EVALSHA again, held twice).
        client = redis.Redis.from_url(redis_url)
        try:
            for script in (PUT_SCRIPT, DELETE_SCRIPT):
                client.script_load(script)
        finally:
            client.close()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        if not started.wait(10):
            raise RuntimeError("the write gate did not start")

    @property
    def url(self) -> str:
        """The Redis URL (password and database included) with the gate's port."""
        parts = urlsplit(self.redis_url)
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{self.port}"
        return parts._replace(netloc=netloc).geturl()

    def wait_for_writes(self, count: int, timeout: float = 10) -> list[tuple[float, float]]:
        """The held writes once ``count`` were forwarded (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while len(self.writes) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.writes)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        server.close()
        connections = asyncio.all_tasks(self.loop)
        for task in connections:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*connections, return_exceptions=True))
        self.loop.close()

    async def _connection(self, client_reader: asyncio.StreamReader,
                          client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, server_writer, hold=True),
                             self._pipe(server_reader, client_writer, hold=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    hold: bool) -> None:
        try:
            while data := await reader.read(65536):
                if hold and WRITE in data:
                    arrived = time.monotonic()
                    await asyncio.sleep(self.delay)
                    writer.write(data)
                    await writer.drain()
                    self.writes.append((arrived, time.monotonic()))
                else:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
