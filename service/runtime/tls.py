"""TLS for the server: the certificate and key files (and, for mutual TLS, the CA that signs the
clients' certificates), read and checked; a reload on SIGHUP that never restarts the server; and
the rule that a server without TLS listens only on loopback unless told `--insecure`.

gRPC asks the fetcher of `grpc.dynamic_ssl_server_credentials` for a new configuration before
every handshake. The files are read and checked when SIGHUP arrives (`ServerTls.reload`, on the
worker's event loop), so that a bad file is reported then and the current certificate kept; the
fetcher only hands over a configuration that is ready, once, and does no I/O. Connections already
open keep the certificate they were made with: no call is dropped."""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass

import grpc

log = logging.getLogger("identity.tls")


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsMaterial:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.cert_chain)], root_certificates=self.client_ca
        )


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TlsError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise TlsError(f"the {what} {path} is not PEM")
    return data


def _no_password() -> bytes:
    raise TlsError("encrypted private keys are not supported")


def load(cert_file: str, key_file: str, client_ca_file: str | None = None, attempts: int = 3) -> TlsMaterial:
    """Reads the files and checks them with OpenSSL (the key matches the certificate, the CA
    parses). The files are read again after the check: if they changed meanwhile (an operator
    half-way through replacing them), the check runs again on the new contents."""
    for _ in range(attempts):
        material = TlsMaterial(
            _read(cert_file, "certificate"),
            _read(key_file, "private key"),
            _read(client_ca_file, "client CA") if client_ca_file else None,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert_file, key_file, password=_no_password)
        except ssl.SSLError as e:
            raise TlsError(f"the certificate {cert_file} and the key {key_file} do not go together: {e}") from None
        if material.client_ca is not None:
            try:
                context.load_verify_locations(cadata=material.client_ca.decode("ascii", "replace"))
            except (ssl.SSLError, ValueError) as e:
                raise TlsError(f"the client CA {client_ca_file} is not a PEM certificate: {e}") from None
        again = (
            _read(cert_file, "certificate"),
            _read(key_file, "private key"),
            _read(client_ca_file, "client CA") if client_ca_file else None,
        )
        if again == (material.cert_chain, material.private_key, material.client_ca):
            return material
    raise TlsError(f"{cert_file} or {key_file} kept changing while being read")


class ServerTls:
    """The server's TLS files and its reloadable credentials (one per worker process)."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None):
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.material = load(cert_file, key_file, client_ca_file)
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.reloads = 0

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.material.configuration(), self._fetch, require_client_authentication=self.mutual
        )

    def reload(self) -> bool:
        """Reads the files again (SIGHUP): new handshakes use them; on any error the current
        certificate stays and the error is logged."""
        try:
            material = load(self.cert_file, self.key_file, self.client_ca_file)
        except TlsError as e:
            log.error("TLS reload failed, keeping the current certificate: %s", e)
            return False
        with self._lock:
            self.material = material
            self._pending = material.configuration()
            self.reloads += 1
        log.info("TLS: certificates reloaded from %s (new connections use them)", self.cert_file)
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: the new configuration once after a reload,
        else None (unchanged)."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def is_loopback(address: str) -> bool:
    """Whether a listen address ("host:port", "[v6]:port", "unix:path") stays on this machine."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost, or "" (every interface)


def check_listen(address: str, tls: bool, insecure: bool) -> str | None:
    """Why the server must not listen on `address`, or None. Without TLS only loopback, unless
    `insecure`."""
    if tls or insecure or is_loopback(address):
        return None
    return (
        f"refusing to listen on {address} without TLS: API keys and data would cross the network in "
        "clear text. Give --tls-cert and --tls-key (TLS_CERT, TLS_KEY), or --insecure (INSECURE=1) "
        "to serve in clear text anyway"
    )


def from_args(cert_file: str | None, key_file: str | None, client_ca_file: str | None) -> ServerTls | None:
    """The server's TLS from its options, or None when none are given."""
    if not cert_file and not key_file and not client_ca_file:
        return None
    if not cert_file or not key_file:
        raise TlsError("--tls-cert and --tls-key go together (and --tls-client-ca needs both)")
    return ServerTls(cert_file, key_file, client_ca_file or None)


__all__ = ["ServerTls", "TlsError", "TlsMaterial", "check_listen", "from_args", "is_loopback", "load"]
