"""TLS and mutual TLS against real servers over real channels: handshakes with the right and the
wrong CA, refused client certificates, the refusal to serve beyond loopback in clear text, and the
reload of the certificates on SIGHUP (the real `python -m service.runtime.server`, two workers)
while an open channel keeps calling. The certificates are made here (`cryptography`)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.runtime import healthcheck
from service.runtime.server import ServerThread, create_server
from service.runtime.tls import ServerTls, TlsError, check_listen, is_loopback

REPO = Path(__file__).resolve().parents[2]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

# --- certificates ---


@dataclass
class Issued:
    key_pem: bytes
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(name: str) -> Issued:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM), key, cert)


def issue(ca: Issued, name: str, *, server: bool) -> Issued:
    """A leaf certificate signed by `ca`: for a server (names localhost and 127.0.0.1) or a client."""
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    return Issued(_pem_key(key), cert.public_bytes(serialization.Encoding.PEM), key, cert)


@dataclass
class Pki:
    """A CA with a server certificate and a client certificate, written to files."""

    ca: Issued
    server: Issued
    client: Issued
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def make(cls, folder: Path, name: str) -> "Pki":
        ca = make_ca(f"{name} CA")
        pki = cls(ca, issue(ca, "localhost", server=True), issue(ca, f"{name} client", server=False),
                  folder / f"{name}-ca.crt", folder / f"{name}-server.crt", folder / f"{name}-server.key")
        pki.ca_file.write_bytes(ca.cert_pem)
        pki.cert_file.write_bytes(pki.server.cert_pem)
        pki.key_file.write_bytes(pki.server.key_pem)
        return pki

    def trust(self, client: Issued | None = None) -> grpc.ChannelCredentials:
        """Client credentials trusting this CA, with a client certificate when given."""
        if client is None:
            return grpc.ssl_channel_credentials(self.ca.cert_pem)
        return grpc.ssl_channel_credentials(self.ca.cert_pem, client.key_pem, client.cert_pem)


@pytest.fixture(scope="module")
def pki_a(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("tls"), "a")


@pytest.fixture(scope="module")
def pki_b(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("tls"), "b")


# --- clients ---


def health(address: str, credentials: grpc.ChannelCredentials | None, timeout: float = 10) -> int:
    """One health check on a fresh channel (a fresh connection, so a fresh handshake)."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def refused_code(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode | None:
    try:
        health(address, credentials, timeout=10)
    except grpc.RpcError as e:
        return e.code()
    return None


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


SERVING = health_pb2.HealthCheckResponse.SERVING


# --- in process: handshakes and refusals ---


@pytest.fixture(scope="module")
def tls_server(start_server: Callable[..., ServerThread], pki_a: Pki) -> ServerThread:
    return start_server(tls=ServerTls(str(pki_a.cert_file), str(pki_a.key_file)))


@pytest.fixture(scope="module")
def mtls_server(start_server: Callable[..., ServerThread], pki_a: Pki) -> ServerThread:
    return start_server(tls=ServerTls(str(pki_a.cert_file), str(pki_a.key_file), str(pki_a.ca_file)))


def test_a_tls_handshake_and_calls_succeed_with_the_servers_ca(tls_server: ServerThread, pki_a: Pki):
    address = f"127.0.0.1:{tls_server.port}"
    start = time.monotonic()
    with grpc.secure_channel(address, pki_a.trust()) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
        first = time.monotonic() - start
        workspace_id = "t-" + secrets.token_hex(6)
        pb_grpc.WorkspaceServiceStub(channel).CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace_id), timeout=20)
        settings = pb_grpc.IdentityServiceStub(channel).GetSettings(pb.GetSettingsRequest(workspace_id=workspace_id), timeout=20)
    assert settings.settings.workspace_id == workspace_id
    assert healthcheck.is_serving(address, timeout=10, credentials=pki_a.trust())
    times = []
    for _ in range(20):  # fresh channels: each a new connection and a full handshake
        start = time.monotonic()
        with grpc.secure_channel(address, pki_a.trust()) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            times.append(time.monotonic() - start)
    times.sort()
    print(f"\nTLS connection ready (TCP + handshake): first {first * 1000:.1f} ms, median of 20 {times[10] * 1000:.1f} ms")


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(tls_server: ServerThread, pki_b: Pki):
    address = f"127.0.0.1:{tls_server.port}"
    assert refused_code(address, pki_b.trust()) == UNAVAILABLE
    assert refused_code(address, None) == UNAVAILABLE  # plaintext against TLS


def test_mtls_refuses_clients_without_a_certificate_or_with_another_cas(mtls_server: ServerThread, pki_a: Pki, pki_b: Pki):
    address = f"127.0.0.1:{mtls_server.port}"
    assert refused_code(address, pki_a.trust()) == UNAVAILABLE  # no client certificate
    # A client certificate of another CA, the client trusting the server's CA: refused.
    other = grpc.ssl_channel_credentials(pki_a.ca.cert_pem, pki_b.client.key_pem, pki_b.client.cert_pem)
    assert refused_code(address, other) == UNAVAILABLE
    assert health(address, pki_a.trust(pki_a.client)) == SERVING


def test_a_reload_serves_the_new_files_to_new_connections_and_keeps_a_bad_one_out(
    start_server: Callable[..., ServerThread], pki_a: Pki, pki_b: Pki, tmp_path: Path
):
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_bytes(pki_a.server.cert_pem)
    key.write_bytes(pki_a.server.key_pem)
    server_tls = ServerTls(str(cert), str(key))
    server = start_server(tls=server_tls)
    address = f"127.0.0.1:{server.port}"
    with grpc.secure_channel(address, pki_a.trust()) as open_channel:
        open_stub = health_pb2_grpc.HealthStub(open_channel)
        assert open_stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING

        # A certificate that does not go with the key: refused, the current one stays.
        cert.write_bytes(pki_b.server.cert_pem)
        assert not server_tls.reload()
        assert health(address, pki_a.trust()) == SERVING

        key.write_bytes(pki_b.server.key_pem)
        assert server_tls.reload()
        assert health(address, pki_b.trust()) == SERVING
        assert refused_code(address, pki_a.trust()) == UNAVAILABLE
        assert open_stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING


def test_bad_files_are_refused_with_the_file_named(pki_a: Pki, pki_b: Pki, tmp_path: Path):
    with pytest.raises(TlsError, match="do not go together"):
        ServerTls(str(pki_a.cert_file), str(pki_b.key_file))
    missing = tmp_path / "missing.crt"
    with pytest.raises(TlsError, match="missing.crt"):
        ServerTls(str(missing), str(pki_a.key_file))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TlsError, match="junk.pem is not PEM"):
        ServerTls(str(pki_a.cert_file), str(pki_a.key_file), str(junk))


# --- the loopback rule ---


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1:50051", True), ("localhost:1", True), ("[::1]:1", True), ("127.3.2.1:1", True),
        ("unix:/tmp/s", True), ("0.0.0.0:50051", False), ("[::]:1", False), (":50051", False),
        ("10.0.0.5:1", False), ("db.example.com:1", False),
    ],
)
def test_which_addresses_are_loopback(address: str, loopback: bool):
    assert is_loopback(address) is loopback
    assert (check_listen(address, tls=False, insecure=False) is None) is loopback
    assert check_listen(address, tls=True, insecure=False) is None
    assert check_listen(address, tls=False, insecure=True) is None


def test_create_server_refuses_an_open_address_without_tls(database_url: str):
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0:0 without TLS"):
        asyncio.run(create_server("0.0.0.0:0", database_url))


# --- the real server process ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    ours = ("DATABASE_URL", "WORKERS", "METRICS_PORT", "LISTEN_ADDRESS", "TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "INSECURE")
    return {k: v for k, v in os.environ.items() if k not in ours}


def run_server(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.runtime.server", *args],
        cwd=REPO, env=server_env(), capture_output=True, text=True, timeout=timeout,
    )


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.args = [sys.executable, "-m", "service.runtime.server", "--default-workspace", "", "--grace", "5", *args]
        self.args = [a.replace("{port}", str(self.port)) for a in self.args]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, env=server_env(), stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids_logging(self, text: str) -> set[int]:
        """The processes that logged a line containing `text` (the format puts the pid 4th)."""
        return {int(line.split()[3]) for line in self.log().splitlines() if text in line}

    def wait_serving(self, credentials: grpc.ChannelCredentials | None, timeout: float = 90) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}:\n{self.log()}"
            return healthcheck.is_serving(f"127.0.0.1:{self.port}", timeout=2, credentials=credentials)

        assert wait_until(ready, timeout, 0.2), f"server not serving in {timeout}s:\n{self.log()}"

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for p in started:
        if p.proc.poll() is None:  # a test that failed half-way: its supervisor and workers, by pid
            import psutil

            workers = psutil.Process(p.proc.pid).children()
            p.proc.kill()
            for worker in workers:
                worker.kill()
            p.proc.wait(timeout=10)


def test_the_server_refuses_to_listen_beyond_loopback_without_tls_or_insecure(database_url: str):
    for address in ("0.0.0.0:0", "[::]:0"):
        done = run_server(["--listen", address, "--database-url", database_url])
        assert done.returncode == 2, done.stderr
        assert f"refusing to listen on {address} without TLS" in done.stderr
        assert "--insecure" in done.stderr


def test_the_server_refuses_unusable_tls_files_at_start(database_url: str, pki_a: Pki, pki_b: Pki):
    done = run_server(["--database-url", database_url, "--tls-cert", str(pki_a.cert_file), "--tls-key", str(pki_b.key_file)])
    assert done.returncode == 2
    assert "do not go together" in done.stderr
    done = run_server(["--database-url", database_url, "--tls-client-ca", str(pki_a.ca_file)])
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr


def test_insecure_serves_beyond_loopback_and_says_so_loudly(
    database_url: str, engine, processes: list[ServerProcess], tmp_path: Path
):
    server = ServerProcess(
        ["--listen", "0.0.0.0:{port}", "--insecure", "--workers", "1", "--database-url", database_url], tmp_path / "log"
    )
    processes.append(server)
    server.wait_serving(None)
    # SIGHUP without TLS: nothing to reload, and the server goes on (one worker: no supervisor).
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "nothing to reload" in server.log(), 30), server.log()
    assert healthcheck.is_serving(f"127.0.0.1:{server.port}", timeout=10)
    assert server.terminate() == 0
    warnings = [line for line in server.log().splitlines() if " WARNING " in line and "WITHOUT TLS" in line]
    assert warnings and "0.0.0.0:" in warnings[0], server.log()


def test_sighup_reloads_the_certificates_in_every_worker_without_dropping_calls(
    database_url: str, engine, processes: list[ServerProcess], pki_a: Pki, pki_b: Pki, tmp_path: Path
):
    """Two workers serve cert A (mutual TLS, client CA A). The files are replaced by B's (a new
    CA, for the server and the clients), then SIGHUP to the supervisor: a new channel trusting
    only B, with a client certificate of B, is served by every worker, while an open channel of
    A's keeps calling throughout without a single failure."""
    cert, key, client_ca = tmp_path / "server.crt", tmp_path / "server.key", tmp_path / "clients-ca.crt"
    cert.write_bytes(pki_a.server.cert_pem)
    key.write_bytes(pki_a.server.key_pem)
    client_ca.write_bytes(pki_a.ca.cert_pem)
    server = ServerProcess(
        ["--listen", "127.0.0.1:{port}", "--workers", "2", "--database-url", database_url, "--log-level", "INFO",
         "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca)],
        tmp_path / "log",
    )
    processes.append(server)
    address = f"127.0.0.1:{server.port}"
    creds_a, creds_b = pki_a.trust(pki_a.client), pki_b.trust(pki_b.client)
    server.wait_serving(creds_a)
    assert wait_until(lambda: len(server.pids_logging("serving on")) == 2, 60), server.log()
    worker_pids = server.pids_logging("serving on")

    workspace_id = "t-" + secrets.token_hex(6)
    results: list[bool] = []
    errors: list[str] = []
    stop = threading.Event()
    with grpc.secure_channel(address, creds_a) as open_channel:
        pb_grpc.WorkspaceServiceStub(open_channel).CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=workspace_id), timeout=30)
        stub = pb_grpc.IdentityServiceStub(open_channel)

        def keep_calling() -> None:
            while not stop.is_set():
                try:
                    stub.GetSettings(pb.GetSettingsRequest(workspace_id=workspace_id), timeout=30)
                    results.append(True)
                except grpc.RpcError as e:
                    errors.append(f"{e.code()}: {e.details()}")
                    results.append(False)

        caller = threading.Thread(target=keep_calling, daemon=True)
        caller.start()
        assert wait_until(lambda: len(results) >= 5, 30)

        for path, data in ((cert, pki_b.server.cert_pem), (key, pki_b.server.key_pem), (client_ca, pki_b.ca.cert_pem)):
            (path.parent / (path.name + ".new")).write_bytes(data)
            os.replace(path.parent / (path.name + ".new"), path)  # as an operator would: atomically
        calls_before = len(results)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)

        def b_is_served() -> bool:
            return refused_code(address, creds_b) is None

        assert wait_until(b_is_served, 60), server.log()
        reload_seconds = time.monotonic() - sent
        # Every worker reloaded (each logs it), so any new connection gets B's certificate...
        assert wait_until(lambda: server.log().count("certificates reloaded") == 2, 30), server.log()
        reloaded_pids = server.pids_logging("certificates reloaded")
        for _ in range(6):
            assert health(address, creds_b) == SERVING
        # ...and requires B's client certificate: A's is refused on a new connection.
        assert refused_code(address, creds_a) == UNAVAILABLE
        assert refused_code(address, pki_b.trust(pki_a.client)) == UNAVAILABLE
        # The open channel of A's kept calling all along (its connection was never dropped).
        assert wait_until(lambda: len(results) >= calls_before + 20, 60)
        stop.set()
        caller.join(timeout=60)
    assert not errors, errors[:5]
    assert all(results) and len(results) > calls_before
    assert reloaded_pids == worker_pids, server.log()
    assert server.proc.poll() is None, "SIGHUP must not end the server"
    assert server.terminate() == 0, server.log()
    print(
        f"\nSIGHUP to a new connection served with the new certificate: {reload_seconds * 1000:.0f} ms; "
        f"{len(results) - calls_before} calls on the open channel after SIGHUP, none failed; workers {sorted(worker_pids)}"
    )


def test_the_health_check_command_speaks_tls_and_mtls(mtls_server: ServerThread, pki_a: Pki, tmp_path: Path):
    client_cert, client_key = tmp_path / "client.crt", tmp_path / "client.key"
    client_cert.write_bytes(pki_a.client.cert_pem)
    client_key.write_bytes(pki_a.client.key_pem)
    command = [sys.executable, "-m", "service.runtime.healthcheck", f"127.0.0.1:{mtls_server.port}", "--tls-ca", str(pki_a.ca_file)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHCHECK_")}
    done = subprocess.run(
        [*command, "--tls-cert", str(client_cert), "--tls-key", str(client_key), "--server-name", "localhost"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # no client certificate
    assert done.returncode == 1 and "not serving" in done.stderr


def test_tls_flags_default_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from service.runtime.server import parse_args

    for name in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "INSECURE"):
        monkeypatch.delenv(name, raising=False)
    args = parse_args([])
    assert (args.tls_cert, args.tls_key, args.tls_client_ca, args.insecure) == ("", "", "", False)
    monkeypatch.setenv("TLS_CERT", "/c.crt")
    monkeypatch.setenv("TLS_KEY", "/c.key")
    monkeypatch.setenv("TLS_CLIENT_CA", "/ca.crt")
    monkeypatch.setenv("INSECURE", "1")
    args = parse_args([])
    assert (args.tls_cert, args.tls_key, args.tls_client_ca, args.insecure) == ("/c.crt", "/c.key", "/ca.crt", True)


def test_migrate_only_needs_no_tls_whatever_the_listen_address(database_url: str, engine):
    done = run_server(["--migrate-only", "--listen", "0.0.0.0:50051", "--database-url", database_url, "--log-level", "WARNING"])
    assert done.returncode == 0, done.stderr
