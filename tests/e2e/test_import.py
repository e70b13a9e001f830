"""ImportPeople: a CSV imported row by row as Identify calls, where an import never changes an
existing person's id (R25)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from identity.v1 import identity_pb2 as pb
from service.api.csv_import import MAX_ROWS
from tests.e2e.helpers import UNKNOWN_CIO_ID, assert_invalid, attrs, get, identify, refused


def _import(stub, workspace: str, text: str) -> pb.ImportPeopleResponse:
    return stub.ImportPeople(pb.ImportPeopleRequest(workspace_id=workspace, csv=text.encode()))


def _reason(row: pb.ImportRowResult) -> str:
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in row.error.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR))
    assert info.domain == "identity.v1"
    return info.reason


def test_r25_an_import_never_changes_an_existing_id(stub, workspace, people_rows):
    p = identify(stub, workspace, id="ab100", email="p@example.com").person
    before = people_rows(workspace)
    response = _import(stub, workspace, f"cio_id,id,plan\n{p.cio_id},cd200,pro\n")
    (row,) = response.rows
    assert (response.applied_count, response.refused_count) == (0, 1)
    assert row.row == 1 and not row.cio_id and row.outcome == pb.IDENTIFY_OUTCOME_UNSPECIFIED
    assert row.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert _reason(row) == "ID_CHANGE_IN_IMPORT"
    assert people_rows(workspace) == before  # the refused row changed nothing, not even "plan"
    # The same change through the API, by cio_id, is allowed (R21): only imports are barred.
    changed = stub.Identify(pb.IdentifyRequest(workspace_id=workspace, cio_id=p.cio_id, id="cd200"))
    assert changed.person.id == "cd200"


def test_r25_an_import_by_email_cannot_change_an_id_either(stub, workspace):
    identify(stub, workspace, id="ab100", email="p@example.com")
    (row,) = _import(stub, workspace, "id,email\ncd200,P@Example.com\n").rows
    assert _reason(row) == "ID_CHANGE_REQUIRES_CIO_ID"
    assert get(stub, workspace, email="p@example.com").id == "ab100"


def test_import_creates_updates_and_reports_each_row(stub, workspace):
    existing = identify(stub, workspace, email="b@example.com").person
    response = _import(
        stub,
        workspace,
        "id,email,plan,seats\n"
        "ab100,a@example.com,pro,3\n"  # created
        ",B@Example.com,free,\n"  # the same person as b@example.com: updated, seats untouched
        "ab100,a@example.com,pro,3\n"  # nothing new: unchanged
        " bad,,,\n"  # R3: refused, the others still apply
        "\n"  # a blank line is skipped, and not counted as a row
        "cd200,b@example.com,,\n",  # sets the id of the person found by email (R11)
    )
    outcomes = [(r.row, r.outcome) for r in response.rows]
    assert outcomes == [
        (1, pb.IDENTIFY_OUTCOME_CREATED),
        (2, pb.IDENTIFY_OUTCOME_UPDATED),
        (3, pb.IDENTIFY_OUTCOME_UNCHANGED),
        (4, pb.IDENTIFY_OUTCOME_UNSPECIFIED),
        (5, pb.IDENTIFY_OUTCOME_UPDATED),
    ]
    assert (response.applied_count, response.refused_count) == (4, 1)
    assert response.rows[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert _reason(response.rows[3]) == "INVALID_ID"
    assert response.rows[1].cio_id == existing.cio_id == response.rows[4].cio_id
    assert attrs(get(stub, workspace, id="ab100")) == {"plan": "pro", "seats": "3"}
    b = get(stub, workspace, id="cd200")
    assert b.email == "b@example.com" and attrs(b) == {"plan": "free"}


def test_import_of_a_malformed_file_is_refused_whole(stub, workspace, people_rows):
    for text in ("", "id,email\nab100\n", "id,id\nab100,cd200\n", "id,,x\nab100,a,b\n"):
        refusal = refused(stub.ImportPeople, pb.ImportPeopleRequest(workspace_id=workspace, csv=text.encode()),
                          grpc.StatusCode.INVALID_ARGUMENT)
        assert_invalid(refusal, "csv")
    refusal = refused(stub.ImportPeople, pb.ImportPeopleRequest(workspace_id=workspace, csv=b"id\n\xff\xfe\n"),
                      grpc.StatusCode.INVALID_ARGUMENT)
    assert refusal.reason == "INVALID_CSV"
    too_many = "id\n" + "".join(f"u{i}\n" for i in range(MAX_ROWS + 1))
    refusal = refused(stub.ImportPeople, pb.ImportPeopleRequest(workspace_id=workspace, csv=too_many.encode()),
                      grpc.StatusCode.INVALID_ARGUMENT)
    assert refusal.reason == "TOO_MANY_ROWS"
    assert people_rows(workspace) == []


def test_r8_import_into_an_unknown_workspace_is_not_found(stub):
    refusal = refused(stub.ImportPeople, pb.ImportPeopleRequest(workspace_id="no-such-workspace", csv=b"id\nab100\n"),
                      grpc.StatusCode.NOT_FOUND)
    assert refusal.reason == "WORKSPACE_NOT_FOUND"


def test_r10_an_import_row_with_an_unknown_cio_id_never_creates(stub, workspace, people_rows):
    (row,) = _import(stub, workspace, f"cio_id,id\n{UNKNOWN_CIO_ID},ab100\n").rows
    assert _reason(row) == "PERSON_NOT_FOUND"
    assert people_rows(workspace) == []
