"""StreamImportPeople (R80, R81): a streamed file ends exactly as identifying its rows one by one
would (the unary ImportPeople, each row its own transaction, is the reference), whatever the
batches and however the bytes are split; an interrupted import resumes without applying a row
twice. The server here applies 3 rows per batch, so that rows interact across batches."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Iterator

import grpc
import sqlalchemy as sa
import pytest
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from service.domain import Mode
from tests.e2e.helpers import identify, parse, workspace_world

BATCH = 3


@pytest.fixture(scope="module")
def bulk_server(start_server):
    """This module's server, stopped at the module's end (its connections go with it)."""
    running = start_server(import_batch_rows=BATCH, pool_size=3)
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def bulk_stub(bulk_server) -> Iterator[pb_grpc.IdentityServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{bulk_server.port}") as channel:
        yield pb_grpc.IdentityServiceStub(channel)


def _requests(workspace: str, import_id: str, data: bytes, chunk: int) -> Iterator[pb.StreamImportPeopleRequest]:
    yield pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=import_id)
    for start in range(0, len(data), chunk):
        yield pb.StreamImportPeopleRequest(chunk=data[start : start + chunk])


def stream(stub, workspace: str, data: bytes, import_id: str | None = None, chunk: int = 64) -> list[pb.StreamImportPeopleResponse]:
    import_id = import_id or str(uuid.uuid4())
    return list(stub.StreamImportPeople(_requests(workspace, import_id, data, chunk), timeout=60))


def _refusals(responses: list[pb.StreamImportPeopleResponse]) -> dict[int, tuple[int, str]]:
    found = {}
    for response in responses:
        for row in response.refused_rows:
            assert row.row not in found, f"row {row.row} reported twice"
            found[row.row] = (row.error.code, _reason(row.error))
    return found


def _reason(status: Any) -> str:
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
            return info.reason
    bad = error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail.Unpack(bad)
            return ",".join(v.reason for v in bad.field_violations)
    return ""


def _reference(stub, workspace: str, data: bytes) -> tuple[int, dict[int, tuple[int, str]]]:
    """The unary import: each row identified in its own transaction, one by one."""
    response = stub.ImportPeople(pb.ImportPeopleRequest(workspace_id=workspace, csv=data), timeout=60)
    refused = {r.row: (r.error.code, _reason(r.error)) for r in response.rows if r.error.code}
    return response.applied_count, refused


@pytest.fixture
def world(engine):
    return lambda workspace: workspace_world(engine, workspace)


# --- the same answers as one by one (R80) ---

IDS = ["a1", "a2", "a3", "A1", " bad"]
EMAILS = ["x@example.com", "X@Example.COM", "y@example.com", "Y@EXAMPLE.COM", "z@example.com", "not-an-email"]
CIO_IDS = ["{p0}", "{p1}", "00000000000000000000", "short"]


@st.composite
def files(draw) -> str:
    """Rows that meet: a few ids and emails (in case variants) shared by many rows, cio_ids of
    the people already there (R25's id changes), unknown and malformed values."""
    row = st.tuples(
        st.sampled_from([""] * 8 + CIO_IDS),
        st.sampled_from([""] * 3 + IDS),
        st.sampled_from([""] * 2 + EMAILS),
        st.sampled_from(["", "free", "pro", '"a, ""quoted""\nline"']),
    ).filter(lambda r: any(r[:3]))
    rows = draw(st.lists(row, min_size=1, max_size=16))
    return "cio_id,id,email,plan\n" + "".join(",".join(r) + "\n" for r in rows)


SETTINGS = [
    (Mode.EMAIL_OR_ID, {"auto_merge": True}),
    (Mode.EMAIL_OR_ID, {}),
    (Mode.EMAIL_OR_ID, {"email_updatable_by_id": True, "sole_identifier_updatable": True}),
    (Mode.ID_ONLY, {}),
    (Mode.EMAIL_ONLY, {}),
]


def _seeded(stub, make_workspace, mode: Mode, options: dict) -> tuple[str, dict[str, str]]:
    """A workspace with two people already in it; their cio_ids by placeholder."""
    workspace = make_workspace(mode, **options)
    seeds = {
        Mode.EMAIL_OR_ID: [dict(id="a1", email="z@example.com"), dict(email="y@example.com")],
        Mode.ID_ONLY: [dict(id="a1", email="z@example.com"), dict(id="a9")],
        Mode.EMAIL_ONLY: [dict(email="x@example.com", id="a7"), dict(email="y@example.com")],
    }[mode]
    return workspace, {f"{{p{i}}}": identify(stub, workspace, **seed).person.cio_id for i, seed in enumerate(seeds)}


def _fill(text: str, placeholders: dict[str, str]) -> bytes:
    for key, value in placeholders.items():
        text = text.replace(key, value)
    return text.encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=files(), which=st.sampled_from(range(len(SETTINGS))), chunk=st.sampled_from([1, 5, 64, 4096]))
@example(  # two people already there trade emails in one batch (service.db.bulk clears keys first)
    text="cio_id,id,email,plan\n{p0},,x@example.com,\n{p1},,z@example.com,\n{p0},,y@example.com,\n", which=1, chunk=64
).via("a key passed on within a batch")
def test_r80_a_streamed_import_ends_as_identifying_its_rows_one_by_one(
    bulk_stub, stub, make_workspace, world, text, which, chunk
):
    mode, options = SETTINGS[which]
    one_by_one, seeds_a = _seeded(stub, make_workspace, mode, options)
    streamed, seeds_b = _seeded(stub, make_workspace, mode, options)
    applied, refused = _reference(stub, one_by_one, _fill(text, seeds_a))

    responses = stream(bulk_stub, streamed, _fill(text, seeds_b), chunk=chunk)

    last = responses[-1].progress
    assert last.done and [r.progress.done for r in responses].count(True) == 1
    assert (last.rows_applied, last.rows_refused) == (applied, len(refused))
    assert last.rows_read == applied + len(refused)
    assert _refusals(responses) == refused
    assert world(streamed) == world(one_by_one)


def test_a_file_split_anywhere_reads_as_the_whole(bulk_stub, stub, make_workspace, world):
    """Byte by byte: a BOM, CRLF line ends, a character of several bytes cut in two, quoted
    commas, quotes and line breaks, blank lines."""
    text = (
        "\ufeffid,email,city,note\r\n"
        "a1,a1@example.com,Zürich,\"one, two\"\r\n"
        "\r\n"
        "a2,a2@example.com,東京,\"say \"\"hi\"\"\nand bye\"\r\n"
        "a3,,Kraków,plain\r\n"
    ).encode()
    one_by_one, streamed = make_workspace(), make_workspace()
    applied, refused = _reference(stub, one_by_one, text)
    responses = stream(bulk_stub, streamed, text, chunk=1)
    assert (applied, refused) == (3, {})
    assert responses[-1].progress.rows_applied == 3
    assert world(streamed) == world(one_by_one)
    note = identify(stub, streamed, id="a2").person.attributes.fields["note"].string_value
    assert note == 'say "hi"\nand bye'


def test_refused_rows_carry_their_status_and_the_others_apply(bulk_stub, stub, workspace):
    data = b"id,email,plan\nab1,a@example.com,pro\n bad,b@example.com,x\nab3,c@example.com\nab4,d@example.com,free\n"
    responses = stream(bulk_stub, workspace, data)
    assert _refusals(responses) == {
        2: (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ID"),
        3: (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_CSV"),  # 2 cells, the header has 3
    }
    last = responses[-1].progress
    assert (last.rows_read, last.rows_applied, last.rows_refused, last.rows_skipped) == (4, 2, 2, 0)
    assert identify(stub, workspace, id="ab4").outcome == pb.IDENTIFY_OUTCOME_UNCHANGED


def test_progress_comes_after_every_batch(bulk_stub, workspace):
    rows = 10
    data = ("id\n" + "".join(f"r{i}\n" for i in range(rows))).encode()
    responses = stream(bulk_stub, workspace, data, chunk=3)
    applied = [r.progress.rows_applied for r in responses]
    assert applied == sorted(applied) and applied[-1] == rows
    assert len(responses) >= rows // BATCH  # one per batch of 3, then the last


# --- refusals of the whole stream ---


@pytest.mark.parametrize(
    "first, field",
    [
        (pb.StreamImportPeopleRequest(workspace_id="", import_id=str(uuid.uuid4())), "workspace_id"),
        (pb.StreamImportPeopleRequest(workspace_id="w", import_id=""), "import_id"),
        (pb.StreamImportPeopleRequest(workspace_id="w", import_id="not-a-uuid"), "import_id"),
    ],
)
def test_a_stream_without_a_valid_workspace_or_import_id_is_refused(bulk_stub, first, field):
    with pytest.raises(grpc.RpcError) as caught:
        list(bulk_stub.StreamImportPeople(iter([first, pb.StreamImportPeopleRequest(chunk=b"id\na1\n")]), timeout=30))
    refusal = parse(caught.value)
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in refusal.fields


def test_an_unknown_workspace_is_not_found(bulk_stub):
    with pytest.raises(grpc.RpcError) as caught:
        stream(bulk_stub, "t-missing-" + uuid.uuid4().hex[:8], b"id\na1\n")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_empty_stream_is_refused(bulk_stub):
    with pytest.raises(grpc.RpcError) as caught:
        list(bulk_stub.StreamImportPeople(iter([]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_file_without_a_header_is_refused(bulk_stub, workspace):
    with pytest.raises(grpc.RpcError) as caught:
        stream(bulk_stub, workspace, b"")
    assert parse(caught.value).fields == ["chunk"]


def test_a_later_message_may_not_change_the_workspace(bulk_stub, workspace, make_workspace, people_rows):
    other = make_workspace()
    requests = [
        pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=str(uuid.uuid4()), chunk=b"id\n"),
        pb.StreamImportPeopleRequest(workspace_id=other, chunk=b"a1\n"),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        list(bulk_stub.StreamImportPeople(iter(requests), timeout=30))
    assert parse(caught.value).fields == ["workspace_id"]
    assert people_rows(workspace) == people_rows(other) == []


def test_a_later_message_may_not_change_the_import_id(bulk_stub, workspace):
    requests = [
        pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=str(uuid.uuid4()), chunk=b"id\n"),
        pb.StreamImportPeopleRequest(import_id=str(uuid.uuid4()), chunk=b"a1\n"),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        list(bulk_stub.StreamImportPeople(iter(requests), timeout=30))
    assert parse(caught.value).fields == ["import_id"]
    assert not _exists(bulk_stub, workspace, "a1")


def test_bad_utf8_ends_the_stream_after_the_rows_before_it(bulk_stub, workspace):
    rows = "".join(f"r{i}\n" for i in range(7)).encode()
    data = b"id\n" + rows + b"\xff\xfe\n" + b"late\n"
    with pytest.raises(grpc.RpcError) as caught:
        stream(bulk_stub, workspace, data, chunk=4)
    refusal = parse(caught.value)
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT and refusal.fields == ["chunk"]
    applied = [r for r in (f"r{i}" for i in range(7)) if _exists(bulk_stub, workspace, r)]
    assert applied == [f"r{i}" for i in range(len(applied))]  # a prefix (R81)
    assert not _exists(bulk_stub, workspace, "late")


def _exists(stub, workspace: str, id: str) -> bool:
    try:
        stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(id=id)), timeout=10)
        return True
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
        return False


def test_an_unclosed_quote_is_refused(bulk_stub, workspace):
    with pytest.raises(grpc.RpcError) as caught:
        stream(bulk_stub, workspace, b'id,note\na1,"never closed\n')
    assert parse(caught.value).fields == ["chunk"]


# --- resuming (R81) ---

RESUME_FILE = (
    "id,email,plan\n"
    + "".join(f"u{i},u{i % 7}@example.com,p{i}\n" if i % 5 else f" bad{i},,\n" for i in range(40))
).encode()


def _cancel_after(stub, workspace: str, import_id: str, data: bytes, batches: int) -> int:
    """Streams the file and cancels once `batches` progress messages arrived; returns the rows
    applied according to the last of them."""
    call = stub.StreamImportPeople(_requests(workspace, import_id, data, 16), timeout=60)
    applied = 0
    for n, response in enumerate(call, 1):
        applied = response.progress.rows_applied + response.progress.rows_refused
        if n == batches:
            call.cancel()
            break
    return applied


@pytest.mark.parametrize("batches", [1, 4, 9])
def test_r81_a_cancelled_import_resumes_at_its_first_row_not_applied(bulk_stub, stub, make_workspace, world, batches):
    whole, resumed = make_workspace(auto_merge=True), make_workspace(auto_merge=True)
    complete = stream(bulk_stub, whole, RESUME_FILE)
    import_id = str(uuid.uuid4())
    done_before = _cancel_after(bulk_stub, resumed, import_id, RESUME_FILE, batches)
    assert done_before > 0

    again = stream(bulk_stub, resumed, RESUME_FILE, import_id=import_id)

    last = again[-1].progress
    assert last.done and last.rows_read == 40
    assert last.rows_skipped >= done_before  # what committed after the last message read is skipped too
    assert (last.rows_applied, last.rows_refused) == (complete[-1].progress.rows_applied, complete[-1].progress.rows_refused)
    assert _refusals(again) == _refusals(complete)  # the earlier refusals repeated first, none twice
    assert world(resumed) == world(whole)


def test_a_finished_import_streamed_again_applies_nothing(bulk_stub, workspace, world):
    import_id = str(uuid.uuid4())
    first = stream(bulk_stub, workspace, RESUME_FILE, import_id=import_id)
    before = world(workspace)
    again = stream(bulk_stub, workspace, RESUME_FILE, import_id=import_id)
    assert again[-1].progress.done and again[-1].progress.rows_skipped == 40
    assert again[-1].progress.rows_applied == first[-1].progress.rows_applied
    assert world(workspace) == before


def test_an_import_id_with_another_header_is_refused(bulk_stub, workspace, people_rows):
    import_id = str(uuid.uuid4())
    stream(bulk_stub, workspace, b"id\na1\n", import_id=import_id)
    before = people_rows(workspace)
    with pytest.raises(grpc.RpcError) as caught:
        stream(bulk_stub, workspace, b"id,email\na2,a2@example.com\n", import_id=import_id)
    refusal = parse(caught.value)
    assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION and refusal.reason == "IMPORT_ID_REUSED"
    assert people_rows(workspace) == before


def test_two_streams_of_one_import_apply_no_row_twice(bulk_stub, stub, make_workspace, world):
    whole, raced = make_workspace(), make_workspace()
    stream(bulk_stub, whole, RESUME_FILE)
    import_id = str(uuid.uuid4())
    outcomes: list[Any] = []

    def run() -> None:
        try:
            outcomes.append(stream(bulk_stub, raced, RESUME_FILE, import_id=import_id, chunk=8))
        except grpc.RpcError as error:
            outcomes.append(parse(error))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for outcome in outcomes:
        if not isinstance(outcome, list):
            assert outcome.code == grpc.StatusCode.ABORTED and outcome.reason == "IMPORT_MOVED_ON"
    if not any(isinstance(o, list) for o in outcomes):
        stream(bulk_stub, raced, RESUME_FILE, import_id=import_id)  # both lost: a resume finishes it
    assert world(raced) == world(whole)



# --- hostile input: its proper code, never INTERNAL, and the service still serves ---

METHOD = "/identity.v1.IdentityService/StreamImportPeople"


def _raw_stream(port: int, messages: list[bytes], timeout: float = 30) -> tuple[grpc.StatusCode, list[bytes]]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(METHOD)(iter(messages), timeout=timeout)
        received = []
        try:
            for message in call:
                received.append(message)
            return grpc.StatusCode.OK, received
        except grpc.RpcError as error:
            return error.code(), received


@pytest.fixture(scope="module")
def bulk_port(bulk_server) -> int:
    return bulk_server.port


def _first(workspace: str) -> bytes:
    return pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=str(uuid.uuid4())).SerializeToString()


@pytest.mark.parametrize(
    "later",
    [
        [b"\xff\xff\xff\xff"],  # not a message
        [b"\x0a\xff\xff\xff\xff\x0f"],  # a length beyond the message
        [pb.StreamImportPeopleRequest(chunk=b"id\na1\n").SerializeToString(), b"\x1a\x05ab"],  # cut short
    ],
)
def test_undecodable_messages_are_invalid_argument(bulk_port, workspace, later):
    code, _ = _raw_stream(bulk_port, [_first(workspace), *later])
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_an_undecodable_first_message_is_invalid_argument(bulk_port):
    code, _ = _raw_stream(bulk_port, [b"\x0a\x05ab"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "data, refused_reason",
    [
        (b"id,plan\na\x001,pro\n", "INVALID_ID"),  # NUL in an identifier
        (b"id,plan\na1,p\x00ro\n", None),  # NUL in an attribute: as Identify decides
        (b"id,plan\n" + b"x" * 200 + b",pro\n", "INVALID_ID"),  # an id over 150 bytes
        (b"id,\xe2\x80\xae\nA1,x\n", None),  # an attribute named by an RTL override
    ],
)
def test_strange_cells_get_the_answers_identify_gives(bulk_stub, stub, make_workspace, world, data, refused_reason):
    one_by_one, streamed = make_workspace(), make_workspace()
    applied, refused = _reference(stub, one_by_one, data)
    responses = stream(bulk_stub, streamed, data)
    assert _refusals(responses) == refused
    if refused_reason:
        assert [reason for _, reason in refused.values()] == [refused_reason]
    assert world(streamed) == world(one_by_one)


def test_a_row_over_a_mebibyte_is_refused_and_the_stream_ends(bulk_stub, workspace):
    data = b'id,note\na1,"' + b"x" * (1 << 20) + b'"\n'
    with pytest.raises(grpc.RpcError) as caught:
        stream(bulk_stub, workspace, data, chunk=1 << 16)
    assert parse(caught.value).fields == ["chunk"]


def test_a_message_over_the_limit_is_resource_exhausted(bulk_port, workspace):
    big = pb.StreamImportPeopleRequest(chunk=b"x" * (5 << 20)).SerializeToString()
    code, _ = _raw_stream(bulk_port, [_first(workspace), big])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_idle_import_stream_ends_at_its_deadline_and_holds_nothing(bulk_stub, stub, workspace):
    """A client that opens the stream and sends nothing more: DEADLINE_EXCEEDED at its deadline,
    and meanwhile the server answers other calls."""
    gate = threading.Event()

    def requests() -> Iterator[pb.StreamImportPeopleRequest]:
        yield pb.StreamImportPeopleRequest(workspace_id=workspace, import_id=str(uuid.uuid4()), chunk=b"id\n")
        gate.wait(30)

    call = bulk_stub.StreamImportPeople(requests(), timeout=2)
    assert identify(stub, workspace, id="still-served").outcome == pb.IDENTIFY_OUTCOME_CREATED
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    gate.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_r81_an_import_cut_by_its_deadline_reported_its_progress_and_resumes(bulk_stub, make_workspace, world):
    """Unlike the unary import, a deadline leaves the client knowing how far the import got."""
    whole, cut = make_workspace(), make_workspace()
    stream(bulk_stub, whole, RESUME_FILE)
    import_id = str(uuid.uuid4())

    def slow() -> Iterator[pb.StreamImportPeopleRequest]:
        yield pb.StreamImportPeopleRequest(workspace_id=cut, import_id=import_id)
        for start in range(0, len(RESUME_FILE), 32):
            time.sleep(0.15)  # the whole file takes about 3 s: longer than the deadline
            yield pb.StreamImportPeopleRequest(chunk=RESUME_FILE[start : start + 32])

    answers = []
    with pytest.raises(grpc.RpcError) as caught:
        for response in bulk_stub.StreamImportPeople(slow(), timeout=1.5):
            answers.append(response)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answers and not answers[-1].progress.done
    reported = answers[-1].progress.rows_applied + answers[-1].progress.rows_refused

    again = stream(bulk_stub, cut, RESUME_FILE, import_id=import_id)
    assert again[-1].progress.rows_skipped >= reported
    assert world(cut) == world(whole)


def test_imports_are_purged_a_week_after_their_last_batch(bulk_stub, server, engine, make_workspace):
    """The retention clean-up deletes an import not advanced for 7 days, with its refusals (a
    batch per transaction), and leaves a recent one: that one can still be resumed."""
    from service.usecases import IdentityService

    workspace = make_workspace()
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    stream(bulk_stub, workspace, RESUME_FILE, import_id=old)
    stream(bulk_stub, workspace, RESUME_FILE, import_id=recent)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE imports SET updated_at = now() - interval '8 days' "
                             "WHERE workspace_id = :w AND import_id = :i"), {"w": workspace, "i": old})

    def counts() -> dict[str, tuple[int, int]]:
        with engine.connect() as conn:
            return {
                i: (
                    conn.execute(sa.text("SELECT count(*) FROM imports WHERE workspace_id = :w AND import_id = :i"),
                                 {"w": workspace, "i": i}).scalar_one(),
                    conn.execute(sa.text("SELECT count(*) FROM import_refusals WHERE workspace_id = :w AND import_id = :i"),
                                 {"w": workspace, "i": i}).scalar_one(),
                )
                for i in (old, recent)
            }  # fmt: skip

    before = counts()
    assert before[old][0] == before[recent][0] == 1 and before[old][1] > 3 and before[recent][1] > 3
    server.call(IdentityService(server.running.uow).purge_expired_events(batch=3))
    assert counts() == {old: (0, 0), recent: before[recent]}
