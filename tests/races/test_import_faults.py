"""R81 through a server killed with SIGKILL: a streamed import cut anywhere (after a batch's
answer, or at a random moment mid-batch) has applied a prefix of its rows; streamed again under
the same import_id to the restarted server, it ends exactly as an import never interrupted (the
same people, the same change log up to cio_ids and times), with no row applied twice."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import psutil
import pytest

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from tests.e2e.helpers import workspace_world
from tests.races.harness import ServerProcess

ROWS = 4000  # four batches of the server's 1,000, and a last one
CHUNK = 2048


def _row(i: int) -> str:
    if i % 97 == 0:
        return f" bad{i},,\n"  # refused (R3)
    if i % 50 == 0:
        return f"u{i % 1500},u{(i + 7) % 1500}@example.com,p{i}\n"  # two people meet: merged or refused
    return f"u{i % 1500},{f'U{i % 1500}@Example.com' if i % 3 else ''},p{i}\n"  # created, then updated


FILE = ("id,email,plan\n" + "".join(_row(i) for i in range(ROWS))).encode()


def _requests(workspace: str, import_id: str, before_chunk=lambda n: None) -> Iterator[pb.StreamImportPeopleRequest]:
    yield pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=import_id)
    for n, start in enumerate(range(0, len(FILE), CHUNK)):
        before_chunk(n)
        yield pb.StreamImportPeopleRequest(chunk=FILE[start : start + CHUNK])


def _sigkill(server: ServerProcess) -> None:
    """SIGKILL to the server and its workers at once (no pid is read between two kills)."""
    assert server.proc is not None
    try:
        family = [server.proc.pid, *(c.pid for c in psutil.Process(server.proc.pid).children(recursive=True))]
    except psutil.Error:
        family = [server.proc.pid]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.proc.wait(timeout=30)


def _stream(address: str, workspace: str, import_id: str) -> list[pb.StreamImportPeopleResponse]:
    with grpc.insecure_channel(address) as channel:
        return list(pb_grpc.IdentityServiceStub(channel).StreamImportPeople(_requests(workspace, import_id), timeout=120))


def _workspace(address: str) -> str:
    workspace = "imp-" + uuid.uuid4().hex[:10]
    with grpc.insecure_channel(address) as channel:
        pb_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            pb.CreateWorkspaceRequest(workspace_id=workspace), timeout=30
        )
    return workspace


@pytest.fixture
def server_factory(database_url: str, engine, tmp_path: Path) -> Iterator:
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        server = ServerProcess(database_url, tmp_path / f"server-{len(started)}.log", workers=2).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("cut", ["after the first answer", "chunk 12", "chunk 25", "chunk 38"])
def test_r81_an_import_killed_with_sigkill_resumes_as_if_never_interrupted(server_factory, engine, cut, figures):
    server = server_factory()
    whole = _workspace(server.address)
    complete = _stream(server.address, whole, str(uuid.uuid4()))[-1].progress
    assert complete.done and complete.rows_applied + complete.rows_refused == ROWS

    interrupted, import_id = _workspace(server.address), str(uuid.uuid4())
    answers: list[pb.StreamImportPeopleResponse] = []
    killed = threading.Event()

    rng = random.Random(cut)
    kill_at_chunk = int(cut.split()[1]) if cut.startswith("chunk") else -1

    def kill_mid_batch(n: int) -> None:
        # Paced, so that the server keeps up and the kill lands at about this chunk's rows; the
        # chunks after it are never sent, so the server cannot have finished the file.
        if kill_at_chunk >= 0:
            time.sleep(0.02)
        if n == kill_at_chunk:
            time.sleep(rng.uniform(0, 0.05))
            killed.set()
            _sigkill(server)

    def run() -> None:
        try:
            with grpc.insecure_channel(server.address) as channel:
                for response in pb_grpc.IdentityServiceStub(channel).StreamImportPeople(
                    _requests(interrupted, import_id, kill_mid_batch), timeout=120
                ):
                    answers.append(response)
                    if cut == "after the first answer" and not killed.is_set():
                        killed.set()
                        _sigkill(server)
        except grpc.RpcError as error:
            failures.append(error)

    failures: list[grpc.RpcError] = []
    client = threading.Thread(target=run)
    client.start()
    client.join(120)
    assert not client.is_alive()
    assert all(f.code() == grpc.StatusCode.UNAVAILABLE for f in failures), failures
    assert killed.is_set(), (failures, answers)
    answered = answers[-1].progress.rows_applied + answers[-1].progress.rows_refused if answers else 0

    restarted = server_factory()
    again = _stream(restarted.address, interrupted, import_id)

    last = again[-1].progress
    assert last.done and last.rows_read == ROWS
    assert ROWS > last.rows_skipped >= answered  # a prefix was applied, and the rest now
    assert (last.rows_applied, last.rows_refused) == (complete.rows_applied, complete.rows_refused)
    assert workspace_world(engine, interrupted) == workspace_world(engine, whole)
    figures({"cut": cut, "rows": ROWS, "answered_before_kill": answered, "skipped_on_resume": last.rows_skipped})
