"""Asks a server's gRPC health service; exit 0 when SERVING. Used by the container's
HEALTHCHECK and by .ci/run: `python -m service.runtime.healthcheck [host:port] [--wait SECONDS]`."""

from __future__ import annotations

import argparse
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def is_serving(address: str, timeout: float = 2.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--wait", type=float, default=0, help="keep asking for up to this many seconds")
    args = parser.parse_args()
    deadline = time.monotonic() + args.wait
    while True:
        if is_serving(args.address):
            print(f"{args.address}: SERVING")
            return 0
        if time.monotonic() >= deadline:
            print(f"{args.address}: not serving", file=sys.stderr)
            return 1
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
