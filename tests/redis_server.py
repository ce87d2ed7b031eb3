"""A real ``redis-server`` on a free loopback port, without persistence, for the state store
tests; Debian's ``redis-server`` package is installed with apt-get when missing (a fresh CI
machine runs as root), otherwise the tests that need it are skipped with the command to run."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import time
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from debian import find_or_install
from proxy_process import terminate

# Every test server requires it (it must never be shown); "@" and "/" need quoting in a URL.
PASSWORD = "store-secret-Pa55word@/x"
QUOTED_PASSWORD = "store-secret-Pa55word%40%2Fx"


def find_or_install_redis() -> str:
    return find_or_install("redis-server", ("redis-server",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_tls_files(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it: ca.pem, server.pem, key.pem
    (with the extensions Python 3.13's strict verification asks for)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test store CA")])
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())

    def base(subject: x509.Name, public_key, ca: bool) -> x509.CertificateBuilder:  # noqa: ANN001
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
                .add_extension(x509.KeyUsage(
                    digital_signature=not ca, key_cert_sign=ca, crl_sign=ca,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False), True))

    ca = base(ca_name, ca_key.public_key(), True)
    server = (base(server_name, key.public_key(), False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                  ca_ski), False)
              .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
              .add_extension(x509.SubjectAlternativeName(
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False))
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.sign(ca_key, hashes.SHA256()).public_bytes(pem))
    (directory / "server.pem").write_bytes(
        server.sign(ca_key, hashes.SHA256()).public_bytes(pem))
    (directory / "key.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


class RedisServer:
    """``start``/``kill``/``start`` again on the same port: what a crash and a restart do.
    With ``tls``, the port speaks TLS only (``rediss://``, the CA in the URL)."""

    def __init__(self, executable: str, workdir: Path, tls: bool = False) -> None:
        self.executable, self.workdir, self.tls = executable, workdir, tls
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        if tls:
            write_tls_files(workdir)
        self.start()

    @property
    def url(self) -> str:
        if self.tls:
            return (f"rediss://default:{QUOTED_PASSWORD}@127.0.0.1:{self.port}/0"
                    f"?ssl_ca_certs={self.workdir / 'ca.pem'}")
        return f"redis://default:{QUOTED_PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        listen = ["--port", str(self.port)]
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                      "--tls-cert-file", str(self.workdir / "server.pem"),
                      "--tls-key-file", str(self.workdir / "key.pem"),
                      "--tls-ca-cert-file", str(self.workdir / "ca.pem")]
        self.process = subprocess.Popen(
            [self.executable, "--bind", "127.0.0.1", *listen, "--requirepass", PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--loglevel", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.02)
        finally:
            client.close()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def version(self) -> str:
        done = subprocess.run([self.executable, "--version"], capture_output=True, text=True,
                              timeout=10)
        return done.stdout.split(" v=", 1)[-1].split(" ", 1)[0]

    def kill(self) -> None:
        """SIGKILL: the store is gone mid-run, with everything in it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(5)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
