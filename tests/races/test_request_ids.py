"""Safe retries (R70) against the real multi-process server: a call whose process dies between
its COMMIT and its answer is retried with the same request_id and applied once; calls sent
twice at the same moment on two connections apply once."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import sqlalchemy as sa

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from tests.races.harness import CHANNEL_OPTIONS, ServerProcess, wait_until

PAUSED = re.compile(r" (\d+) \S+ test hook: paused after COMMIT")


@pytest.fixture
def paused_server(engine: sa.Engine, database_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """The real server (2 workers) whose calls with one request_id hang after their COMMIT (the
    test hook IDENTITY_TEST_PAUSE_AFTER_COMMIT), logging at INFO so the hook's line names the pid."""
    request_id = str(uuid.uuid4())
    os.environ["IDENTITY_TEST_PAUSE_AFTER_COMMIT"] = request_id
    try:
        server = ServerProcess(database_url, tmp_path / "server.log", workers=2, extra_args=["--log-level", "INFO"])
        server.start()
    finally:
        del os.environ["IDENTITY_TEST_PAUSE_AFTER_COMMIT"]
    try:
        yield server, request_id
    finally:
        server.stop()


def _workspace(stub: Any) -> str:
    ws = f"r70-{uuid.uuid4().hex[:12]}"
    pb_grpc.WorkspaceServiceStub(stub).CreateWorkspace(pb.CreateWorkspaceRequest(workspace_id=ws), timeout=10)
    return ws


def _events(engine: sa.Engine, ws: str) -> list[tuple[int, str, str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT sequence, kind, rpc, request_id FROM person_events WHERE workspace_id = :ws ORDER BY sequence"
        ), {"ws": ws})]


def test_r70_a_worker_killed_after_its_commit_the_retry_gets_the_answer_and_nothing_applies_twice(
    paused_server: tuple[ServerProcess, str], engine: sa.Engine
) -> None:
    server, request_id = paused_server
    request = pb.IdentifyRequest(workspace_id="", id="retry-1", email="retry-1@example.com", request_id=request_id)
    request.attributes.update({"plan": "pro"})
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        ws = _workspace(channel)
        request.workspace_id = ws
        with pytest.raises(grpc.RpcError) as lost:  # committed, but the answer never comes
            pb_grpc.IdentityServiceStub(channel).Identify(request, timeout=3)
        assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: PAUSED.search(server.log_path.read_text(errors="replace")) is not None, 10)
    victim = int(PAUSED.search(server.log_path.read_text(errors="replace")).group(1))  # type: ignore[union-attr]
    assert victim in server.worker_pids()
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), 20, 0.05)
    assert _events(engine, ws) == [(1, "CREATED", "Identify", request_id)]  # the first call did commit

    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.IdentityServiceStub(channel)
        retried = stub.Identify(request, timeout=10)
        assert retried.outcome == pb.IDENTIFY_OUTCOME_CREATED and retried.person.id == "retry-1"
        again = stub.Identify(request, timeout=10)
        assert again == retried
        person = stub.GetPerson(pb.GetPersonRequest(workspace_id=ws, person=pb.PersonRef(id="retry-1")), timeout=10)
        assert person.person.cio_id == retried.person.cio_id
    assert _events(engine, ws) == [(1, "CREATED", "Identify", request_id)]  # applied once


def test_r70_every_call_sent_twice_at_once_on_two_connections_applies_once(race_server: ServerProcess, engine: sa.Engine) -> None:
    """A storm of writes (creations, updates, merges, identifier changes, deletions) over a small
    pool of people, each call sent twice at the same moment on two connections with the same
    request_id: both answers are the same, and no request_id has more than one application in
    the change log (each of these calls appends at most one event)."""
    rng = random.Random(70)
    calls = 300
    with grpc.insecure_channel(race_server.address, options=CHANNEL_OPTIONS) as setup:
        ws = _workspace(setup)

    def request(n: int) -> tuple[str, Any]:
        a, b = rng.randrange(12), rng.randrange(12)
        kind = rng.random()
        rid = str(uuid.uuid4())
        if kind < 0.5:
            message = pb.IdentifyRequest(workspace_id=ws, id=f"p{a}", request_id=rid)
            if rng.random() < 0.5:
                message.email = f"p{b}@example.com"
            message.attributes.update({"n": n})
            return "Identify", message
        if kind < 0.7:
            return "UpdateIdentifier", pb.UpdateIdentifierRequest(
                workspace_id=ws, person=pb.PersonRef(id=f"p{a}"), identifier=pb.IDENTIFIER_TYPE_EMAIL,
                value=f"p{b}-{n}@example.com", request_id=rid)
        if kind < 0.8:
            return "DeleteIdentifier", pb.DeleteIdentifierRequest(
                workspace_id=ws, person=pb.PersonRef(email=f"p{a}@example.com"), identifier=pb.IDENTIFIER_TYPE_ID,
                request_id=rid)
        if kind < 0.9:
            return "MergePeople", pb.MergePeopleRequest(
                workspace_id=ws, primary=pb.PersonRef(id=f"p{a}"), secondary=pb.PersonRef(email=f"p{b}@example.com"),
                request_id=rid)
        return "DeletePerson", pb.DeletePersonRequest(workspace_id=ws, person=pb.PersonRef(id=f"p{a}"), request_id=rid)

    plans = [request(n) for n in range(calls)]
    answers: dict[int, list[tuple[str, Any]]] = {n: [] for n in range(calls)}
    channels = [grpc.insecure_channel(race_server.address, options=CHANNEL_OPTIONS) for _ in range(2)]
    try:
        stubs = [pb_grpc.IdentityServiceStub(c) for c in channels]

        def send(n: int, side: int, barrier: threading.Barrier) -> None:
            method, message = plans[n]
            barrier.wait()
            try:
                answers[n].append(("OK", getattr(stubs[side], method)(message, timeout=20)))
            except grpc.RpcError as error:
                answers[n].append((error.code().name, error.details()))

        for start in range(0, calls, 10):  # ten pairs at a time
            threads = []
            for n in range(start, min(calls, start + 10)):
                barrier = threading.Barrier(2)
                threads += [threading.Thread(target=send, args=(n, side, barrier)) for side in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
    finally:
        for c in channels:
            c.close()

    applied = refused = 0
    for n, pair in answers.items():
        assert len(pair) == 2, (n, pair)
        assert "INTERNAL" not in (pair[0][0], pair[1][0]) and "UNKNOWN" not in (pair[0][0], pair[1][0]), pair
        codes = sorted(code for code, _ in pair)
        # Twins queue on their request_id: once one is applied, the other gets its answer. A
        # refusal stores nothing, so the other twin is then judged on its own (and may apply):
        # one OK beside one refusal is that. (Which of the two answered first cannot be told
        # here: the client threads record the answers in their own order, not the server's.)
        if codes == ["OK", "OK"]:
            assert pair[0][1] == pair[1][1], (plans[n], pair)  # the second is the first's stored answer
            applied += 1
        else:
            refused += 1
    per_request: dict[str, int] = {}
    for _, _, _, rid in _events(engine, ws):
        per_request[rid] = per_request.get(rid, 0) + 1
    twice = {rid: count for rid, count in per_request.items() if count > 1}
    print(f"\nr70 pairs: {calls}, both OK {applied}, refused {refused}, events {sum(per_request.values())}")
    assert not twice, f"applied more than once: {twice}"
    assert applied >= calls // 4, "the storm should mostly apply"
