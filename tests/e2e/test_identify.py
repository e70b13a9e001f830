"""Identify end to end through gRPC: R9-R15 (add or update a person, merge), R40 (one call, one
transaction) and R41 (no duplicate identifier, also under concurrency)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import sqlalchemy as sa

from identity.v1 import identity_pb2 as pb
from service.db import repository
from service.domain import Mode
from tests.e2e.helpers import (
    CIO_ID_SHAPE,
    UNKNOWN_CIO_ID,
    assert_invalid,
    attrs,
    get,
    identify,
    identify_request,
    plain,
    ref,
    refused,
)

NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


# --------------------------------------------------------------------------- R9


def test_r9_identify_without_cio_id_or_identifier_is_invalid(stub, workspace, people_rows):
    refusal = refused(stub.Identify, identify_request(workspace, attributes={"plan": "pro"}))
    assert_invalid(refusal, "id")
    assert refusal.reason == "MISSING_IDENTIFIER"
    assert people_rows(workspace) == []


# --------------------------------------------------------------------------- R10


def test_r10_identify_by_unknown_cio_id_is_not_found_and_never_creates(stub, workspace, people_rows):
    request = identify_request(workspace, cio_id=UNKNOWN_CIO_ID, id="ab100", email="p@example.com",
                               attributes={"plan": "pro"})
    refusal = refused(stub.Identify, request, NOT_FOUND)
    assert refusal.reason == "PERSON_NOT_FOUND"
    assert people_rows(workspace) == []
    # Not even as an update_only=False create of the id or the email.
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(id="ab100")), NOT_FOUND)


def test_r10_identify_by_cio_id_updates_that_person_and_may_change_its_id_and_email(stub, workspace):
    created = identify(stub, workspace, id="ab100")
    cio = created.person.cio_id
    response = identify(stub, workspace, cio_id=cio, id="ab200", email="new@example.com",
                        attributes={"plan": "pro"})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert plain(response.person) == {"cio_id": cio, "id": "ab200", "email": "new@example.com",
                                      "attributes": {"plan": "pro"}}
    assert get(stub, workspace, id="ab200").cio_id == cio
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(id="ab100")), NOT_FOUND)


def test_r10_identify_by_cio_id_with_an_id_owned_by_another_is_already_exists(stub, workspace, people_rows):
    owner = identify(stub, workspace, id="ab100").person
    other = identify(stub, workspace, id="ab200").person
    before = people_rows(workspace)
    refusal = refused(stub.Identify, identify_request(workspace, cio_id=other.cio_id, id="ab100"), ALREADY_EXISTS)
    assert refusal.metadata["owner_cio_id"] == owner.cio_id
    assert refusal.metadata["field"] == "id"
    assert people_rows(workspace) == before


def test_r10_identify_by_cio_id_with_an_email_owned_by_another_case_insensitively_is_already_exists(
    stub, workspace, people_rows
):
    owner = identify(stub, workspace, email="owner@example.com").person
    other = identify(stub, workspace, id="ab200").person
    before = people_rows(workspace)
    refusal = refused(
        stub.Identify, identify_request(workspace, cio_id=other.cio_id, email="OWNER@Example.COM"), ALREADY_EXISTS
    )
    assert refusal.metadata["owner_cio_id"] == owner.cio_id
    assert refusal.metadata["field"] == "email"
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R11


def test_r11_none_none_creates_a_person_with_the_given_id_and_email(stub, workspace, people_rows):
    response = identify(stub, workspace, id="ab100", email="A@Example.com", attributes={"plan": "free"})
    assert response.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert CIO_ID_SHAPE.fullmatch(response.person.cio_id)
    assert plain(response.person) == {"cio_id": response.person.cio_id, "id": "ab100", "email": "A@Example.com",
                                      "attributes": {"plan": "free"}}
    assert list(response.merged_cio_ids) == []
    fetched = get(stub, workspace, email="a@example.com")
    assert fetched == response.person
    assert len(people_rows(workspace)) == 1


def test_r11_none_none_with_update_only_is_not_found_and_creates_nothing(stub, workspace, people_rows):
    identify(stub, workspace, id="someone-else")
    before = people_rows(workspace)
    request = identify_request(workspace, id="ab100", email="p@example.com", update_only=True)
    refused(stub.Identify, request, NOT_FOUND)
    assert people_rows(workspace) == before


def test_r11_update_only_updates_a_person_who_exists(stub, workspace):
    created = identify(stub, workspace, id="ab100").person
    response = identify(stub, workspace, id="ab100", update_only=True, attributes={"plan": "pro"})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert response.person.cio_id == created.cio_id


def test_r11_found_none_sets_the_email_when_a_has_none(stub, workspace):
    a = identify(stub, workspace, id="ab100").person
    response = identify(stub, workspace, id="ab100", email="p@example.com")
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert (response.person.cio_id, response.person.email) == (a.cio_id, "p@example.com")
    assert get(stub, workspace, email="P@EXAMPLE.COM").cio_id == a.cio_id


def test_r11_found_none_changes_another_email_by_id_when_email_updatable_by_id(make_workspace, stub):
    workspace = make_workspace(email_updatable_by_id=True)
    a = identify(stub, workspace, id="ab100", email="old@example.com").person
    response = identify(stub, workspace, id="ab100", email="new@example.com")
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert (response.person.cio_id, response.person.email) == (a.cio_id, "new@example.com")
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(email="old@example.com")),
            NOT_FOUND)


def test_r11_found_none_refuses_another_email_by_id_when_email_not_updatable_by_id(
    make_workspace, stub, people_rows
):
    workspace = make_workspace(email_updatable_by_id=False)
    identify(stub, workspace, id="ab100", email="old@example.com")
    before = people_rows(workspace)
    request = identify_request(workspace, id="ab100", email="new@example.com", attributes={"plan": "pro"})
    refusal = refused(stub.Identify, request, FAILED_PRECONDITION)
    assert refusal.reason == "EMAIL_CHANGE_REQUIRES_CIO_ID"
    assert "cio_id" in refusal.message
    assert people_rows(workspace) == before


def test_r11_none_found_sets_the_id_when_b_has_none(stub, workspace):
    b = identify(stub, workspace, email="p@example.com").person
    response = identify(stub, workspace, id="ab100", email="P@example.com")
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert (response.person.cio_id, response.person.id) == (b.cio_id, "ab100")
    assert get(stub, workspace, id="ab100").cio_id == b.cio_id


def test_r11_none_found_refuses_when_b_has_another_id(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100", email="p@example.com")
    before = people_rows(workspace)
    refusal = refused(stub.Identify, identify_request(workspace, id="ab200", email="p@example.com"),
                      FAILED_PRECONDITION)
    assert refusal.reason == "ID_CHANGE_REQUIRES_CIO_ID"
    assert people_rows(workspace) == before


def test_r11_found_found_same_updates_a(stub, workspace, people_rows):
    a = identify(stub, workspace, id="ab100", email="p@example.com").person
    response = identify(stub, workspace, id="ab100", email="P@Example.com", attributes={"plan": "pro"})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert response.person.cio_id == a.cio_id
    assert attrs(response.person) == {"plan": "pro"}
    assert list(response.merged_cio_ids) == []
    assert len(people_rows(workspace)) == 1


def test_r11_found_found_different_without_merge_is_already_exists_naming_the_identifier(
    stub, workspace, people_rows
):
    identify(stub, workspace, id="ab100", email="a@example.com")
    b = identify(stub, workspace, email="b@example.com").person
    before = people_rows(workspace)
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", email="b@example.com"), ALREADY_EXISTS)
    assert refusal.reason == "IDENTIFIER_ALREADY_EXISTS"
    assert refusal.metadata["field"] == "email"
    assert refusal.metadata["owner_cio_id"] == b.cio_id
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R12


def test_r12_id_only_requires_id_or_cio_id(make_workspace, stub, people_rows):
    workspace = make_workspace(Mode.ID_ONLY)
    assert_invalid(refused(stub.Identify, identify_request(workspace, email="p@example.com")), "id")
    assert people_rows(workspace) == []


def test_r12_id_only_stores_email_as_an_attribute_that_two_people_may_share(make_workspace, stub, people_rows):
    workspace = make_workspace(Mode.ID_ONLY)
    a = identify(stub, workspace, id="ab100", email="same@example.com")
    b = identify(stub, workspace, id="ab200", email="same@example.com")
    assert (a.outcome, b.outcome) == (pb.IDENTIFY_OUTCOME_CREATED, pb.IDENTIFY_OUTCOME_CREATED)
    assert a.person.cio_id != b.person.cio_id
    assert len(people_rows(workspace)) == 2
    # The email does not match anyone: a new id with a known email is a new person.
    c = identify(stub, workspace, id="ab300", email="SAME@example.com")
    assert c.outcome == pb.IDENTIFY_OUTCOME_CREATED


def test_r12_id_only_person_shows_the_email_in_attributes(make_workspace, stub):
    # The contract (Person.email): "In ID_ONLY workspaces an email is an ordinary attribute and
    # appears in attributes instead."
    workspace = make_workspace(Mode.ID_ONLY)
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    assert not person.HasField("email")
    assert attrs(person).get("email") == "p@example.com"


def test_r12_id_only_email_attribute_changes_through_identify(make_workspace, stub):
    workspace = make_workspace(Mode.ID_ONLY)
    identify(stub, workspace, id="ab100", email="old@example.com")
    response = identify(stub, workspace, id="ab100", email="new@example.com")
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    stored = get(stub, workspace, id="ab100")
    assert "new@example.com" in (stored.email, attrs(stored).get("email"))


def test_r12_email_only_requires_email_or_cio_id(make_workspace, stub, people_rows):
    workspace = make_workspace(Mode.EMAIL_ONLY)
    assert_invalid(refused(stub.Identify, identify_request(workspace, id="ab100")), "email")
    assert people_rows(workspace) == []


def test_r12_email_only_stores_id_as_an_attribute_that_two_people_may_share(make_workspace, stub, people_rows):
    workspace = make_workspace(Mode.EMAIL_ONLY)
    a = identify(stub, workspace, email="a@example.com", id="shared")
    b = identify(stub, workspace, email="b@example.com", id="shared")
    assert (a.outcome, b.outcome) == (pb.IDENTIFY_OUTCOME_CREATED, pb.IDENTIFY_OUTCOME_CREATED)
    assert a.person.cio_id != b.person.cio_id
    assert len(people_rows(workspace)) == 2


def test_r12_email_only_person_shows_the_id_in_attributes(make_workspace, stub):
    # The contract (Person.id): "In EMAIL_ONLY workspaces an id is an ordinary attribute and
    # appears in attributes instead."
    workspace = make_workspace(Mode.EMAIL_ONLY)
    person = identify(stub, workspace, email="p@example.com", id="ab100").person
    assert not person.HasField("id")
    assert attrs(person).get("id") == "ab100"


def test_r12_email_only_identify_matches_by_email_case_insensitively(make_workspace, stub):
    workspace = make_workspace(Mode.EMAIL_ONLY)
    a = identify(stub, workspace, email="Person@Example.com").person
    response = identify(stub, workspace, email="person@example.com", attributes={"plan": "pro"})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert response.person.cio_id == a.cio_id


# --------------------------------------------------------------------------- R13


def test_r13_merges_the_id_person_and_the_email_person(stub, workspace, people_rows):
    a = identify(stub, workspace, id="ab100", attributes={"plan": "free", "only_a": "a"}).person
    b = identify(stub, workspace, email="b@example.com",
                 attributes={"plan": "pro", "only_b": "b", "lang": "fr"}).person
    response = identify(stub, workspace, id="ab100", email="B@Example.com", attributes={"lang": "de"})
    assert response.outcome == pb.IDENTIFY_OUTCOME_MERGED
    assert list(response.merged_cio_ids) == [b.cio_id]
    merged = response.person
    # A is older: the primary keeps its cio_id and creation time and ends with both identifiers.
    assert merged.cio_id == a.cio_id
    assert merged.create_time == a.create_time
    assert merged.id == "ab100"
    assert merged.email.lower() == "b@example.com"
    # Empty on the primary: the secondary's value; set on the primary: kept; then the request.
    assert attrs(merged) == {"plan": "free", "only_a": "a", "only_b": "b", "lang": "de"}
    # The secondary is gone, its identifiers now lead to the primary.
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=workspace, person=ref(cio_id=b.cio_id)), NOT_FOUND)
    assert get(stub, workspace, email="b@example.com") == merged
    assert [row[0] for row in people_rows(workspace)] == [a.cio_id]


def test_r13_an_empty_string_on_the_primary_takes_the_secondarys_value(stub, workspace):
    identify(stub, workspace, id="ab100", attributes={"plan": "", "lang": "fr"})
    identify(stub, workspace, email="b@example.com", attributes={"plan": "pro", "lang": "de"})
    merged = identify(stub, workspace, id="ab100", email="b@example.com").person
    assert attrs(merged) == {"plan": "pro", "lang": "fr"}


def test_r13_the_older_person_is_the_primary(stub, workspace, people_rows):
    b = identify(stub, workspace, email="b@example.com").person  # older
    a = identify(stub, workspace, id="ab100").person
    response = identify(stub, workspace, id="ab100", email="b@example.com")
    assert response.outcome == pb.IDENTIFY_OUTCOME_MERGED
    assert response.person.cio_id == b.cio_id
    assert list(response.merged_cio_ids) == [a.cio_id]
    assert (response.person.id, response.person.email) == ("ab100", "b@example.com")
    assert get(stub, workspace, id="ab100").cio_id == b.cio_id
    assert [row[0] for row in people_rows(workspace)] == [b.cio_id]


def test_r13_refused_when_auto_merge_is_off(make_workspace, stub, people_rows):
    workspace = make_workspace(auto_merge=False)
    identify(stub, workspace, id="ab100")
    b = identify(stub, workspace, email="b@example.com").person
    before = people_rows(workspace)
    request = identify_request(workspace, id="ab100", email="b@example.com", attributes={"plan": "pro"})
    refusal = refused(stub.Identify, request, ALREADY_EXISTS)
    assert refusal.metadata["owner_cio_id"] == b.cio_id
    assert people_rows(workspace) == before


def test_r13_refused_when_a_has_an_email(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100", email="a@example.com")
    b = identify(stub, workspace, email="b@example.com").person
    before = people_rows(workspace)
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", email="b@example.com"), ALREADY_EXISTS)
    assert refusal.metadata["owner_cio_id"] == b.cio_id
    assert people_rows(workspace) == before


def test_r13_refused_when_b_has_an_id(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100")
    b = identify(stub, workspace, id="ab200", email="b@example.com").person
    before = people_rows(workspace)
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", email="b@example.com"), ALREADY_EXISTS)
    assert refusal.metadata["owner_cio_id"] == b.cio_id
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R14


def test_r14_names_given_are_set_null_removes_and_others_are_untouched(stub, workspace):
    identify(stub, workspace, id="ab100", attributes={"plan": "free", "lang": "fr", "score": 3})
    response = identify(stub, workspace, id="ab100", attributes={"plan": "pro", "lang": None, "new": [1, "x"]})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert attrs(response.person) == {"plan": "pro", "score": 3, "new": [1, "x"]}
    assert attrs(get(stub, workspace, id="ab100")) == {"plan": "pro", "score": 3, "new": [1, "x"]}


def test_r14_null_for_an_absent_attribute_changes_nothing(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100", attributes={"plan": "free"})
    before = people_rows(workspace)
    response = identify(stub, workspace, id="ab100", attributes={"missing": None})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UNCHANGED
    assert people_rows(workspace) == before


def test_r14_nested_values_round_trip(stub, workspace):
    value = {"a": {"b": [1, 2.5, "c", True, None]}, "n": -7}
    identify(stub, workspace, id="ab100", attributes={"nested": value})
    assert attrs(get(stub, workspace, id="ab100"))["nested"] == value


@pytest.mark.parametrize(("old", "new", "kind"), [(1, True, "bool_value"), (True, 1, "number_value"),
                                                  (0, False, "bool_value"), ("1", 1, "number_value")])
def test_r14_a_value_of_another_json_type_is_a_change(stub, workspace, old, new, kind):
    # JSON true and 1 are different values; Struct keeps bool_value and number_value apart.
    identify(stub, workspace, id="ab100", attributes={"flag": old})
    response = identify(stub, workspace, id="ab100", attributes={"flag": new})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    stored = get(stub, workspace, id="ab100")
    assert stored.attributes.fields["flag"].WhichOneof("kind") == kind


# --------------------------------------------------------------------------- R15


def test_r15_outcomes_created_updated_unchanged_with_the_whole_person(stub, workspace):
    created = identify(stub, workspace, id="ab100", email="p@example.com", attributes={"plan": "free", "lang": "fr"})
    assert created.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert created.person.create_time == created.person.update_time
    assert created.person.create_time.seconds > 0

    updated = identify(stub, workspace, id="ab100", attributes={"plan": "pro"})
    assert updated.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    # The whole person, not only what the request named.
    assert plain(updated.person) == {"cio_id": created.person.cio_id, "id": "ab100", "email": "p@example.com",
                                     "attributes": {"plan": "pro", "lang": "fr"}}
    assert updated.person.create_time == created.person.create_time
    assert updated.person.update_time.ToDatetime() > created.person.update_time.ToDatetime()
    assert updated.person == get(stub, workspace, cio_id=created.person.cio_id)

    unchanged = identify(stub, workspace, id="ab100", email="p@example.com", attributes={"plan": "pro"})
    assert unchanged.outcome == pb.IDENTIFY_OUTCOME_UNCHANGED
    assert unchanged.person == updated.person  # update_time did not move
    assert list(unchanged.merged_cio_ids) == []


def test_r15_unchanged_writes_nothing(stub, workspace, people_rows):
    identify(stub, workspace, id="ab100", attributes={"plan": "free"})
    before = people_rows(workspace)
    response = identify(stub, workspace, id="ab100", attributes={"plan": "free"})
    assert response.outcome == pb.IDENTIFY_OUTCOME_UNCHANGED
    assert people_rows(workspace) == before


# --------------------------------------------------------------------------- R40


def test_r40_a_refused_merge_leaves_both_people_unchanged(make_workspace, stub, people_rows):
    workspace = make_workspace(auto_merge=False)
    identify(stub, workspace, id="ab100", attributes={"plan": "free"})
    identify(stub, workspace, email="b@example.com", attributes={"lang": "fr"})
    before = people_rows(workspace)
    request = identify_request(workspace, id="ab100", email="b@example.com", attributes={"plan": "pro", "x": 1})
    refused(stub.Identify, request, ALREADY_EXISTS)
    assert people_rows(workspace) == before


def test_r40_a_merge_that_fails_midway_is_rolled_back(stub, workspace, people_rows, monkeypatch):
    # The merge deletes the secondary first; a failure while writing the primary must undo it.
    a = identify(stub, workspace, id="ab100").person
    b = identify(stub, workspace, email="b@example.com").person
    before = people_rows(workspace)

    # The primary's UPDATE fails in the database, after the secondary's DELETE was sent with it.
    monkeypatch.setattr(repository, "UPDATE_PERSON_SQL", "UPDATE no_such_table_for_this_test SET x = 1")
    refusal = refused(stub.Identify, identify_request(workspace, id="ab100", email="b@example.com"),
                      grpc.StatusCode.INTERNAL)
    assert refusal.message == "internal error"
    monkeypatch.undo()
    assert people_rows(workspace) == before
    assert get(stub, workspace, cio_id=b.cio_id).email == "b@example.com"
    assert get(stub, workspace, cio_id=a.cio_id).id == "ab100"


def test_r40_a_refused_identify_applies_none_of_its_attributes(make_workspace, stub, people_rows):
    workspace = make_workspace(email_updatable_by_id=False)
    identify(stub, workspace, id="ab100", email="old@example.com", attributes={"plan": "free"})
    before = people_rows(workspace)
    request = identify_request(workspace, id="ab100", email="new@example.com", attributes={"plan": "pro"})
    refused(stub.Identify, request, FAILED_PRECONDITION)
    assert people_rows(workspace) == before
    assert attrs(get(stub, workspace, id="ab100")) == {"plan": "free"}


# --------------------------------------------------------------------------- R41


def test_r41_two_identify_calls_with_the_same_id_give_one_person(stub, workspace, people_rows):
    first = identify(stub, workspace, id="ab100")
    second = identify(stub, workspace, id="ab100", attributes={"plan": "pro"})
    assert second.person.cio_id == first.person.cio_id
    assert second.outcome == pb.IDENTIFY_OUTCOME_UPDATED
    assert len(people_rows(workspace)) == 1


def test_r41_ids_are_case_sensitive(stub, workspace, people_rows):
    lower = identify(stub, workspace, id="ab100")
    upper = identify(stub, workspace, id="AB100")
    assert upper.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert lower.person.cio_id != upper.person.cio_id
    assert get(stub, workspace, id="AB100").cio_id == upper.person.cio_id
    assert get(stub, workspace, id="ab100").cio_id == lower.person.cio_id
    assert len(people_rows(workspace)) == 2


def test_r41_email_case_variants_are_one_person(stub, workspace, people_rows):
    first = identify(stub, workspace, email="Person@Example.com")
    second = identify(stub, workspace, email="person@example.com", attributes={"plan": "pro"})
    assert second.person.cio_id == first.person.cio_id
    assert second.person.email == "Person@Example.com"  # stored as given (section 1)
    assert len(people_rows(workspace)) == 1


def test_r41_unicode_email_case_variants_are_one_person(stub, workspace, people_rows):
    first = identify(stub, workspace, email="Ärger@Example.com")
    second = identify(stub, workspace, email="ärger@example.com")
    assert second.person.cio_id == first.person.cio_id
    assert len(people_rows(workspace)) == 1


def test_r41_the_same_id_in_two_workspaces_is_two_people(make_workspace, stub):
    one, two = make_workspace(), make_workspace()
    a = identify(stub, one, id="ab100", email="p@example.com")
    b = identify(stub, two, id="ab100", email="p@example.com")
    assert b.outcome == pb.IDENTIFY_OUTCOME_CREATED
    assert a.person.cio_id != b.person.cio_id
    refused(stub.GetPerson, pb.GetPersonRequest(workspace_id=two, person=ref(cio_id=a.person.cio_id)), NOT_FOUND)


def _concurrently(count: int, call):
    barrier = threading.Barrier(count)

    def run(i):
        barrier.wait()
        try:
            return call(i)
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_r41_concurrent_identify_with_the_same_new_id_creates_one_person(stub, workspace, people_rows):
    results = _concurrently(16, lambda i: identify(stub, workspace, id="racer", attributes={f"k{i}": i},
                                                   timeout=30))
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert errors == [], [(e.code(), e.details()) for e in errors]
    assert len({r.person.cio_id for r in results}) == 1
    assert [r.outcome for r in results].count(pb.IDENTIFY_OUTCOME_CREATED) == 1
    rows = people_rows(workspace)
    assert len(rows) == 1
    # Every call's attribute was applied to the one person.
    assert attrs(get(stub, workspace, id="racer")) == {f"k{i}": i for i in range(16)}


def test_r41_concurrent_identify_with_email_case_variants_creates_one_person(stub, workspace, people_rows):
    variants = ["race@example.com", "RACE@example.com", "Race@Example.Com", "race@EXAMPLE.com"]
    results = _concurrently(16, lambda i: identify(stub, workspace, email=variants[i % 4], timeout=30))
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert errors == [], [(e.code(), e.details()) for e in errors]
    assert len({r.person.cio_id for r in results}) == 1
    assert len(people_rows(workspace)) == 1


def test_r41_concurrent_updates_to_the_same_email_give_it_to_one_person(stub, workspace, people_rows):
    people = [identify(stub, workspace, id=f"p{i}").person for i in range(8)]

    def claim(i):
        request = pb.UpdateIdentifierRequest(workspace_id=workspace, person=ref(cio_id=people[i].cio_id),
                                             identifier=pb.IDENTIFIER_TYPE_EMAIL, value="Taken@example.com")
        return stub.UpdateIdentifier(request, timeout=30)

    results = _concurrently(8, claim)
    winners = [r for r in results if not isinstance(r, grpc.RpcError)]
    losers = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(winners) == 1
    assert {e.code() for e in losers} == {ALREADY_EXISTS}
    emails = [row[2] for row in people_rows(workspace) if row[2] is not None]
    assert emails == ["Taken@example.com"]


def test_r41_the_database_refuses_a_duplicate_key_written_past_the_service(stub, workspace, engine):
    # The uniqueness is the database's, not only the service's checks: a row written directly
    # with an id key that exists already is refused by the unique index.
    person = identify(stub, workspace, id="ab100", email="p@example.com").person
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO people (workspace_id, cio_id, id, id_key, attributes, created_at, updated_at) "
                    "VALUES (:w, :c, 'ab100', 'ab100', '{}', now(), now())"
                ),
                {"w": workspace, "c": "1" * 20},
            )
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO people (workspace_id, cio_id, email, email_norm, email_key, attributes, "
                    "created_at, updated_at) VALUES (:w, :c, 'P@example.com', 'p@example.com', "
                    "'p@example.com', '{}', now(), now())"
                ),
                {"w": workspace, "c": "2" * 20},
            )
    assert get(stub, workspace, id="ab100") == person
