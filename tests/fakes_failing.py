"""Upstreams that fail before the first response byte, as real servers fail: loopback sockets
that accept a request and then close, reset (``SO_LINGER`` 0), answer unreadable headers or
never answer; a TLS port whose certificate no client trusts; and ``IdleClosingRelay``, a
keep-alive server's idle timeout (uvicorn's 5 s) put in front of a working fake.

A host name under ``.invalid`` (RFC 6761) never resolves and never leaves the machine.
"""

from __future__ import annotations

import contextlib
import datetime
import select
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

UNRESOLVABLE_URL = "http://model-server.invalid:8000"
MODES = ("close", "reset", "garbage", "silent", "tls")
GARBAGE = b"HTTP/1.1 200 \x00\x01 not a header line\r\n\xff\xfe\r\n\r\n"
SILENT_LIMIT = 30.0  # seconds a silent fake holds a connection at most


def _read_request_head(conn: socket.socket, limit: float = 5.0) -> bytes:
    """What the client sent, up to the end of its head (and what came with it)."""
    conn.settimeout(limit)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data and len(data) < 1 << 20:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def reset(conn: socket.socket) -> None:
    """Close with an RST: linger on, timeout 0."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1 (no client trusts
    it), made with ``cryptography`` (mitmproxy's own dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "untrusted fake")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "fake-cert.pem", directory / "fake-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


class _LoopbackServer:
    """A listening loopback socket; each accepted connection goes to ``handle`` in a thread of
    its own (``connections`` counts them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


class FailingServer(_LoopbackServer):
    """A loopback server failing every request one way (``MODES``); ``requests`` holds the
    request heads it read."""

    def __init__(self, mode: str, tmp: Path | None = None) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.context = self_signed_context(tmp or Path(".")) if mode == "tls" else None
        self.requests: list[bytes] = []
        super().__init__()

    @property
    def url(self) -> str:
        return f"{'https' if self.mode == 'tls' else 'http'}://127.0.0.1:{self.port}"

    def posts(self) -> int:
        """Model requests read (the proxy's health probes are GETs)."""
        return sum(head.startswith(b"POST ") for head in self.requests)

    def handle(self, conn: socket.socket) -> None:
        if self.mode == "tls":
            assert self.context is not None
            with contextlib.suppress(OSError, ssl.SSLError):
                conn.settimeout(5)
                self.context.wrap_socket(conn, server_side=True).close()  # the client refuses
            conn.close()
            return
        head = _read_request_head(conn)
        if not head:
            conn.close()
            return
        self.requests.append(head)
        if self.mode == "close":
            conn.close()
        elif self.mode == "reset":
            reset(conn)
        elif self.mode == "garbage":
            with contextlib.suppress(OSError):
                conn.sendall(GARBAGE)
            conn.close()
        else:  # silent: hold the connection, answer nothing
            self.stopped.wait(SILENT_LIMIT)
            conn.close()


class IdleClosingRelay(_LoopbackServer):
    """A keep-alive server's idle timeout in front of ``target`` (a working fake): a connection
    idle for ``idle`` seconds is closed, as uvicorn closes it after 5 s. A request that arrives
    in the ``window`` after that moment is the race a proxy meets: the server's close crossed
    it on the wire, so it is dropped unanswered with the connection (listed in ``dropped``).
    Every connection goes on to ``target`` byte for byte otherwise."""

    def __init__(self, target_port: int, idle: float = 0.5, window: float = 5.0) -> None:
        self.target_port = target_port
        self.idle, self.window = idle, window
        self.dropped: list[bytes] = []  # the request lines of the requests dropped
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def dropped_posts(self) -> int:
        """Model requests dropped (the proxy's health probes may meet the race too)."""
        return sum(line.startswith(b"POST ") for line in self.dropped)

    def handle(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        last = time.monotonic()
        served = False
        try:
            while not self.stopped.is_set():
                idle_for = time.monotonic() - last
                if served and idle_for >= self.idle + self.window:
                    return  # closed for good, as the server's timer does
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client and served and time.monotonic() - last >= self.idle:
                        # the server had closed as this request came
                        self.dropped.append(data.split(b"\r\n", 1)[0])
                        return
                    (upstream if sock is client else client).sendall(data)
                    served = served or sock is upstream
                    last = time.monotonic()
        except OSError:
            return
        finally:
            client.close()
            upstream.close()
