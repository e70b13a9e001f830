"""Applying changes to a person (R14) and JSON equality: what "changed" means for UNCHANGED
(R15) and for R24's "equal to the current value"."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from service.domain import Person
from service.errors import FailedPrecondition
from service.rules.changes import UNSET, apply_to_person, same_json

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def person(**attributes) -> Person:
    return Person("a" * 20, "ab100", "p@example.com", attributes, T0, T0)


@pytest.mark.parametrize(
    "a, b",
    [(1, 1.0), ("x", "x"), (None, None), (True, True), ([1, "x"], [1.0, "x"]), ({"k": [1]}, {"k": [1.0]}), ([], [])],
)
def test_r14_same_json_values(a, b):
    assert same_json(a, b) and same_json(b, a)


@pytest.mark.parametrize(
    "a, b",
    [
        (1, True), (0, False), (1.0, True), ("1", 1), (None, 0), (None, ""), ("", []),
        ([1, 2], [1]), ([1], [1, 2]), ([1], [2]), (["x"], "x"), (["x"], ("x",)), ([], {}),
        ({"k": 1}, {"k": True}), ({"k": 1}, {"j": 1}), ({"k": 1}, {"k": 1, "j": 2}), ({"k": 1}, [("k", 1)]),
    ],
)
def test_r14_different_json_values(a, b):
    assert not same_json(a, b) and not same_json(b, a)


def test_r14_apply_sets_removes_and_keeps_the_rest():
    before = person(plan="free", city="Paris")
    after = apply_to_person(before, NOW, attributes={"plan": "pro", "city": None, "gone": None, "new": [1]})
    assert after == Person("a" * 20, "ab100", "p@example.com", {"plan": "pro", "new": [1]}, T0, NOW)
    assert before.attributes == {"plan": "free", "city": "Paris"}  # the stored person is not touched


def test_r15_apply_without_a_change_returns_the_same_person():
    before = person(plan="free", n=1)
    assert apply_to_person(before, NOW) is before
    assert apply_to_person(before, NOW, id="ab100", email="p@example.com", attributes={"n": 1.0, "x": None}) is before
    assert apply_to_person(before, NOW, id=UNSET, email=UNSET) is before


def test_r14_apply_identifiers_none_removes_unset_keeps():
    before = person()
    assert apply_to_person(before, NOW, id=None).id is None
    assert apply_to_person(before, NOW, email=None) == Person("a" * 20, "ab100", None, {}, T0, NOW)
    assert apply_to_person(before, NOW, email="q@example.com", id=UNSET).id == "ab100"
    assert repr(UNSET) == "UNSET"


def test_r6_apply_refuses_a_person_beyond_300_attributes():
    full = person(**{f"a{i}": i for i in range(300)})
    with pytest.raises(FailedPrecondition) as info:
        apply_to_person(full, NOW, attributes={"one_more": 1})
    assert info.value.reason == "PERSON_ATTRIBUTE_LIMIT"
    assert info.value.message == "the person would have 301 attributes; at most 300 are allowed"
    assert len(apply_to_person(full, NOW, attributes={"one_more": 1, "a0": None}).attributes) == 300
