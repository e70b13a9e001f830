"""Field validation of the rules core: R3 (id), R4 (email and its key), R5 (cio_id shape),
R6 (attributes), R8 (workspace id shape), and how they surface as field violations (R42)."""

from __future__ import annotations

import json
import socket
import unicodedata
from datetime import datetime, timezone

import pytest
from email_validator import validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.domain import Field, IdentifyInput, Mode, Person, Ref, Settings
from service.errors import FailedPrecondition, InvalidArgument
from service.rules import identifiers, identify, modes, validation
from service.rules.validation import (
    ATTRIBUTE_VALUE_MAX_BYTES,
    check_attributes,
    check_cio_id,
    check_email,
    check_id,
    check_workspace_id,
    email_key,
    new_cio_id,
)

# --------------------------------------------------------------------------- builders

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
T0 = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
WS = "ws-1"
CIO_A = "a" + "0" * 19


def ws(mode: Mode = Mode.EMAIL_OR_ID, **kw) -> Settings:
    return Settings(WS, mode, **kw)


def person(cio_id: str = CIO_A, id=None, email=None, attributes=None) -> Person:
    return Person(cio_id, id, email, dict(attributes or {}), T0, T0)


def plan(settings: Settings, **fields):
    """Identify's validation as the service runs it: the shapes before the lookup, the rest
    (which depends on the mode) in the decision. Returns the lookup."""
    req = IdentifyInput(WS, **fields)
    lookup = identify.identify_lookup(req)
    people = [person(req.cio_id)] if req.cio_id else []
    identify.decide_identify(settings, req, people, T0, "0" * 20)
    return lookup


def reasons(violations) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in violations]


def expect_invalid(call, field: str, reason: str) -> InvalidArgument:
    """The call is refused with INVALID_ARGUMENT whose first violation names `field`."""
    with pytest.raises(InvalidArgument) as info:
        call()
    err = info.value
    assert err.violations[0].field == field
    assert err.violations[0].reason == reason
    assert err.reason == reason
    assert err.metadata == {"field": field}
    return err


def email_of_length(n: int) -> str:
    """A syntactically valid address of exactly n characters (n >= 70)."""
    local = "x" * 64
    rest = n - len(local) - 1 - len(".com")  # characters left for the domain labels and dots
    labels = []
    while rest > 0:
        size = min(63, rest)
        if rest - size == 1:  # a lone dot cannot end the name: leave room for a 1-char label
            size -= 1
        labels.append("d" * size)
        rest -= size + 1
    address = local + "@" + ".".join(labels) + ".com"
    assert len(address) == n, len(address)
    return address


CONTROL_CHARS = [chr(c) for c in range(0x00, 0x20)] + [chr(c) for c in range(0x7F, 0xA0)]

# --------------------------------------------------------------------------- R3: id


@pytest.mark.parametrize("value", ["ab100", "AB100", "a b", "ünïcødé-42", "x" * 150])
def test_r3_id_accepts_well_formed_values(value):
    assert check_id(value) == []


def test_r3_id_rejects_empty():
    assert reasons(check_id("")) == [("id", "INVALID_ID")]


def test_r3_id_at_most_150_bytes_ascii():
    assert check_id("x" * 150) == []
    assert reasons(check_id("x" * 151)) == [("id", "INVALID_ID")]


def test_r3_id_limit_counts_utf8_bytes_not_characters():
    assert check_id("é" * 75) == []  # 150 bytes
    assert reasons(check_id("é" * 76)) == [("id", "INVALID_ID")]  # 152 bytes, 76 characters
    assert check_id("€" * 50) == []  # 150 bytes
    assert reasons(check_id("€" * 51)) == [("id", "INVALID_ID")]


@pytest.mark.parametrize("value", [" ab100", "ab100 ", "\tab100", "ab100\n", "\u00a0ab100", "ab100\u3000"])
def test_r3_id_rejects_leading_or_trailing_whitespace(value):
    assert reasons(check_id(value)) == [("id", "INVALID_ID")]


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9f", "\n", "\r"])
def test_r3_id_rejects_control_characters(char):
    violations = check_id("ab" + char + "100")
    assert reasons(violations) == [("id", "INVALID_ID")]
    assert "control" in violations[0].description


@given(
    st.text(max_size=20).filter(lambda s: s.strip() == s),
    st.sampled_from(CONTROL_CHARS),
    st.text(max_size=20),
)
def test_r3_id_rejects_any_control_character_anywhere(prefix, control, suffix):
    assert reasons(check_id("a" + prefix + control + suffix + "z")) == [("id", "INVALID_ID")]


@given(st.text(max_size=200))
def test_r3_every_accepted_id_satisfies_all_constraints(value):
    if check_id(value) == []:
        assert 1 <= len(value.encode("utf-8")) <= 150
        assert value == value.strip()
        assert not any(c in CONTROL_CHARS for c in value)
    else:
        assert reasons(check_id(value)) == [("id", "INVALID_ID")]


def test_r3_identify_names_the_bad_id_field():
    expect_invalid(lambda: plan(ws(), id=" ab100"), "id", "INVALID_ID")


def test_r3_reference_by_bad_id_names_person_id_field():
    expect_invalid(
        lambda: identifiers.ref_lookup(WS, Ref(Field.ID, "ab\x00100")), "person.id", "INVALID_ID"
    )


def test_r3_update_identifier_new_id_value_is_validated():
    expect_invalid(
        lambda: identifiers.update_identifier_lookup(WS, Ref(Field.CIO_ID, CIO_A), Field.ID, ""),
        "value",
        "INVALID_ID",
    )


@pytest.mark.parametrize("mode", [Mode.ID_ONLY, Mode.EMAIL_ONLY])
def test_r3_id_is_validated_even_where_it_is_an_attribute(mode):
    expect_invalid(
        lambda: plan(ws(mode), cio_id=CIO_A, id="x" * 151), "id", "INVALID_ID"
    )


# --------------------------------------------------------------------------- R4: email


@pytest.mark.parametrize(
    "value",
    ["person@example.com", "Person@Example.com", "first.last+tag@sub.example.org", "ä@example.com"],
)
def test_r4_email_accepts_valid_addresses(value):
    assert check_email(value) == []


@pytest.mark.parametrize(
    "value",
    [
        "plainaddress",
        "person@",
        "@example.com",
        "per son@example.com",
        "person@@example.com",
        "person@example..com",
        "person@example.com.",
        "person@localhost",
        "Person <person@example.com>",
    ],
)
def test_r4_email_rejects_invalid_syntax(value):
    assert reasons(check_email(value)) == [("email", "INVALID_EMAIL")]


def test_r4_email_rejects_empty():
    assert reasons(check_email("")) == [("email", "INVALID_EMAIL")]


def test_r4_email_at_most_254_characters():
    assert check_email(email_of_length(254)) == []
    violations = check_email(email_of_length(255))
    assert reasons(violations) == [("email", "INVALID_EMAIL")]
    assert "254" in violations[0].description


@pytest.mark.parametrize("value", [" person@example.com", "person@example.com ", "person@example.com\n"])
def test_r4_email_rejects_surrounding_whitespace(value):
    assert reasons(check_email(value)) == [("email", "INVALID_EMAIL")]


def test_r4_email_check_makes_no_dns_lookups(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("R4: email validation must not touch the network")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_connection", "socket"):
        monkeypatch.setattr(socket, name, no_network)
    assert check_email("someone@no-such-domain-for-identity-tests.com") == []


def test_r4_identify_names_the_bad_email_field():
    expect_invalid(lambda: plan(ws(), email="not-an-email"), "email", "INVALID_EMAIL")


def test_r4_reference_by_bad_email_names_person_email_field():
    expect_invalid(
        lambda: identifiers.ref_lookup(WS, Ref(Field.EMAIL, "nope")), "person.email", "INVALID_EMAIL"
    )


def test_r4_update_identifier_new_email_value_is_validated():
    expect_invalid(
        lambda: identifiers.update_identifier_lookup(WS, Ref(Field.CIO_ID, CIO_A), Field.EMAIL, "a@b@c"),
        "value",
        "INVALID_EMAIL",
    )


def test_r4_email_key_is_case_insensitive():
    assert email_key("Person@Example.com") == email_key("person@example.com") == "person@example.com"
    assert email_key("PERSON@EXAMPLE.COM") == "person@example.com"


def test_r4_email_key_lowercases_unicode():
    assert email_key("ÄRGER@Example.com") == email_key("ärger@example.com")


def test_r4_email_key_matches_composed_and_decomposed_forms():
    composed = unicodedata.normalize("NFC", "josé@example.com")
    decomposed = unicodedata.normalize("NFD", "josé@example.com")
    assert composed != decomposed
    assert email_key(composed) == email_key(decomposed)


def test_r4_email_key_keeps_different_addresses_apart():
    assert email_key("person@example.com") != email_key("person2@example.com")
    assert email_key("person@example.com") != email_key("person@example.org")


# Capital letters whose lower case composes with a following combining accent under NFC:
# U+03AA GREEK CAPITAL IOTA WITH DIALYTIKA + U+0301 lowers to U+03CA U+0301, which NFC makes U+0390.
GREEK_UPPER = "\u03aa\u0301x@example.gr"
GREEK_UPPER_2 = "\u1ffc\u0301x@example.gr"  # GREEK CAPITAL OMEGA WITH PROSGEGRAMMENI + acute


@pytest.mark.parametrize("address", [GREEK_UPPER, GREEK_UPPER_2])
def test_r4_email_key_of_an_address_and_its_lower_case_spelling_is_the_same(address):
    lower = address.lower()
    assert check_email(address) == [] and check_email(lower) == []  # both are valid addresses
    assert email_key(address) == email_key(lower)


@given(st.text(min_size=1, max_size=8))
@example(GREEK_UPPER)
def test_r4_email_key_ignores_case_for_any_text(text):
    assert email_key(text.lower()) == email_key(text)
    assert email_key(email_key(text)) == email_key(text)


@given(st.from_regex(r"[A-Za-z0-9._+-]{1,20}@[A-Za-z0-9-]{1,20}\.[A-Za-z]{2,6}", fullmatch=True))
def test_r4_email_key_ignores_ascii_case(address):
    assert email_key(address.upper()) == email_key(address.lower()) == email_key(address)


# --------------------------------------------------------------------------- R5: cio_id shape


def test_r5_every_character_of_a_new_cio_id_is_random():
    # 100 random bits, 5 per character: each position takes many values.
    ids = [new_cio_id() for _ in range(300)]
    for position in range(20):
        assert len({value[position] for value in ids}) > 16, position


def test_r5_new_cio_id_has_the_service_shape():
    ids = {new_cio_id() for _ in range(200)}
    assert len(ids) == 200  # 100 random bits: no collisions in a few hundred
    for value in ids:
        assert len(value) == 20
        assert value.isalnum() and value.isascii()
        assert check_cio_id(value) == []


@pytest.mark.parametrize(
    "value",
    ["", "a" * 19, "a" * 21, "A" * 20, "aaaaaaaaaa-aaaaaaaaa", "aaaaaaaaa aaaaaaaaaa", "ab100"],
)
def test_r5_cio_id_of_wrong_shape_is_invalid(value):
    assert reasons(check_cio_id(value)) == [("cio_id", "INVALID_CIO_ID")]


def test_r5_identify_with_malformed_cio_id_names_cio_id_field():
    expect_invalid(lambda: plan(ws(), cio_id="NOT-A-CIO-ID"), "cio_id", "INVALID_CIO_ID")


def test_r5_reference_by_malformed_cio_id_names_person_cio_id_field():
    expect_invalid(
        lambda: identifiers.ref_lookup(WS, Ref(Field.CIO_ID, "x")), "person.cio_id", "INVALID_CIO_ID"
    )


# --------------------------------------------------------------------------- R6: attributes


def test_r6_at_most_300_attribute_names():
    assert check_attributes({f"a{i}": i for i in range(300)}) == []
    assert reasons(check_attributes({f"a{i}": i for i in range(301)})) == [
        ("attributes", "TOO_MANY_ATTRIBUTES")
    ]


def test_r6_attribute_name_is_1_to_150_bytes():
    assert check_attributes({"n" * 150: 1, "é" * 75: 1}) == []
    assert reasons(check_attributes({"": 1})) == [("attributes.", "INVALID_ATTRIBUTE_NAME")]
    assert reasons(check_attributes({"n" * 151: 1})) == [
        ("attributes." + "n" * 151, "INVALID_ATTRIBUTE_NAME")
    ]
    assert reasons(check_attributes({"é" * 76: 1})) == [
        ("attributes." + "é" * 76, "INVALID_ATTRIBUTE_NAME")
    ]


def test_r6_attribute_value_json_at_most_1000_bytes():
    assert check_attributes({"s": "x" * 998}) == []  # '"' + 998 + '"' = 1000 bytes
    assert reasons(check_attributes({"s": "x" * 999})) == [
        ("attributes.s", "ATTRIBUTE_VALUE_TOO_LARGE")
    ]
    assert check_attributes({"s": "é" * 499}) == []  # 998 + 2 bytes
    assert reasons(check_attributes({"s": "é" * 500})) == [
        ("attributes.s", "ATTRIBUTE_VALUE_TOO_LARGE")
    ]
    assert reasons(check_attributes({"l": list(range(400))})) == [
        ("attributes.l", "ATTRIBUTE_VALUE_TOO_LARGE")
    ]


def test_r6_null_value_is_accepted_as_a_removal():
    assert check_attributes({"gone": None}) == []


@pytest.mark.parametrize(
    "mode, reserved, free",
    [
        (Mode.EMAIL_OR_ID, {"cio_id", "id", "email"}, set()),
        (Mode.ID_ONLY, {"cio_id", "id"}, {"email"}),
        (Mode.EMAIL_ONLY, {"cio_id", "email"}, {"id"}),
    ],
)
def test_r6_identifier_names_are_reserved_only_where_they_are_identifiers(mode, reserved, free):
    assert modes.reserved_attribute_names(mode) == frozenset(reserved)
    for name in reserved:
        expect_invalid(
            lambda: plan(ws(mode), cio_id=CIO_A, attributes={name: "x"}),
            f"attributes.{name}",
            "RESERVED_ATTRIBUTE_NAME",
        )
    for name in free:
        value = "ab100" if name == "id" else "person@example.com"
        assert plan(ws(mode), cio_id=CIO_A, attributes={name: value}).cio_ids == (CIO_A,)


def test_r6_identify_reports_a_violation_for_each_bad_field():
    with pytest.raises(InvalidArgument) as info:
        plan(
            ws(),
            cio_id="bad",
            id="",
            email="nope",
            attributes={"": 1, "big": "x" * 2000, "email": "x@example.com"},
        )
    # Shapes are checked before the lookup, all at once; reserved names depend on the mode and
    # are checked with the settings, after the shapes pass.
    assert sorted(reasons(info.value.violations)) == sorted(
        [
            ("cio_id", "INVALID_CIO_ID"),
            ("id", "INVALID_ID"),
            ("email", "INVALID_EMAIL"),
            ("attributes.", "INVALID_ATTRIBUTE_NAME"),
            ("attributes.big", "ATTRIBUTE_VALUE_TOO_LARGE"),
        ]
    )
    with pytest.raises(InvalidArgument) as info:
        plan(ws(), cio_id=CIO_A, id=" x", attributes={"email": "x@example.com"})
    assert reasons(info.value.violations) == [("id", "INVALID_ID")]
    with pytest.raises(InvalidArgument) as info:
        plan(ws(), cio_id=CIO_A, attributes={"id": "ab100", "email": "x@example.com"})
    assert sorted(reasons(info.value.violations)) == [
        ("attributes.email", "RESERVED_ATTRIBUTE_NAME"),
        ("attributes.id", "RESERVED_ATTRIBUTE_NAME"),
    ]


def nested(depth: int, leaf=1):
    """`leaf` inside `depth` levels of lists and objects, alternating."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["top", "list", "object", "deep"])
def test_r6_numbers_must_be_finite_anywhere_in_a_value(value, where):
    wrapped = {"top": value, "list": [1, value], "object": {"a": {"b": value}}, "deep": nested(10, value)}[where]
    violations = check_attributes({"n": wrapped})
    assert reasons(violations) == [("attributes.n", "INVALID_ATTRIBUTE_VALUE")]
    assert "finite" in violations[0].description


def test_r6_nul_is_refused_in_names_and_in_strings_anywhere():
    assert reasons(check_attributes({"a\x00b": 1})) == [("attributes.a\x00b", "INVALID_ATTRIBUTE_NAME")]
    for value in ["a\x00", ["ok", "\x00"], {"k": {"k2": "x\x00y"}}, {"k\x00": 1}, nested(16, "\x00")]:
        violations = check_attributes({"v": value})
        assert reasons(violations) == [("attributes.v", "INVALID_ATTRIBUTE_VALUE")], value
        assert "NUL" in violations[0].description
    # Other control characters are fine in attribute values (JSON escapes them).
    assert check_attributes({"v": "tab\there\x01", "w": {"\x1f": "\x7f"}}) == []


def test_r6_at_most_16_levels_of_lists_and_objects():
    assert check_attributes({"v": nested(16)}) == []
    assert check_attributes({"v": nested(16, [])}) != []  # a 17th level, even empty
    violations = check_attributes({"v": nested(17)})
    assert reasons(violations) == [("attributes.v", "INVALID_ATTRIBUTE_VALUE")]
    assert "16" in violations[0].description
    # A value far deeper than Python's recursion limit is refused, not a crash.
    assert reasons(check_attributes({"v": nested(100_000)})) == [("attributes.v", "INVALID_ATTRIBUTE_VALUE")]


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1: "x"}, {None: 1}, b"bytes", object(), {1, 2}],
    ids=["tuple", "int-key", "none-key", "bytes", "object", "set"],
)
def test_r6_only_json_values_are_accepted(value):
    if isinstance(value, tuple):  # json.dumps writes a tuple as a list
        assert check_attributes({"v": value}) == []
    else:
        assert reasons(check_attributes({"v": value})) == [("attributes.v", "INVALID_ATTRIBUTE_VALUE")]


def test_r6_lone_surrogates_are_refused_in_names_and_values():
    assert reasons(check_attributes({"a\ud800": 1})) == [("attributes.a\ud800", "INVALID_ATTRIBUTE_NAME")]
    assert reasons(check_attributes({"v": ["\udfff"]})) == [("attributes.v", "INVALID_ATTRIBUTE_VALUE")]
    assert reasons(check_attributes({"v": {"\ud800": 1}})) == [("attributes.v", "INVALID_ATTRIBUTE_VALUE")]


def test_r6_huge_integers_are_too_large_not_a_crash():
    assert check_attributes({"n": 10**999}) == []  # 1000 digits
    assert reasons(check_attributes({"n": 10**1000})) == [("attributes.n", "ATTRIBUTE_VALUE_TOO_LARGE")]
    assert reasons(check_attributes({"n": -(10**5000)})) == [("attributes.n", "ATTRIBUTE_VALUE_TOO_LARGE")]
    assert reasons(check_attributes({"n": 2**3333})) == [("attributes.n", "ATTRIBUTE_VALUE_TOO_LARGE")]


def test_r6_each_attribute_gets_its_own_violation():
    violations = check_attributes({"ok": 1, "gone": None, "a": float("nan"), "": 2, "b": "x" * 1000, "c": {"\x00": 1}})
    assert reasons(violations) == [
        ("attributes.a", "INVALID_ATTRIBUTE_VALUE"),
        ("attributes.", "INVALID_ATTRIBUTE_NAME"),
        ("attributes.b", "ATTRIBUTE_VALUE_TOO_LARGE"),
        ("attributes.c", "INVALID_ATTRIBUTE_VALUE"),
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=5),
                      children, max_size=4),
    max_leaves=30,
)


def json_bytes(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


@given(json_values)
def test_r6_the_size_is_the_compact_json_encoding_in_utf8(value):
    # Padded to exactly the limit with a string: accepted; one byte more: too large. The walk
    # counts what json.dumps writes, for any value.
    size = json_bytes([value, ""])
    if size > ATTRIBUTE_VALUE_MAX_BYTES:
        assert reasons(check_attributes({"v": [value, ""]})) == [("attributes.v", "ATTRIBUTE_VALUE_TOO_LARGE")]
        return
    pad = ATTRIBUTE_VALUE_MAX_BYTES - size
    exact = [value, "x" * pad]
    assert json_bytes(exact) == ATTRIBUTE_VALUE_MAX_BYTES
    assert check_attributes({"v": exact}) == []
    assert reasons(check_attributes({"v": [value, "x" * (pad + 1)]})) == [
        ("attributes.v", "ATTRIBUTE_VALUE_TOO_LARGE")
    ]


@pytest.mark.parametrize(
    "value",
    ['"\\', "\n\t\x01\x1f", "\u2028é€😀", True, False, None, 0, -17, 1.5, -0.0, 1e300, 5e-324, 1e16,
     [], {}, [[], {}], {"k": [1, "two", {"三": None}]}],
)
def test_r6_the_size_of_each_kind_of_value(value):
    padded = [value, "x" * (ATTRIBUTE_VALUE_MAX_BYTES - json_bytes([value, ""]))]
    assert check_attributes({"v": padded}) == []
    padded[1] += "x"
    assert reasons(check_attributes({"v": padded})) == [("attributes.v", "ATTRIBUTE_VALUE_TOO_LARGE")]


def test_r6_sizes_are_computed_once_per_identify(monkeypatch):
    # The lookup walks each value; the decision does not walk or encode them again.
    calls = []
    walk = validation._json_size
    monkeypatch.setattr(validation, "_json_size", lambda *args: calls.append(args[0]) or walk(*args))
    monkeypatch.setattr(json, "dumps", lambda *a, **k: pytest.fail("JSON-encoded"))
    plan(ws(), id="ab100", attributes={"a": "x", "b": "y", "c": None})
    assert sorted(calls) == ["x", "y"]


@pytest.mark.parametrize("field", ["id", "email", "cio_id"])
def test_r3_r4_r5_nul_in_an_identifier_is_refused(field):
    value = {"id": "ab\x00100", "email": "p\x00@example.com", "cio_id": "a" * 19 + "\x00"}[field]
    reason = {"id": "INVALID_ID", "email": "INVALID_EMAIL", "cio_id": "INVALID_CIO_ID"}[field]
    expect_invalid(lambda: identify.identify_lookup(IdentifyInput(WS, **{field: value})), field, reason)
    expect_invalid(
        lambda: identifiers.ref_lookup(WS, Ref(Field(field), value)), f"person.{field}", reason
    )
    if field != "cio_id":
        expect_invalid(
            lambda: identifiers.update_identifier_lookup(WS, Ref(Field.CIO_ID, CIO_A), Field(field), value),
            "value",
            reason,
        )


def test_r8_r42_identify_lookup_names_the_workspace_with_every_other_bad_field():
    with pytest.raises(InvalidArgument) as info:
        identify.identify_lookup(IdentifyInput("bad ws", id=" ab100", email="nope", attributes={"n": float("nan")}))
    assert reasons(info.value.violations) == [
        ("workspace_id", "INVALID_WORKSPACE_ID"),
        ("id", "INVALID_ID"),
        ("email", "INVALID_EMAIL"),
        ("attributes.n", "INVALID_ATTRIBUTE_VALUE"),
    ]
    with pytest.raises(InvalidArgument) as info:
        identify.identify_lookup(IdentifyInput("", cio_id="x"))
    assert reasons(info.value.violations) == [("workspace_id", "WORKSPACE_ID_REQUIRED"), ("cio_id", "INVALID_CIO_ID")]


def test_r6_stored_person_is_limited_to_300_attributes():
    full = person(id="ab100", attributes={f"a{i}": i for i in range(300)})
    req = IdentifyInput(WS, id="ab100", attributes={"one_more": 1})
    with pytest.raises(FailedPrecondition) as info:
        identify.decide_identify(ws(), req, [full], NOW, "n" * 20)
    assert info.value.reason == "PERSON_ATTRIBUTE_LIMIT"
    assert info.value.metadata == {"field": "attributes", "limit": "300", "rule": "R6"}
    # Replacing one of the 300 is fine.
    decision = identify.decide_identify(
        ws(), IdentifyInput(WS, id="ab100", attributes={"a0": "new"}), [full], NOW, "n" * 20
    )
    assert decision.person.attributes["a0"] == "new"
    assert len(decision.person.attributes) == 300


# --------------------------------------------------------------------------- R8: workspace id shape


@pytest.mark.parametrize("value", ["w", "ws-1", "WS_2", "a" * 64])
def test_r8_workspace_id_shape_accepted(value):
    assert check_workspace_id(value) == []


@pytest.mark.parametrize(
    "value, reason",
    [("", "WORKSPACE_ID_REQUIRED"), ("a" * 65, "INVALID_WORKSPACE_ID"), ("ws 1", "INVALID_WORKSPACE_ID"),
     ("ws/1", "INVALID_WORKSPACE_ID"), ("wś", "INVALID_WORKSPACE_ID")],
)
def test_r8_workspace_id_shape_refused(value, reason):
    assert reasons(check_workspace_id(value)) == [("workspace_id", reason)]


def test_r3_r4_r6_limits_match_the_spec():
    assert (validation.ID_MAX_BYTES, validation.EMAIL_MAX_CHARS) == (150, 254)
    assert (validation.MAX_ATTRIBUTES, validation.ATTRIBUTE_NAME_MAX_BYTES) == (300, 150)
    assert validation.ATTRIBUTE_VALUE_MAX_BYTES == 1000


# --- R4's fast path, pinned to email_validator ---


_LOCAL_CHARS = "abcXYZ019_%+-"
_LABEL_CHARS = "abnxzQ09-"
_plain_addresses = st.builds(
    lambda local, labels, tld: f"{'.'.join(local)}@{'.'.join(labels)}.{tld}",
    st.lists(st.text(_LOCAL_CHARS, min_size=1, max_size=30), min_size=1, max_size=4),
    st.lists(st.text(_LABEL_CHARS, min_size=1, max_size=64), min_size=1, max_size=3),
    st.text("abcXYZ0-", min_size=1, max_size=12) | st.sampled_from(sorted(validation._SPECIAL_USE_TLDS)),
)


@settings(max_examples=3000, deadline=None)
@example("u1@example.com").via("the common case")
@example("a@b.local").via("a special-use name")
@given(_plain_addresses)
def test_every_address_the_fast_path_accepts_email_validator_accepts(address):
    """check_email accepts a plain address without email_validator: only if it would accept it."""
    plain = validation._PLAIN_EMAIL.fullmatch(address)
    if plain is None or len(address) > validation.EMAIL_MAX_CHARS:
        return  # not the fast path's
    if plain.group(1).lower() in validation._SPECIAL_USE_TLDS:
        assert check_email(address) != []
        return
    assert check_email(address) == []
    validate_email(address, check_deliverability=False)  # raises if the fast path was wrong


@pytest.mark.parametrize("address", ["u1@example.com", "a_b+c%d@x.y.z.com", "A@B.COM", "x-1@a-b.c-d.io"])
def test_plain_addresses_take_the_fast_path(address):
    assert validation._PLAIN_EMAIL.fullmatch(address)
    assert check_email(address) == []


@pytest.mark.parametrize(
    "address",
    ["a@xn--abc.com", "a@ab--cd.com", "a@b.local", "a@b.test", "a@-b.com", "a@b-.com", ".a@b.com", "a..b@c.com",
     "a@b.123", "a@b"],
)  # fmt: skip
def test_addresses_near_the_fast_path_are_still_refused(address):
    assert check_email(address) != []
