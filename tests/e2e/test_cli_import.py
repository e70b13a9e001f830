"""`identity-service import`: a CSV streamed to StreamImportPeople with a progress bar, refused
rows written beside the file, and --resume after an interruption (R81). Against a real server
applying 3 rows per batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.cli import cli
from tests.e2e.helpers import get

ROWS = 20
FILE = "id,email,plan\n" + "".join(
    f"u{i},u{i}@example.com,p{i % 3}\n" if i % 6 else f" bad{i},b{i}@example.com,x\n" for i in range(ROWS)
)


@pytest.fixture(scope="module")
def batched(start_server):
    running = start_server(import_batch_rows=3, pool_size=2)
    yield running
    running.stop(0)


@pytest.fixture
def run(batched):
    def invoke(*args: str):
        return CliRunner().invoke(cli, [*args, "--address", f"127.0.0.1:{batched.port}"], catch_exceptions=False)

    return invoke


@pytest.fixture
def people_csv(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(FILE)
    return path


def test_import_reports_and_writes_the_refused_rows_beside_the_file(run, stub, workspace, people_csv):
    result = run("import", str(people_csv), "--workspace", workspace)
    assert result.exit_code == 0, result.output
    refused = [i for i in range(ROWS) if i % 6 == 0]
    assert f"imported {people_csv}: {ROWS - len(refused)} applied, {len(refused)} refused" in result.output
    refused_path = people_csv.with_name("people.refused.csv")
    assert f"refused rows: {refused_path}" in result.output
    rows = list(csv.reader(refused_path.open()))
    assert rows[0] == ["row", "code", "reason", "message", "id", "email", "plan"]
    assert [(r[0], r[1], r[2], r[4]) for r in rows[1:]] == [
        (str(i + 1), "INVALID_ARGUMENT", "INVALID_ID", f" bad{i}") for i in refused
    ]
    assert get(stub, workspace, id="u1").email == "u1@example.com"
    assert people_csv.with_name("people.csv.import-id").read_text().strip()


def test_resume_applies_the_rest_and_nothing_twice(run, batched, stub, workspace, people_csv):
    # A first import of the file, cut after its first batch (as Ctrl-C or a lost network would).
    import_id = "5f0c8a58-3b7e-4bd5-9a0c-4bb1a3a1c0de"
    people_csv.with_name("people.csv.import-id").write_text(import_id + "\n")
    with grpc.insecure_channel(f"127.0.0.1:{batched.port}") as channel:
        requests = iter(
            [pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=import_id, chunk=FILE.encode())]
        )
        call = pb_grpc.IdentityServiceStub(channel).StreamImportPeople(requests, timeout=30)
        first = next(call)
        call.cancel()
    done = first.progress.rows_applied + first.progress.rows_refused
    assert 0 < done < ROWS

    result = run("import", str(people_csv), "--workspace", workspace, "--resume", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["import_id"] == import_id
    assert summary["rows_skipped"] >= done and summary["rows_read"] == ROWS
    assert summary["rows_applied"] + summary["rows_refused"] == ROWS
    assert get(stub, workspace, id=f"u{ROWS - 1}").email == f"u{ROWS - 1}@example.com"
    history = stub.ListPersonHistory(
        pb.ListPersonHistoryRequest(workspace_id=workspace, person=pb.PersonRef(id="u1")), timeout=10
    )
    assert [e.kind for e in history.events] == [pb.PERSON_EVENT_KIND_CREATED]  # applied once


def test_resume_without_an_earlier_import_is_a_usage_error(run, workspace, people_csv):
    result = run("import", str(people_csv), "--workspace", workspace, "--resume")
    assert result.exit_code == 2 and "no earlier import of this file" in result.output


def test_import_into_an_unknown_workspace_exits_2_with_one_line(run, people_csv):
    result = run("import", str(people_csv), "--workspace", "cli-no-such-workspace", "--no-progress")
    assert result.exit_code == 2
    assert "error: NOT_FOUND" in result.output and "--resume" in result.output
