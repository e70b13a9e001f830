"""Asks a server's gRPC health service; exit 0 when SERVING. Used by the container's
HEALTHCHECK and by .ci/run: `python -m service.runtime.healthcheck [host:port] [--wait SECONDS]`.
Against a TLS server, `--tls-ca FILE` (the CA to trust; HEALTHCHECK_TLS_CA), and for mutual TLS a
client certificate, `--tls-cert` and `--tls-key` (HEALTHCHECK_TLS_CERT, HEALTHCHECK_TLS_KEY);
`--server-name` (HEALTHCHECK_SERVER_NAME) when the certificate does not name the address's host."""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _channel(address: str, credentials: grpc.ChannelCredentials | None, server_name: str | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def tls_credentials(ca_file: str, cert_file: str = "", key_file: str = "") -> grpc.ChannelCredentials:
    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def is_serving(
    address: str,
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> bool:
    with _channel(address, credentials, server_name) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--wait", type=float, default=0, help="keep asking for up to this many seconds")
    parser.add_argument("--tls-ca", default=os.environ.get("HEALTHCHECK_TLS_CA", ""), help="PEM CA to trust: use TLS")
    parser.add_argument("--tls-cert", default=os.environ.get("HEALTHCHECK_TLS_CERT", ""), help="client certificate (mTLS)")
    parser.add_argument("--tls-key", default=os.environ.get("HEALTHCHECK_TLS_KEY", ""), help="client key (mTLS)")
    parser.add_argument("--server-name", default=os.environ.get("HEALTHCHECK_SERVER_NAME", ""), help="name to verify")
    args = parser.parse_args()
    credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    deadline = time.monotonic() + args.wait
    while True:
        if is_serving(args.address, credentials=credentials, server_name=args.server_name or None):
            print(f"{args.address}: SERVING")
            return 0
        if time.monotonic() >= deadline:
            print(f"{args.address}: not serving", file=sys.stderr)
            return 1
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
