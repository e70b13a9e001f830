"""The change log through the public API (R50-R54), explicit merges and their undo (R60-R62),
dry runs (R71) and explanations (R72): a real server over a real channel, a real Postgres."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format

from identity.v1 import identity_pb2 as pb
from service.domain import Mode
from tests.e2e.helpers import EMAIL, ID, refused
from tests.lock_waits import backend_id, until, waiting

KIND = pb.PersonEventKind


def identify(stub: Any, ws: str, **fields: Any) -> pb.IdentifyResponse:
    attributes = fields.pop("attributes", None)
    request = pb.IdentifyRequest(workspace_id=ws, **fields)
    if attributes is not None:
        request.attributes.update(attributes)
    return stub.Identify(request, timeout=10)


def feed(stub: Any, ws: str, after: int = 0, count: int | None = None, timeout: float = 10) -> list[pb.PersonEvent]:
    """The events after `after`: `count` of them (then the stream is cancelled), or all those
    already there (read until the stream goes quiet for a moment)."""
    call = stub.WatchChanges(pb.WatchChangesRequest(workspace_id=ws, after_sequence=after), timeout=timeout)
    events: list[pb.PersonEvent] = []
    if count is None:
        last = feed_last(stub, ws)
        count = last - after
    try:
        for response in call:
            events.extend(response.events)
            if len(events) >= count:
                break
    finally:
        call.cancel()
    return events


def feed_last(stub: Any, ws: str) -> int:
    history_max = 0
    # The last sequence: the newest events of everyone are not listable without a person, so
    # read the feed from the start with a short deadline and keep the last one seen.
    call = stub.WatchChanges(pb.WatchChangesRequest(workspace_id=ws), timeout=1.5)
    try:
        for response in call:
            history_max = response.events[-1].sequence
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    return history_max


def history(stub: Any, ws: str, page_size: int = 0, page_token: str = "", **ref: str) -> pb.ListPersonHistoryResponse:
    return stub.ListPersonHistory(
        pb.ListPersonHistoryRequest(workspace_id=ws, person=pb.PersonRef(**ref), page_size=page_size, page_token=page_token),
        timeout=10,
    )


def changes(event: pb.PersonEvent) -> dict[str, tuple[Any, Any]]:
    def value(message: pb.PersonEvent, name: str) -> Any:
        return json_format.MessageToDict(getattr(message, name)) if message.HasField(name) else None

    return {c.name: (value(c, "old_value"), value(c, "new_value")) for c in event.attribute_changes}


# --------------------------------------------------------------------------- R50, R51


def test_r50_each_change_appends_one_event_with_before_after_and_the_call(stub, workspace):
    request_id = str(uuid.uuid4())
    created = identify(stub, workspace, id="u1", email="u1@example.com", attributes={"plan": "free"},
                       request_id=request_id)
    identify(stub, workspace, id="u1", attributes={"plan": "pro", "seats": 3})
    identify(stub, workspace, id="u1", attributes={"plan": "pro"})  # changes nothing: no event
    stub.UpdateIdentifier(pb.UpdateIdentifierRequest(workspace_id=workspace, person=pb.PersonRef(id="u1"),
                                                     identifier=EMAIL, value="new@example.com"), timeout=10)
    stub.DeletePerson(pb.DeletePersonRequest(workspace_id=workspace, person=pb.PersonRef(id="u1")), timeout=10)
    events = feed(stub, workspace, count=4)
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert [e.kind for e in events] == [KIND.PERSON_EVENT_KIND_CREATED, KIND.PERSON_EVENT_KIND_UPDATED,
                                        KIND.PERSON_EVENT_KIND_UPDATED, KIND.PERSON_EVENT_KIND_DELETED]
    cio = created.person.cio_id
    assert {e.cio_id for e in events} == {cio}
    first, second, third, fourth = events
    assert (first.rpc, first.request_id) == ("Identify", request_id)
    assert not first.HasField("identifiers_before")
    assert (first.identifiers_after.id, first.identifiers_after.email) == ("u1", "u1@example.com")
    assert changes(first) == {"plan": (None, "free")}
    assert changes(second) == {"plan": ("free", "pro"), "seats": (None, 3.0)}
    assert third.rpc == "UpdateIdentifier"
    assert (third.identifiers_before.email, third.identifiers_after.email) == ("u1@example.com", "new@example.com")
    assert changes(third) == {}
    assert fourth.rpc == "DeletePerson" and not fourth.HasField("identifiers_after")
    assert changes(fourth) == {"plan": ("pro", None), "seats": (3.0, None)}
    assert all(e.commit_time.seconds > 0 for e in events)
    assert [e.commit_time.ToDatetime() for e in events] == sorted(e.commit_time.ToDatetime() for e in events)


def test_r50_a_refused_call_and_a_dry_run_append_nothing(stub, workspace):
    identify(stub, workspace, id="a1", email="a1@example.com")
    identify(stub, workspace, id="b1", email="b1@example.com")
    refused(stub.UpdateIdentifier, pb.UpdateIdentifierRequest(
        workspace_id=workspace, person=pb.PersonRef(id="a1"), identifier=EMAIL, value="b1@example.com"),
        grpc.StatusCode.ALREADY_EXISTS, timeout=10)
    dry = identify(stub, workspace, id="c1", validate_only=True)
    assert dry.outcome == pb.IDENTIFY_OUTCOME_CREATED
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(id="c1")),
            grpc.StatusCode.NOT_FOUND, timeout=10)
    assert [e.sequence for e in feed(stub, workspace)] == [1, 2]


def test_r51_sequence_order_is_commit_order(engine, database_url, workspace, stub):
    """Two transactions: the first takes a number and holds its commit; the second appends and
    commits meanwhile. With a number taken at insert time (a sequence), the second would commit
    8 while 7 is invisible, and a reader that saw 8 would never see 7. Here the second waits for
    the first's commit, and a reader never sees a number above one it has not seen."""
    import psycopg

    from service.db.engine import libpq_url
    from service.db.statements import APPEND_EVENT_SQL, TAKE_SEQUENCE_SQL

    def append(conn: psycopg.Connection, cio: str) -> int:
        conn.execute(TAKE_SEQUENCE_SQL, {"workspace_id": workspace})
        row = conn.execute(APPEND_EVENT_SQL, {
            "workspace_id": workspace, "cio_id": cio, "kind": "UPDATED", "merged_cio_id": None, "undoes": None,
            "rpc": "test", "request_id": "", "body": psycopg.types.json.Jsonb({})}).fetchone()
        return row[0]

    url = libpq_url(database_url)
    with psycopg.connect(url) as first, psycopg.connect(url, autocommit=True) as watcher:
        taken_first = append(first, "a" * 20)  # not committed yet
        second_result: list[int] = []
        second_backend: list[int] = []

        def second() -> None:
            with psycopg.connect(url) as conn:
                second_backend.append(backend_id(conn))
                second_result.append(append(conn, "b" * 20))
                conn.commit()

        thread = threading.Thread(target=second)
        thread.start()
        # The second waits on the first's counter lock (on Citus, on the worker: tests/lock_waits.py).
        assert until(lambda: bool(second_backend) and waiting(watcher, second_backend[0]), 20), (
            "the second transaction never waited for the first's counter lock"
        )
        visible = watcher.execute("SELECT sequence FROM person_events WHERE workspace_id = %s", (workspace,)).fetchall()
        assert visible == [], "nothing is visible before the first commit"
        first.commit()
        thread.join(20)
    assert second_result == [taken_first + 1]
    assert [e.sequence for e in feed(stub, workspace)] == [taken_first, taken_first + 1]


# --------------------------------------------------------------------------- R52


def test_r52_a_stream_sends_what_is_there_then_each_new_event_and_resumes_exactly(stub, workspace):
    for n in range(3):
        identify(stub, workspace, id=f"w{n}")
    received: list[pb.PersonEvent] = []
    call = stub.WatchChanges(pb.WatchChangesRequest(workspace_id=workspace), timeout=30)

    def read() -> None:
        try:
            for response in call:
                received.extend(response.events)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    _wait(lambda: len(received) == 3)
    identify(stub, workspace, id="w3")
    identify(stub, workspace, id="w0", attributes={"x": 1})
    _wait(lambda: len(received) == 5)
    call.cancel()
    reader.join(10)
    assert [e.sequence for e in received] == [1, 2, 3, 4, 5]
    # Resuming after 3 repeats nothing and loses nothing.
    assert [e.sequence for e in feed(stub, workspace, after=3, count=2)] == [4, 5]


def test_r52_cursors_out_of_range_and_unknown_workspaces(stub, workspace):
    identify(stub, workspace, id="o1")
    ahead = refused(lambda r, **k: list(stub.WatchChanges(r, **k)),
                    pb.WatchChangesRequest(workspace_id=workspace, after_sequence=99), grpc.StatusCode.OUT_OF_RANGE,
                    timeout=10)
    assert ahead.reason == "CURSOR_AHEAD" and ahead.metadata["last_sequence"] == "1"
    refused(lambda r, **k: list(stub.WatchChanges(r, **k)), pb.WatchChangesRequest(workspace_id="no-such-ws"),
            grpc.StatusCode.NOT_FOUND, timeout=10)
    bad = refused(lambda r, **k: list(stub.WatchChanges(r, **k)),
                  pb.WatchChangesRequest(workspace_id=workspace, after_sequence=-1), grpc.StatusCode.INVALID_ARGUMENT,
                  timeout=10)
    assert bad.fields == ["after_sequence"]


def test_r52_retention_purges_old_events_and_an_old_cursor_is_out_of_range(stub, workspace, engine, server):
    for n in range(4):
        identify(stub, workspace, id=f"p{n}")
    with engine.begin() as conn:  # the first two events committed 40 days ago
        conn.execute(sa.text("UPDATE person_events SET commit_time = now() - interval '40 days' "
                             "WHERE workspace_id = :ws AND sequence <= 2"), {"ws": workspace})
    purged = server.call(_purge(server))
    assert purged >= 2
    too_old = refused(lambda r, **k: list(stub.WatchChanges(r, **k)),
                      pb.WatchChangesRequest(workspace_id=workspace, after_sequence=1), grpc.StatusCode.OUT_OF_RANGE,
                      timeout=10)
    assert too_old.reason == "CURSOR_TOO_OLD" and too_old.metadata["oldest_sequence"] == "3"
    assert [e.sequence for e in feed(stub, workspace, after=2, count=2)] == [3, 4]
    assert [e.sequence for e in feed(stub, workspace, after=0, count=2)] == [3, 4]  # 0: the oldest kept


async def _purge(server: Any) -> int:
    from service.usecases import IdentityService

    return await IdentityService(server.running.uow).purge_expired_events(batch=1)


# --------------------------------------------------------------------------- R53


def test_r53_history_is_newest_first_follows_merges_and_pages(stub, workspace):
    a = identify(stub, workspace, id="h1", attributes={"n": 1}).person.cio_id
    b = identify(stub, workspace, email="h1@example.com", attributes={"m": 2}).person.cio_id
    identify(stub, workspace, email="h1@example.com", attributes={"m": 3})
    merged = identify(stub, workspace, id="h1", email="h1@example.com")  # R13
    assert merged.outcome == pb.IDENTIFY_OUTCOME_MERGED and merged.person.cio_id == a
    events = history(stub, workspace, id="h1").events
    assert [e.sequence for e in events] == [4, 3, 2, 1]
    assert events[0].kind == KIND.PERSON_EVENT_KIND_MERGED and events[0].merged_cio_id == b
    assert events[0].merged_person.email == "h1@example.com"
    # The merged-away cio_id still has its history (its own events and the merge that took it).
    assert [e.sequence for e in history(stub, workspace, cio_id=b).events] == [4, 3, 2]
    # Pages of 3, then 1, the token tied to the request.
    page = history(stub, workspace, page_size=3, cio_id=a)
    assert [e.sequence for e in page.events] == [4, 3, 2] and page.next_page_token
    rest = history(stub, workspace, page_size=3, page_token=page.next_page_token, cio_id=a)
    assert [e.sequence for e in rest.events] == [1] and rest.next_page_token == ""
    bad = refused(stub.ListPersonHistory, pb.ListPersonHistoryRequest(
        workspace_id=workspace, person=pb.PersonRef(cio_id=b), page_token=page.next_page_token),
        grpc.StatusCode.INVALID_ARGUMENT, timeout=10)
    assert bad.fields == ["page_token"]
    refused(stub.ListPersonHistory, pb.ListPersonHistoryRequest(
        workspace_id=workspace, person=pb.PersonRef(cio_id="0" * 20)), grpc.StatusCode.NOT_FOUND, timeout=10)


# --------------------------------------------------------------------------- R54


def test_r54_erasure_leaves_tombstones_and_no_value_anywhere(stub, workspace, engine):
    secret_email, secret_id, secret_value = "erase.me@example.com", "erase-id-7", "secret-plan-value"
    a = identify(stub, workspace, id=secret_id, attributes={"plan": secret_value},
                 request_id=str(uuid.uuid4())).person.cio_id  # a stored response shows it too (R70)
    identify(stub, workspace, email=secret_email, attributes={"note": "from-b-" + secret_value})
    identify(stub, workspace, id=secret_id, email=secret_email)  # R13 merges b into a
    keep = identify(stub, workspace, id="keeper", attributes={"plan": "other"}).person.cio_id
    stub.DeletePerson(pb.DeletePersonRequest(workspace_id=workspace, person=pb.PersonRef(cio_id=a), erase=True),
                      timeout=10)
    events = feed(stub, workspace, count=5)
    erased = [e for e in events if e.cio_id != keep]
    assert {e.kind for e in erased} == {KIND.PERSON_EVENT_KIND_ERASED}
    for event in erased:  # only sequence, kind and cio_id remain (and the erasing call's name)
        assert not event.HasField("identifiers_before") and not event.HasField("identifiers_after")
        assert not event.attribute_changes and not event.merged_cio_id
        assert event.rpc == ("DeletePerson" if event is erased[-1] else "")
    assert [e.kind for e in events if e.cio_id == keep] == [KIND.PERSON_EVENT_KIND_CREATED]
    with engine.connect() as conn:
        tables = [r[0] for r in conn.execute(sa.text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"))]
        for table in tables:
            dump = conn.execute(sa.text(f'SELECT t::text FROM "{table}" t')).scalars().all()
            for secret in (secret_email, secret_id, secret_value):
                assert not [row for row in dump if secret in row], (table, secret)


# --------------------------------------------------------------------------- R60-R62


def test_r60_r62_an_explicit_merge_is_explained_and_undone_exactly(stub, make_workspace):
    ws = make_workspace(Mode.EMAIL_OR_ID, auto_merge=False)
    p = identify(stub, ws, id="m1", attributes={"plan": "pro", "color": ""}).person
    s = identify(stub, ws, email="m2@example.com", attributes={"plan": "free", "color": "red", "age": 5}).person
    merged = stub.MergePeople(pb.MergePeopleRequest(workspace_id=ws, primary=pb.PersonRef(id="m1"),
                                                    secondary=pb.PersonRef(email="m2@example.com")), timeout=10)
    assert merged.person.cio_id == p.cio_id and merged.merged_cio_id == s.cio_id and merged.merge_sequence == 3
    assert (merged.person.id, merged.person.email) == ("m1", "m2@example.com")
    assert json_format.MessageToDict(merged.person.attributes) == {"plan": "pro", "color": "red", "age": 5}
    assert merged.decision.rule == "R60"
    assert {(m.value, m.matched_cio_id) for m in merged.decision.matches} == {("m1", p.cio_id),
                                                                             ("m2@example.com", s.cio_id)}
    identify(stub, ws, id="m1", attributes={"age": 6})  # changed since: stays after the undo
    undone = stub.UnmergePeople(pb.UnmergePeopleRequest(workspace_id=ws, merge_sequence=3), timeout=10)
    assert (undone.primary.id, undone.primary.HasField("email")) == ("m1", False)
    assert json_format.MessageToDict(undone.primary.attributes) == {"plan": "pro", "color": "", "age": 6}
    assert undone.secondary == s.__class__(
        cio_id=s.cio_id, email=s.email, attributes=s.attributes, create_time=s.create_time,
        update_time=undone.secondary.update_time)
    again = refused(stub.UnmergePeople, pb.UnmergePeopleRequest(workspace_id=ws, merge_sequence=3),
                    grpc.StatusCode.FAILED_PRECONDITION, timeout=10)
    assert again.reason == "ALREADY_UNMERGED"
    kinds = [e.kind for e in feed(stub, ws, count=6)][3:]
    assert kinds == [KIND.PERSON_EVENT_KIND_UPDATED, KIND.PERSON_EVENT_KIND_UNMERGED, KIND.PERSON_EVENT_KIND_UNMERGED]


def test_r62_an_automatic_merge_is_undone_and_a_taken_identifier_in_use_is_a_conflict(stub, workspace):
    a = identify(stub, workspace, id="q1").person
    b = identify(stub, workspace, email="q1@example.com").person
    identify(stub, workspace, id="q1", email="q1@example.com")  # R13: event 3
    stub.UpdateIdentifier(pb.UpdateIdentifierRequest(workspace_id=workspace, person=pb.PersonRef(id="q1"),
                                                     identifier=EMAIL, value="moved@example.com"), timeout=10)
    identify(stub, workspace, id="other", email="q1@example.com")
    conflict = refused(stub.UnmergePeople, pb.UnmergePeopleRequest(workspace_id=workspace, merge_sequence=3),
                       grpc.StatusCode.FAILED_PRECONDITION, timeout=10)
    assert conflict.reason == "UNMERGE_CONFLICT" and conflict.metadata["field"] == "email"
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(cio_id=b.cio_id)),
            grpc.StatusCode.NOT_FOUND, timeout=10)
    assert stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(cio_id=a.cio_id)),
                          timeout=10).person.email == "moved@example.com"


def test_r60_refusals(stub, workspace):
    identify(stub, workspace, id="r1")
    same = refused(stub.MergePeople, pb.MergePeopleRequest(workspace_id=workspace, primary=pb.PersonRef(id="r1"),
                                                           secondary=pb.PersonRef(id="r1")),
                   grpc.StatusCode.INVALID_ARGUMENT, timeout=10)
    assert same.fields == ["secondary"]
    missing = refused(stub.MergePeople, pb.MergePeopleRequest(workspace_id=workspace, primary=pb.PersonRef(id="r1"),
                                                              secondary=pb.PersonRef(id="nobody")),
                      grpc.StatusCode.NOT_FOUND, timeout=10)
    assert missing.metadata["field"] == "secondary"
    not_merge = refused(stub.UnmergePeople, pb.UnmergePeopleRequest(workspace_id=workspace, merge_sequence=1),
                        grpc.StatusCode.NOT_FOUND, timeout=10)
    assert not_merge.reason == "MERGE_NOT_FOUND"


# --------------------------------------------------------------------------- R70


def test_r70_a_repeat_returns_the_stored_response_and_applies_nothing(stub, workspace, engine):
    request_id = str(uuid.uuid4())
    first = identify(stub, workspace, id="i1", attributes={"n": 1}, request_id=request_id)
    identify(stub, workspace, id="i1", attributes={"n": 2})  # changes the person in between
    repeat = identify(stub, workspace, id="i1", attributes={"n": 1}, request_id=request_id.upper())
    assert repeat == first  # the first response, byte for byte: not a second application
    person = stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(id="i1")), timeout=10)
    assert json_format.MessageToDict(person.person.attributes) == {"n": 2}
    assert [e.request_id for e in feed(stub, workspace, count=2)] == [request_id, ""]
    reused = refused(stub.Identify, pb.IdentifyRequest(workspace_id=workspace, id="i2", request_id=request_id),
                     grpc.StatusCode.FAILED_PRECONDITION, timeout=10)
    assert reused.reason == "REQUEST_ID_REUSED" and reused.metadata["request_id"] == request_id
    other_rpc = refused(stub.DeletePerson, pb.DeletePersonRequest(
        workspace_id=workspace, person=pb.PersonRef(id="i1"), request_id=request_id),
        grpc.StatusCode.FAILED_PRECONDITION, timeout=10)
    assert other_rpc.reason == "REQUEST_ID_REUSED" and other_rpc.metadata["method"] == "Identify"
    bad = refused(stub.Identify, pb.IdentifyRequest(workspace_id=workspace, id="i3", request_id="not-a-uuid"),
                  grpc.StatusCode.INVALID_ARGUMENT, timeout=10)
    assert bad.fields == ["request_id"]


def test_r70_a_refused_call_stores_nothing_and_a_dry_run_ignores_the_request_id(stub, workspace):
    request_id = str(uuid.uuid4())
    request = pb.UpdateIdentifierRequest(workspace_id=workspace, person=pb.PersonRef(id="nobody"), identifier=EMAIL,
                                         value="z@example.com", request_id=request_id)
    refused(stub.UpdateIdentifier, request, grpc.StatusCode.NOT_FOUND, timeout=10)
    identify(stub, workspace, id="nobody")
    dry = identify(stub, workspace, id="x", request_id=request_id, validate_only=True)
    assert dry.outcome == pb.IDENTIFY_OUTCOME_CREATED
    changed = stub.UpdateIdentifier(request, timeout=10)  # now it applies: nothing was stored
    assert changed.person.email == "z@example.com"
    assert stub.UpdateIdentifier(request, timeout=10) == changed


def test_r70_identical_calls_at_the_same_moment_apply_once(stub, workspace, channel):
    request_ids = [str(uuid.uuid4()) for _ in range(5)]

    def call(request_id: str) -> pb.IdentifyResponse:
        return identify(stub, workspace, email=f"{request_id}@example.com", attributes={"k": request_id},
                        request_id=request_id)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, [r for r in request_ids for _ in range(8)]))
    for index, request_id in enumerate(request_ids):
        mine = answers[index * 8:(index + 1) * 8]
        assert all(a == mine[0] for a in mine), request_id
        assert mine[0].outcome == pb.IDENTIFY_OUTCOME_CREATED
    events = feed(stub, workspace, count=len(request_ids))
    assert sorted(e.request_id for e in events) == sorted(request_ids)
    assert feed_last(stub, workspace) == len(request_ids)  # one application each


def test_r70_stored_responses_are_purged_after_24_hours(stub, workspace, engine, server):
    request_id = str(uuid.uuid4())
    first = identify(stub, workspace, id="old1", request_id=request_id)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE stored_responses SET created_at = now() - interval '25 hours' "
                             "WHERE workspace_id = :ws"), {"ws": workspace})
    assert server.call(_purge(server)) >= 1
    again = identify(stub, workspace, id="old1", request_id=request_id)  # applied again: UNCHANGED
    assert again.outcome == pb.IDENTIFY_OUTCOME_UNCHANGED and again.person.cio_id == first.person.cio_id


# --------------------------------------------------------------------------- R71, R72


def test_r71_a_dry_run_answers_as_the_real_call_and_writes_nothing(stub, workspace, people_rows):
    cio = identify(stub, workspace, id="d1", email="d1@example.com").person.cio_id
    before = people_rows(workspace)
    request = pb.UpdateIdentifierRequest(workspace_id=workspace, person=pb.PersonRef(cio_id=cio), identifier=ID,
                                         value="d2", validate_only=True)
    dry = stub.UpdateIdentifier(request, timeout=10)
    assert people_rows(workspace) == before
    request.validate_only = False
    real = stub.UpdateIdentifier(request, timeout=10)
    assert dry.person.id == real.person.id == "d2" and dry.decision == real.decision
    dry_delete = stub.DeletePerson(pb.DeletePersonRequest(workspace_id=workspace, person=pb.PersonRef(id="d2"),
                                                          validate_only=True), timeout=10)
    assert dry_delete.cio_id == real.person.cio_id
    assert stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(id="d2")), timeout=10)


def test_r72_identify_says_which_rule_decided_and_whom_each_identifier_matched(stub, workspace):
    a = identify(stub, workspace, id="x1").person.cio_id
    created = identify(stub, workspace, id="x2", email="x2@example.com")
    assert created.decision.rule == "R11"
    assert {(m.identifier, m.value, m.matched_cio_id) for m in created.decision.matches} == {
        (ID, "x2", ""), (EMAIL, "x2@example.com", "")}
    refusal = refused(stub.Identify, pb.IdentifyRequest(workspace_id=workspace, id="x1", email="x2@example.com"),
                      grpc.StatusCode.ALREADY_EXISTS, timeout=10)
    assert refusal.metadata["owner_cio_id"] == created.person.cio_id
    updated = identify(stub, workspace, id="x1", attributes={"k": 1})
    assert updated.decision.rule == "R11"
    assert [(m.value, m.matched_cio_id) for m in updated.decision.matches] == [("x1", a)]


def _wait(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --------------------------------------------------------------------------- R82


def test_r82_export_streams_every_person_of_one_snapshot_in_batches(stub, workspace, engine):
    created = [identify(stub, workspace, id=f"e{n}", attributes={"n": n}).person.cio_id for n in range(5)]
    with engine.begin() as conn:  # 2,500 more, by SQL: the export's batches are what is tested here
        conn.execute(sa.text(
            "INSERT INTO people (workspace_id, cio_id, id, id_key, attributes, created_at, updated_at) "
            "SELECT :ws, lpad(to_hex(n), 20, 'x'), 'bulk' || n, 'bulk' || n, '{}'::jsonb, now(), now() "
            "FROM generate_series(1, 2500) n"), {"ws": workspace})
    call = stub.ExportPeople(pb.ExportPeopleRequest(workspace_id=workspace), timeout=30)
    responses = iter(call)
    first = next(responses)  # the snapshot is taken: what is written now is not in it
    identify(stub, workspace, id="after-the-snapshot")
    stub.DeletePerson(pb.DeletePersonRequest(workspace_id=workspace, person=pb.PersonRef(id="e0")), timeout=10)
    batches = [first, *responses]
    people = [p for batch in batches for p in batch.people]
    assert [len(b.people) for b in batches] == [1000, 1000, 505]
    assert len({p.cio_id for p in people}) == 2505
    assert [p.cio_id for p in people] == sorted(p.cio_id for p in people)
    assert set(created) <= {p.cio_id for p in people}  # e0 deleted after the snapshot: still there
    assert "after-the-snapshot" not in {p.id for p in people}
    e3 = next(p for p in people if p.id == "e3")
    assert json_format.MessageToDict(e3.attributes) == {"n": 3}


def test_r82_export_of_an_unknown_workspace_is_not_found(stub):
    refusal = refused(lambda r, **k: list(stub.ExportPeople(r, **k)), pb.ExportPeopleRequest(workspace_id="no-such-ws"),
                      grpc.StatusCode.NOT_FOUND, timeout=10)
    assert refusal.reason == "WORKSPACE_NOT_FOUND"


# --------------------------------------------------------------------------- R70, R71 for imports


def _csv(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_r70_an_import_repeated_with_its_request_id_applies_no_row_twice(stub, workspace):
    request_id = str(uuid.uuid4())
    data = _csv("id,email,plan", "im1,im1@example.com,pro", "im2,bad-email,pro", "im1,,team")
    first = stub.ImportPeople(pb.ImportPeopleRequest(workspace_id=workspace, csv=data, request_id=request_id),
                              timeout=20)
    assert [(r.row, r.outcome) for r in first.rows] == [
        (1, pb.IDENTIFY_OUTCOME_CREATED), (2, pb.IDENTIFY_OUTCOME_UNSPECIFIED), (3, pb.IDENTIFY_OUTCOME_UPDATED)]
    events = feed(stub, workspace, count=2)
    assert [(e.rpc, e.request_id) for e in events] == [("ImportPeople", request_id)] * 2
    again = stub.ImportPeople(pb.ImportPeopleRequest(workspace_id=workspace, csv=data, request_id=request_id),
                              timeout=20)
    assert [(r.row, r.outcome, r.cio_id) for r in again.rows] == [(r.row, r.outcome, r.cio_id) for r in first.rows]
    assert again.applied_count == first.applied_count == 2
    assert feed_last(stub, workspace) == 2  # nothing applied again
    other = refused(stub.ImportPeople, pb.ImportPeopleRequest(
        workspace_id=workspace, csv=_csv("id", "im9"), request_id=request_id), grpc.StatusCode.FAILED_PRECONDITION,
        timeout=20)
    assert other.reason == "REQUEST_ID_REUSED"


def test_r71_an_import_dry_run_sees_its_own_rows_and_writes_nothing(stub, workspace, people_rows):
    identify(stub, workspace, id="keep")
    before = people_rows(workspace)
    data = _csv("id,email", "dr1,dr1@example.com", "dr1,", "dr2,dr1@example.com", "keep,keep@example.com")
    dry = stub.ImportPeople(pb.ImportPeopleRequest(workspace_id=workspace, csv=data, validate_only=True), timeout=20)
    assert people_rows(workspace) == before
    assert feed_last(stub, workspace) == 1
    real = stub.ImportPeople(pb.ImportPeopleRequest(workspace_id=workspace, csv=data), timeout=20)
    assert [(r.row, r.outcome, r.error.code) for r in dry.rows] == [(r.row, r.outcome, r.error.code) for r in real.rows]
    assert [r.outcome for r in real.rows] == [pb.IDENTIFY_OUTCOME_CREATED, pb.IDENTIFY_OUTCOME_UNCHANGED,
                                              pb.IDENTIFY_OUTCOME_UNSPECIFIED, pb.IDENTIFY_OUTCOME_UPDATED]


def test_r52_a_stopping_server_ends_its_streams_with_unavailable_and_they_resume_elsewhere(start_server, stub, workspace):
    """SIGTERM's path (RunningServer.stop): streams end at once with UNAVAILABLE SERVER_STOPPING,
    even with a grace period for unary calls; the client resumes on another server."""
    from identity.v1 import identity_pb2_grpc as pb_grpc
    from tests.e2e.helpers import parse

    identify(stub, workspace, id="s1")
    stopping = start_server()
    with grpc.insecure_channel(f"127.0.0.1:{stopping.port}") as channel:
        call = pb_grpc.IdentityServiceStub(channel).WatchChanges(
            pb.WatchChangesRequest(workspace_id=workspace), timeout=30)
        first = next(iter(call))
        assert [e.sequence for e in first.events] == [1]
        started = time.monotonic()
        stopper = threading.Thread(target=stopping.stop, kwargs={"grace": 10})
        stopper.start()
        with pytest.raises(grpc.RpcError) as ended:
            next(iter(call))
        stopper.join(20)
    assert time.monotonic() - started < 8, "the stream waited for the grace period"
    refusal = parse(ended.value)
    assert refusal.code == grpc.StatusCode.UNAVAILABLE and refusal.reason == "SERVER_STOPPING"
    identify(stub, workspace, id="s2")
    assert [e.sequence for e in feed(stub, workspace, after=1, count=1)] == [2]  # resumed elsewhere
