"""Property-based, end to end: random sequences of calls over a small alphabet of ids and emails
(case variants and some invalid values), on a fresh workspace per example with random settings,
through the real server. The service never fails unexpectedly, and the stored people always obey
the identifier rules of the workspace's mode (R1, R2, R41)."""

from __future__ import annotations

from collections import Counter

import grpc
import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity.v1 import identity_pb2 as pb
from service.domain import Mode
from tests.e2e.helpers import UNKNOWN_CIO_ID, identify_request

VALID_IDS = ["ab100", "AB100"]
INVALID_IDS = ["ab100 ", ""]  # R3
VALID_EMAILS = ["p@example.com", "P@Example.com", "q@example.com"]
INVALID_EMAILS = ["not-an-email", " p@example.com"]  # R4
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION}
MODES = {Mode.EMAIL_OR_ID: pb.IDENTIFIER_MODE_EMAIL_OR_ID, Mode.ID_ONLY: pb.IDENTIFIER_MODE_ID_ONLY,
         Mode.EMAIL_ONLY: pb.IDENTIFIER_MODE_EMAIL_ONLY}
MODE_FROM_PB = {v: k for k, v in MODES.items()}


def weighted(*choices: tuple[int, list]) -> st.SearchStrategy:
    """sampled_from with weights given by repetition (the first choice is what shrinking aims at)."""
    return st.sampled_from([value for weight, values in choices for value in values for _ in range(weight)])


# Mostly valid values, so that most calls get past validation and meet each other's people.
an_id = weighted((3, VALID_IDS), (1, INVALID_IDS))
an_email = weighted((3, VALID_EMAILS), (1, INVALID_EMAILS))
maybe_id = weighted((4, [None]), (3, VALID_IDS), (1, INVALID_IDS))
maybe_email = weighted((4, [None]), (3, VALID_EMAILS), (1, INVALID_EMAILS))
# A cio_id is picked at run time among those seen (an index), or unknown, or malformed.
cio_pick = weighted((4, list(range(4))), (1, ["unknown", "MALFORMED"]))
reference = st.one_of(
    st.tuples(st.just("cio_id"), cio_pick),
    st.tuples(st.just("cio_id"), cio_pick),
    st.tuples(st.just("id"), an_id),
    st.tuples(st.just("email"), an_email),
)
# The type of identifier and its new value: mostly matched, sometimes CIO_ID or unspecified.
new_value = st.one_of(
    st.tuples(st.just(pb.IDENTIFIER_TYPE_ID), an_id),
    st.tuples(st.just(pb.IDENTIFIER_TYPE_EMAIL), an_email),
    st.tuples(st.sampled_from([pb.IDENTIFIER_TYPE_CIO_ID, pb.IDENTIFIER_TYPE_UNSPECIFIED]), an_id),
)
identifier_type = weighted((3, [pb.IDENTIFIER_TYPE_ID, pb.IDENTIFIER_TYPE_EMAIL]),
                           (1, [pb.IDENTIFIER_TYPE_CIO_ID, pb.IDENTIFIER_TYPE_UNSPECIFIED]))
attributes = st.dictionaries(st.sampled_from(["plan", "lang", "score"]),
                             st.none() | st.sampled_from(["free", "pro", 1, True]), max_size=2)

# People to start from: valid identifies by id only, by email only, or by both (which may merge).
valid_id, valid_email = st.sampled_from(VALID_IDS), st.sampled_from(VALID_EMAILS)
seed = st.one_of(
    st.tuples(st.just("identify"), valid_id, st.none(), st.none(), attributes, st.just(False)),
    st.tuples(st.just("identify"), st.none(), valid_email, st.none(), attributes, st.just(False)),
    st.tuples(st.just("identify"), valid_id, valid_email, st.none(), attributes, st.just(False)),
)
operations = st.one_of(
    # Plain identifies (no cio_id, not update-only) thrice as often as the other calls.
    *[st.tuples(st.just("identify"), maybe_id, maybe_email, st.none(), attributes, st.just(False))] * 3,
    st.tuples(st.just("identify"), maybe_id, maybe_email, st.none() | cio_pick, attributes, st.booleans()),
    st.tuples(st.just("update"), reference, new_value),
    st.tuples(st.just("delete_identifier"), reference, identifier_type),
    st.tuples(st.just("delete_person"), reference),
    st.tuples(st.just("mode"), st.sampled_from(list(MODES)), st.booleans()),
)


def _cio(pick, seen: list[str]) -> str:
    if pick == "unknown" or (isinstance(pick, int) and not seen):
        return UNKNOWN_CIO_ID
    if pick == "MALFORMED":
        return "NOT-A-CIO-ID"
    return seen[pick % len(seen)]


def _ref(which, seen: list[str]) -> pb.PersonRef:
    kind, value = which
    return pb.PersonRef(**{kind: _cio(value, seen) if kind == "cio_id" else value})


def _run(stub, workspace_stub, workspace: str, op, seen: list[str]):
    kind = op[0]
    if kind == "identify":
        _, id_, email, cio, attrs, update_only = op
        fields = {k: v for k, v in (("id", id_), ("email", email)) if v is not None}
        if cio is not None:
            fields["cio_id"] = _cio(cio, seen)
        return stub.Identify(identify_request(workspace, attrs, update_only=update_only, **fields), timeout=10)
    if kind == "update":
        _, which, (identifier, value) = op
        return stub.UpdateIdentifier(pb.UpdateIdentifierRequest(
            workspace_id=workspace, person=_ref(which, seen), identifier=identifier, value=value), timeout=10)
    if kind == "delete_identifier":
        _, which, identifier = op
        return stub.DeleteIdentifier(pb.DeleteIdentifierRequest(
            workspace_id=workspace, person=_ref(which, seen), identifier=identifier), timeout=10)
    if kind == "delete_person":
        return stub.DeletePerson(pb.DeletePersonRequest(workspace_id=workspace, person=_ref(op[1], seen)),
                                 timeout=10)
    _, mode, validate_only = op
    return workspace_stub.UpdateSettings(pb.UpdateSettingsRequest(
        workspace_id=workspace, settings=pb.WorkspaceSettings(identifier_mode=MODES[mode]),
        update_mask=field_mask_pb2.FieldMask(paths=["identifier_mode"]), validate_only=validate_only), timeout=10)


def _check_people(engine, workspace: str, mode: Mode) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT cio_id, id, email, email_norm, id_key, email_key FROM people WHERE workspace_id = :w"),
            {"w": workspace},
        ).all()
    id_keys = Counter(r.id_key for r in rows if r.id_key is not None)
    email_keys = Counter(r.email_key for r in rows if r.email_key is not None)
    assert all(n == 1 for n in id_keys.values()), id_keys
    assert all(n == 1 for n in email_keys.values()), email_keys
    id_is_identifier = mode in (Mode.EMAIL_OR_ID, Mode.ID_ONLY)
    email_is_identifier = mode in (Mode.EMAIL_OR_ID, Mode.EMAIL_ONLY)
    if id_is_identifier:  # R1/R41: unique ids (case-sensitive), and the index holds every one
        ids = Counter(r.id for r in rows if r.id is not None)
        assert all(n == 1 for n in ids.values()), ids
        assert all(r.id_key == r.id for r in rows), rows
    else:
        assert all(r.id_key is None for r in rows), rows
    if email_is_identifier:  # R1/R41: unique emails case-insensitively, and the index holds every one
        emails = Counter(r.email.lower() for r in rows if r.email is not None)
        assert all(n == 1 for n in emails.values()), emails
        assert all(r.email_key == (r.email.lower() if r.email is not None else None) for r in rows), rows
    else:
        assert all(r.email_key is None for r in rows), rows
    for r in rows:
        if mode == Mode.EMAIL_OR_ID:
            assert r.id is not None or r.email is not None, r
        if mode == Mode.ID_ONLY:
            assert r.id is not None, r
        if mode == Mode.EMAIL_ONLY:
            assert r.email is not None, r
        assert r.id is None or r.id in VALID_IDS, r  # nothing invalid is ever stored (R3, R4)
        assert r.email is None or r.email in VALID_EMAILS, r


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(list(MODES)),
    email_updatable_by_id=st.booleans(),
    sole_identifier_updatable=st.booleans(),
    auto_merge=st.booleans(),
    start=st.lists(seed, min_size=2, max_size=8),
    ops=st.lists(operations, min_size=3, max_size=20),
)
def test_random_calls_never_fail_unexpectedly_and_keep_identifiers_unique(
    stub, workspace_stub, make_workspace, engine, mode, email_updatable_by_id, sole_identifier_updatable,
    auto_merge, start, ops
):
    workspace = make_workspace(mode, email_updatable_by_id=email_updatable_by_id,
                               sole_identifier_updatable=sole_identifier_updatable, auto_merge=auto_merge)
    seen: list[str] = []
    for op in start + ops:
        try:
            response = _run(stub, workspace_stub, workspace, op, seen)
        except grpc.RpcError as error:
            assert error.code() in ALLOWED, (op, error.code(), error.details())
            continue
        person = getattr(response, "person", None)
        if person is not None and person.cio_id:
            if person.cio_id not in seen:
                seen.append(person.cio_id)
            # R15: the response is the person as stored.
            stored = stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace,
                                                        person=pb.PersonRef(cio_id=person.cio_id)))
            assert stored.person == person, op
    current = stub.GetSettings(pb.GetSettingsRequest(workspace_id=workspace)).settings
    _check_people(engine, workspace, MODE_FROM_PB[current.identifier_mode])
