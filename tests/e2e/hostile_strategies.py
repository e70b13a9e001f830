"""Hypothesis strategies for the hostile-input suite (tests/e2e/test_hostile.py): every field of
every RPC of identity.v1, raw bytes, depth, size, NUL, non-finite numbers.

The strategies draw *specs*, not messages: plain dicts whose values may hold placeholders
(OWN for the test's own workspace, Seed(i) for the cio_id of one of its seeded people, MergeSeq
for the sequence of its seeded merge, Long for a long string, Deep for a deeply nested attribute
value, Many for many attributes or mask paths, Csv for an import file, Token for a page token).
A spec prints short in a falsifying example even when the request it stands for is 4 MiB;
`resolve` turns it into plain values once the workspace is known, and `build` into the request
message.

`must_refuse` is the contract's side of the oracle: what no correct server may accept."""

from __future__ import annotations

import base64
import json
import math
import re
import string
from dataclasses import dataclass
from typing import Any, Callable

from google.protobuf import message as pb_message
from google.protobuf import struct_pb2
from hypothesis import strategies as st

from identity.v1 import identity_pb2 as pb

# --------------------------------------------------------------------------- the RPCs

IDENTITY = "identity.v1.IdentityService"
WORKSPACE = "identity.v1.WorkspaceService"
# method -> (path, request class, response class)
METHODS: dict[str, tuple[str, type, type]] = {
    "Identify": (f"/{IDENTITY}/Identify", pb.IdentifyRequest, pb.IdentifyResponse),
    "UpdateIdentifier": (f"/{IDENTITY}/UpdateIdentifier", pb.UpdateIdentifierRequest, pb.UpdateIdentifierResponse),
    "DeleteIdentifier": (f"/{IDENTITY}/DeleteIdentifier", pb.DeleteIdentifierRequest, pb.DeleteIdentifierResponse),
    "GetSettings": (f"/{IDENTITY}/GetSettings", pb.GetSettingsRequest, pb.GetSettingsResponse),
    "GetPerson": (f"/{IDENTITY}/GetPerson", pb.GetPersonRequest, pb.GetPersonResponse),
    "DeletePerson": (f"/{IDENTITY}/DeletePerson", pb.DeletePersonRequest, pb.DeletePersonResponse),
    "ImportPeople": (f"/{IDENTITY}/ImportPeople", pb.ImportPeopleRequest, pb.ImportPeopleResponse),
    "CreateWorkspace": (f"/{WORKSPACE}/CreateWorkspace", pb.CreateWorkspaceRequest, pb.CreateWorkspaceResponse),
    "UpdateSettings": (f"/{WORKSPACE}/UpdateSettings", pb.UpdateSettingsRequest, pb.UpdateSettingsResponse),
    "MergePeople": (f"/{IDENTITY}/MergePeople", pb.MergePeopleRequest, pb.MergePeopleResponse),
    "UnmergePeople": (f"/{IDENTITY}/UnmergePeople", pb.UnmergePeopleRequest, pb.UnmergePeopleResponse),
    "ListPersonHistory": (
        f"/{IDENTITY}/ListPersonHistory", pb.ListPersonHistoryRequest, pb.ListPersonHistoryResponse
    ),
    "WatchChanges": (f"/{IDENTITY}/WatchChanges", pb.WatchChangesRequest, pb.WatchChangesResponse),
    "ExportPeople": (f"/{IDENTITY}/ExportPeople", pb.ExportPeopleRequest, pb.ExportPeopleResponse),
}
READ_ONLY = {"GetSettings", "GetPerson", "ListPersonHistory", "WatchChanges", "ExportPeople"}
STREAMING = {"WatchChanges", "ExportPeople"}  # server streaming: every response read, then the status
# The requests that write, each with request_id (R70) and validate_only (R71).
WRITES = {
    "Identify", "UpdateIdentifier", "DeleteIdentifier", "DeletePerson", "MergePeople", "UnmergePeople",
    "CreateWorkspace", "UpdateSettings", "ImportPeople",
}
SETTINGS_FIELDS = (
    "identifier_mode", "email_updatable_by_id", "sole_identifier_updatable", "auto_merge", "event_retention_days"
)
MAX_RETENTION_DAYS = 3650

# Values the test workspace is seeded with (tests/e2e/test_hostile.py), so that hostile calls
# also meet real people.
SEED_PEOPLE = (
    {"id": "seed-1", "email": "seed1@example.com", "attributes": {"plan": "pro", "n": 1}},
    {"id": "seed-2", "attributes": {"tags": ["a", "b"]}},
    {"email": "seed3@example.com"},
)
# Two more people, then merged (the first the primary): Seed(3) is the primary, Seed(4) the person
# merged away, MergeSeq the merge's sequence (for UnmergePeople and the history of a merged cio_id).
SEED_MERGE = (
    {"id": "seed-m1", "attributes": {"plan": "basic"}},
    {"email": "seedm2@example.com", "attributes": {"city": "Oslo"}},
)
SEEDS = len(SEED_PEOPLE) + len(SEED_MERGE)
VALID_IDS = ["seed-1", "seed-2", "ab100", "x", "Seed-1"]
VALID_EMAILS = ["seed1@example.com", "SEED3@Example.com", "a@b.co", "new.person@example.com"]
UNKNOWN_CIO_ID = "0" * 20
VALID_WORKSPACE_SHAPES = ["default", "t-hostile", "a" * 64, "A_b-9"]

# --------------------------------------------------------------------------- placeholders


class _Own:
    def __repr__(self) -> str:
        return "OWN"


OWN = _Own()  # the test's own workspace


@dataclass(frozen=True)
class Seed:
    """The cio_id of the test workspace's seeded person `index` (it may have been deleted since)."""

    index: int


@dataclass(frozen=True)
class MergeSeq:
    """The sequence of the test workspace's seeded merge's MERGED event (0 when the seeding
    failed), plus `offset`."""

    offset: int = 0


@dataclass(frozen=True)
class Token:
    """A ListPersonHistory page token as the service writes one (urlsafe base64 of JSON, padding
    left out): of `body` JSON-encoded once resolved (the service's own shape is
    (workspace_id, field, value, before), e.g. (OWN, "cio_id", Seed(0), 5)), or of `text` (a str
    or a Long) taken as the JSON text."""

    body: Any = None
    text: Any = None


@dataclass(frozen=True)
class Long:
    """`unit` repeated to exactly `length` characters."""

    unit: str
    length: int

    def text(self) -> str:
        return (self.unit * (self.length // len(self.unit) + 1))[: self.length]


@dataclass(frozen=True)
class Deep:
    """An attribute value nested `depth` levels: each level a dict ('d': {"k": ...}) or a list
    ('l': [...]) following `pattern`, around `leaf`."""

    depth: int
    pattern: str
    leaf: Any


@dataclass(frozen=True)
class Many:
    """`count` attribute names (`prefix` + a number), each with `value`; or, with as_list=True,
    a list of `count` such strings (update mask paths, a CSV header)."""

    count: int
    prefix: Any
    value: Any = None
    as_list: bool = False


@dataclass(frozen=True)
class Fill:
    """A row of `cell` as wide as the header (for huge headers)."""

    cell: Any


@dataclass(frozen=True)
class Csv:
    """An import file: a header, data rows (None: a blank line; with `fit`, each row padded or
    cut to the header's width, else left ragged), the rows repeated `repeat` times, written with
    `newline`, every cell quoted or none, in `encoding`."""

    header: Any  # tuple of cells, or a Many(as_list=True) for a huge header
    rows: tuple
    repeat: int = 1
    newline: str = "\n"
    quoted: bool = False
    encoding: str = "utf-8"
    fit: bool = True


@dataclass(frozen=True)
class Raw:
    """Raw request bytes for `method`: `base` (bytes; a request spec, encoded as the method's
    request; ("groups", depth): unknown groups nested `depth` times; "over-receive-limit": just
    over 4 MiB) changed by `edits`."""

    method: str
    base: Any
    edits: tuple = ()


def resolve(value: Any, own: str, seeds: list[str], merges: tuple[int, ...] | list[int] = ()) -> Any:
    """The plain value a spec stands for, in a workspace `own` seeded with people `seeds` and the
    merges `merges` (their sequences)."""

    def r(v: Any) -> Any:
        if v is OWN:
            return own
        if isinstance(v, Seed):
            return seeds[v.index % len(seeds)] if seeds else UNKNOWN_CIO_ID
        if isinstance(v, MergeSeq):
            return (merges[0] if merges else 0) + v.offset
        if isinstance(v, Token):
            text = r(v.text) if v.text is not None else json.dumps(r(v.body))
            return base64.urlsafe_b64encode(text.encode("utf-8")).decode().rstrip("=")
        if isinstance(v, Long):
            return v.text()
        if isinstance(v, Deep):
            inner = r(v.leaf)
            for level in reversed(range(v.depth)):
                inner = {"k": inner} if v.pattern[level % len(v.pattern)] == "d" else [inner]
            return inner
        if isinstance(v, Many):
            prefix = r(v.prefix)
            if v.as_list:
                return [f"{prefix}{i}" for i in range(v.count)]
            value = r(v.value)
            return {f"{prefix}{i}": value for i in range(v.count)}
        if isinstance(v, Csv):
            return _csv_bytes(v, r)
        if isinstance(v, Raw):
            return _raw_bytes(v, r)
        if isinstance(v, dict):
            out: dict = {}
            for key, item in v.items():
                key = r(key)
                if isinstance(key, dict):  # a Many inside an attributes dict: its names merge in
                    out.update(key)
                else:
                    out[key] = r(item)
            return out
        if isinstance(v, (list, tuple)):
            return [r(item) for item in v]
        return v

    return r(value)


def _csv_bytes(spec: Csv, r: Callable[[Any], Any]) -> bytes:
    def line(cells: list[str]) -> str:
        if spec.quoted:
            return ",".join('"' + c.replace('"', '""') + '"' for c in cells)
        return ",".join(cells)

    header = r(spec.header)
    width = len(header)
    lines = [line(header)]
    rows = []
    for row in spec.rows:
        if row is None:
            rows.append("")
        elif isinstance(row, Fill):
            rows.append(line([r(row.cell)] * width))
        else:
            cells = r(row)
            rows.append(line((cells + [""] * width)[:width] if spec.fit else cells))
    for _ in range(spec.repeat):
        lines.extend(rows)
    text = spec.newline.join(lines) + spec.newline
    return text.encode(spec.encoding, errors="replace")


MAX_RECEIVE = 4 * 1024 * 1024  # the server's (gRPC's default) receive limit


def _raw_bytes(spec: Raw, r: Callable[[Any], Any]) -> bytes:
    if isinstance(spec.base, bytes):
        data = bytearray(spec.base)
    elif spec.base == "over-receive-limit":
        data = bytearray(b"\x0a\x01x" + b"\xff" * MAX_RECEIVE)
    elif isinstance(spec.base, tuple) and spec.base[0] == "groups":
        # Unknown groups (field 15) nested `depth` times: the decoder recurses into them.
        depth = spec.base[1]
        data = bytearray(b"\x7b" * depth + b"\x7c" * depth)
    else:
        data = bytearray(build(spec.method, r(spec.base)).SerializeToString())
    for op, position, payload in spec.edits:
        at = position % (len(data) + 1)
        if op == "truncate":
            del data[at:]
        elif op == "flip":
            if data:
                data[at % len(data)] ^= payload or 0x80
        elif op == "insert":
            data[at:at] = payload
        elif op == "append":
            data.extend(payload)
        elif op == "overlong":
            # A length-delimited field (number `payload`) claiming more bytes than follow.
            data.extend(_varint((payload << 3) | 2) + _varint(1 << 20) + b"x")
        elif op == "wrong-wire-type":
            # Field 1 (always a string here) sent as a varint, then as a 64-bit fixed.
            data.extend(b"\x08\x01" if payload % 2 else b"\x09" + b"\x00" * 8)
    return bytes(data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# --------------------------------------------------------------------------- requests from specs


def build(method: str, spec: dict[str, Any]) -> pb_message.Message:
    """The request message a resolved spec describes (absent keys: fields left unset)."""
    request = METHODS[method][1]()
    for name, value in spec.items():
        if name == "attributes":
            request.attributes.SetInParent()
            request.attributes.update(value)
        elif name in ("person", "primary", "secondary"):
            getattr(request, name).SetInParent()
            for which, v in value.items():
                setattr(getattr(request, name), which, v)
        elif name == "settings":
            request.settings.SetInParent()
            for field, v in value.items():
                setattr(request.settings, field, v)
        elif name == "update_mask":
            request.update_mask.SetInParent()
            request.update_mask.paths.extend(value)
        else:
            setattr(request, name, value)
    return request


# --------------------------------------------------------------------------- strings

SNIPPETS = [
    "\x00", "\x01", "\x08", "\x1b", "\x1f", "\x7f", "\x85", "\x9f", "\n", "\r", "\r\n", "\t", "\x0b",
    "\x0c", " ", "\u00a0", "\u2028", "\u2029", "\ufeff", "\u200b", "\u202e", "\ufffd", "\U0010ffff",
    "\U000e0001", "é", "e\u0301", "İ", "ß", "ﬃ", "Σ", "😀", "👩\u200d👩\u200d👧", "@", "@@", ".", "..",
    ",", ";", ":", '"', "'", "\\", "%", "%00", "*", "/", "-", "_", "{}", "[]", "<>", "$", "#", "=",
    "&", "?", "\\u0000", "NaN", "null", "Infinity", "%s", "{0}", "${x}",
]
# Every code point but surrogates (they cannot be encoded in a proto3 string).
_char = st.characters(codec="utf-8")
_piece = st.one_of(
    st.sampled_from(SNIPPETS),
    _char,
    st.sampled_from(["a", "Z", "x1", "seed", "plan", "example", "com", "0", "-1", "id", "email", "cio_id"]),
)
# (Few choices per value: drawing is a good part of the suite's time.)
short_text = st.lists(_piece, max_size=8).map("".join)
_unit = st.lists(_piece, min_size=1, max_size=3).map("".join)
LENGTHS = [
    63, 64, 65, 149, 150, 151, 253, 254, 255, 999, 1000, 1001, 4096, 8193, 16385, 20_000, 100_000,
]
long_text = st.builds(Long, _unit, st.sampled_from(LENGTHS) | st.integers(1, 100_000))


def _splice(valid: str, position: int, piece: str, replace: bool) -> str:
    at = position % (len(valid) + 1)
    return valid[:at] + piece + valid[at + (1 if replace else 0):]


def near(valid: list[str]) -> st.SearchStrategy[str]:
    """A valid value with a hostile piece inserted or substituted: gets past a first check."""
    return st.builds(_splice, st.sampled_from(valid), st.integers(0, 64), _piece, st.booleans())


def hostile(valid: list[str]) -> st.SearchStrategy:
    return st.one_of(
        st.just(""),
        short_text,
        long_text,
        near(valid),
        near(valid),
        st.sampled_from(valid),
    )


# --------------------------------------------------------------------------- fields

# Well formed (R8), most likely unknown.
well_formed_workspace_ids = st.builds(
    lambda prefix, n: f"{prefix}{n}"[:64], st.sampled_from(["w", "ws-", "A_", "9", "x" * 60]), st.integers(0, 2**40)
)
workspace_ids = st.one_of(
    st.just(OWN), st.just(OWN), st.just(OWN), st.just(OWN),
    hostile(VALID_WORKSPACE_SHAPES),
    well_formed_workspace_ids,
    st.builds(Long, st.sampled_from(["x", "a-", "\x00"]), st.sampled_from([65, 20_000, 100_000])),
)
# Workspace ids other than the test's own (for a key scoped to it): a 20,000-character one always
# among them.
foreign_workspace_ids = st.one_of(
    st.just(Long("w", 20_000)),
    hostile(VALID_WORKSPACE_SHAPES),
    well_formed_workspace_ids,
    st.builds(Long, _unit, st.sampled_from([65, 8193, 20_000, 100_000])),
)
ids = hostile(VALID_IDS)
emails = hostile(VALID_EMAILS)
cio_ids = st.one_of(
    st.builds(Seed, st.integers(0, SEEDS - 1)),
    st.builds(Seed, st.integers(0, SEEDS - 1)),
    hostile([UNKNOWN_CIO_ID, "43xqwbwbrxd6gkk9gwfh", "ILOU" * 5]),
)
# References to the seeded people (and to the one merged away): these get past validation.
seed_refs = st.sampled_from(
    [{"cio_id": Seed(i)} for i in range(SEEDS)]
    + [{"id": "seed-1"}, {"id": "seed-2"}, {"email": "SEED3@example.com"}, {"id": "seed-m1"}]
    + [{"email": "seedm2@example.com"}]
)
person_refs = st.one_of(
    st.just({}),  # the field set, but none of the oneof
    st.fixed_dictionaries({"cio_id": cio_ids}),
    st.fixed_dictionaries({"id": ids}),
    st.fixed_dictionaries({"email": emails}),
)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
INT64_EDGES = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, -(2**63), -(2**31)]
identifier_types = st.one_of(st.sampled_from([0, 1, 2, 3, 1, 2]), int32)
identifier_modes = st.one_of(st.sampled_from([0, 1, 2, 3]), int32)

NON_FINITE = [math.nan, math.inf, -math.inf, -math.nan]
numbers = st.one_of(
    st.sampled_from(NON_FINITE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-0.0, 1e308, 5e-324, 2.0**53 + 1, 0.1]),
    st.integers(-(2**64), 2**64),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, short_text, near(VALID_EMAILS), long_text)
attribute_names = st.one_of(
    st.sampled_from(["plan", "id", "email", "cio_id", "", "\x00", "a\x00b", "a.b", "a[0]", "*", " ", "n"]),
    short_text,
    near(["plan", "tags", "n"]),
    st.builds(Long, _unit, st.sampled_from([149, 150, 151, 1000, 20_000, 100_000])),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(attribute_names, children, max_size=4),
    max_leaves=8,
)

def deep(leaves: list) -> st.SearchStrategy[Deep]:
    return st.builds(Deep, st.integers(1, 60), st.sampled_from(["d", "l", "dl", "ld", "ddl"]), st.sampled_from(leaves))


deep_values = deep([*NON_FINITE, "x", "\x00", None, 1])
# Harmless leaves: only the depth can be wrong.
deep_plain_values = deep(["x", None, 1, True])
attributes = st.one_of(
    st.dictionaries(attribute_names, json_values, max_size=6),
    st.dictionaries(attribute_names, json_values, max_size=6),
    st.dictionaries(attribute_names, deep_values, min_size=1, max_size=2),
    # 20 and more oversized attributes (long names, long values, or both).
    st.builds(
        lambda many: {many: None},
        st.builds(
            Many,
            st.integers(20, 45),
            st.one_of(st.sampled_from(["a", "n\x00"]), st.builds(Long, _unit, st.sampled_from([151, 1000, 5000]))),
            st.one_of(st.builds(Long, _unit, st.sampled_from([1001, 5000, 20_000])), st.just("v")),
        ),
    ),
    # More names than allowed (R6: 300).
    st.builds(lambda many: {many: None}, st.builds(Many, st.integers(290, 320), st.just("a"), st.just(1))),
)
strings_for_values = st.one_of(ids, emails)

# request_id (R70): a UUID or empty. A few fixed ones, so that hypothesis repeats them across
# calls (a replay, or REQUEST_ID_REUSED for another request), fresh ones, and near misses.
REQUEST_IDS = [
    "00000000-0000-0000-0000-000000000000",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
    "3F2504E0-4F89-11D3-9A0C-0305E82C3301",  # the same UUID in upper case
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
]
request_ids = st.one_of(
    st.just(""),
    st.sampled_from(REQUEST_IDS),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.sampled_from(
        [
            "{3f2504e0-4f89-11d3-9a0c-0305e82c3301}", "3f2504e04f8911d39a0c0305e82c3301",
            "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301", " 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "3f2504e0-4f89-11d3-9a0c-0305e82c330", "3f2504e0-4f89-11d3-9a0c-0305e82c3301\n", "g" * 36,
        ]
    ),
    near(REQUEST_IDS),
    short_text,
    long_text,
)
# Fields every write request has (R70, R71); and the same, valid (for requests meant to get far).
WRITE_FIELDS = {"request_id": request_ids, "validate_only": st.booleans()}
VALID_WRITE_FIELDS = {
    "request_id": st.one_of(st.sampled_from(["", *REQUEST_IDS]), st.uuids().map(str)),
    "validate_only": st.booleans(),
}

# --------------------------------------------------------------------------- requests

identify_specs = st.fixed_dictionaries(
    {"workspace_id": workspace_ids},
    optional={
        "cio_id": cio_ids,
        "id": ids,
        "email": emails,
        "attributes": attributes,
        "update_only": st.booleans(),
        **WRITE_FIELDS,
    },
)
update_identifier_specs = st.fixed_dictionaries(
    {"workspace_id": workspace_ids},
    optional={"person": person_refs, "identifier": identifier_types, "value": strings_for_values, **WRITE_FIELDS},
)
delete_identifier_specs = st.fixed_dictionaries(
    {"workspace_id": workspace_ids}, optional={"person": person_refs, "identifier": identifier_types, **WRITE_FIELDS}
)
get_settings_specs = st.fixed_dictionaries({}, optional={"workspace_id": workspace_ids})
person_specs = st.fixed_dictionaries({}, optional={"workspace_id": workspace_ids, "person": person_refs})
delete_person_specs = st.fixed_dictionaries(
    {}, optional={"workspace_id": workspace_ids, "person": person_refs, "erase": st.booleans(), **WRITE_FIELDS}
)

# The change log and merges (R50-R62).
# Sequences: the seeded merge's (and its neighbours: a CREATED event, or none), small ones (the
# seeded people's events), and any int64.
sequences = st.one_of(
    st.builds(MergeSeq, st.sampled_from([0, 0, 0, -1, 1, 1000])),
    st.integers(-3, 40),
    st.sampled_from(INT64_EDGES),
    int64,
)
# Either the same person twice, or two references drawn apart.
_merge_refs = st.one_of(
    person_refs.map(lambda ref: {"primary": ref, "secondary": ref}),
    st.fixed_dictionaries({}, optional={"primary": person_refs, "secondary": person_refs}),
)
merge_people_specs = st.one_of(
    st.builds(
        lambda base, refs: {**base, **refs},
        st.fixed_dictionaries({"workspace_id": workspace_ids}, optional=WRITE_FIELDS),
        _merge_refs,
    ),
    # Seeded people, in the test's workspace: merges that may well happen.
    st.fixed_dictionaries(
        {"workspace_id": st.just(OWN), "primary": seed_refs, "secondary": seed_refs}, optional=VALID_WRITE_FIELDS
    ),
)
unmerge_people_specs = st.one_of(
    st.fixed_dictionaries({"workspace_id": workspace_ids}, optional={"merge_sequence": sequences, **WRITE_FIELDS}),
    st.fixed_dictionaries(
        {"workspace_id": st.just(OWN), "merge_sequence": st.builds(MergeSeq, st.sampled_from([0, 0, 0, -1, 1, 2]))},
        optional=VALID_WRITE_FIELDS,
    ),
)
page_sizes = st.one_of(st.sampled_from([0, 1, 2, 100, 1000, 1001, -1, 2**31 - 1, -(2**31)]), int32)
# What a page token's "before" may hold once decoded: any JSON (the service wrote an int).
_token_befores = st.one_of(
    st.integers(0, 60),
    st.sampled_from([*INT64_EDGES, 2**63, 2**64, -(2**63) - 1, 10**30, True, False, None, 1.5, "1", [], {}]),
    st.integers(-(2**80), 2**80),
)


@dataclass(frozen=True)
class Matching:
    """In a ListPersonHistory spec: a token of this very request (its workspace and person) but
    for `before`; made a Token by _history_spec."""

    before: Any


def _history_spec(spec: dict, token: Any) -> dict:
    if token is None:
        return spec
    if isinstance(token, Matching):
        ((field, value),) = (spec.get("person") or {"cio_id": Seed(0)}).items()
        token = Token((spec.get("workspace_id", ""), field, value, token.before))
    return {**spec, "page_token": token}


page_tokens = st.one_of(
    st.none(),  # no token
    st.builds(Matching, _token_befores),
    st.builds(Matching, _token_befores),
    # Another request's token: another workspace, person or field.
    st.builds(
        lambda ws, field, value, before: Token((ws, field, value, before)),
        st.sampled_from([OWN, "other", ""]),
        st.sampled_from(["cio_id", "id", "email", "CIO_ID", ""]),
        st.one_of(st.builds(Seed, st.integers(0, SEEDS - 1)), st.sampled_from(VALID_IDS + VALID_EMAILS)),
        _token_befores,
    ),
    # JSON that is not the four parts, JSON nested deep, not JSON, not base64.
    st.builds(Token, json_values),
    st.builds(Token, text=short_text),
    st.builds(
        Token,
        text=st.builds(
            Long, st.sampled_from(["[", '{"a":', "[1,", '"\\u0000']), st.sampled_from([10, 999, 1000, 5000, 100_000])
        ),
    ),
    st.sampled_from(["", "=", "====", "!!!!", "AAAA", "eyJ9", "W10", "W1tdXQ", "bnVsbA", "\x00", "é"]),
    short_text,
    long_text,
)
list_person_history_specs = st.one_of(
    st.builds(
        _history_spec,
        st.fixed_dictionaries(
            {"workspace_id": workspace_ids}, optional={"person": person_refs, "page_size": page_sizes}
        ),
        page_tokens,
    ),
    # A seeded person of the test's workspace, a valid page size: the token is what is judged.
    st.builds(
        _history_spec,
        st.fixed_dictionaries(
            {"workspace_id": st.just(OWN), "person": seed_refs}, optional={"page_size": st.integers(0, 3)}
        ),
        page_tokens,
    ),
)
# WatchChanges: ended once caught up, so that a call ends (the tests without it give a short
# deadline, DEADLINE_EXCEEDED being the expected end).
watch_changes_specs = st.fixed_dictionaries(
    {"workspace_id": workspace_ids, "end_when_caught_up": st.just(True)},
    optional={"after_sequence": sequences},
)
watch_changes_open_specs = st.fixed_dictionaries(
    {"workspace_id": workspace_ids},
    optional={"after_sequence": sequences, "end_when_caught_up": st.just(False)},
)

# CSV files.
_header_cells = st.one_of(
    st.sampled_from(["id", "email", "cio_id", "plan", "", "id ", " email", "\ufeffid", "a\x00b", "ID"]),
    st.sampled_from(["id", "email", "plan"]),
    short_text,
    st.builds(Long, _unit, st.sampled_from([151, 1000, 100_000])),
)
_cells = st.one_of(
    st.just(""),
    st.sampled_from(VALID_IDS + VALID_EMAILS + ["pro", "1"]),
    near(VALID_IDS + VALID_EMAILS),
    short_text,
    st.builds(Long, _unit, st.sampled_from([151, 1001, 20_000])),
)


_newlines = st.sampled_from(["\n", "\r\n", "\r"])
_encodings = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"])
_repeats = st.sampled_from([1, 1, 1, 1, 2, 10])


def _mostly_valid_csv(key: str) -> st.SearchStrategy[Csv]:
    """Rows that pass as people (a fresh or seeded id or email), with hostile attribute cells:
    these reach the database."""
    keys = (
        st.integers(0, 10**6).map("imp-{}".format) | st.sampled_from(VALID_IDS)
        if key == "id"
        else st.integers(0, 10**6).map("imp{}@example.com".format) | st.sampled_from(VALID_EMAILS)
    )
    return st.builds(
        Csv,
        st.tuples(st.just(key), _header_cells),
        st.lists(st.tuples(keys, _cells), min_size=1, max_size=4).map(tuple),
        st.just(1),
        st.sampled_from(["\n", "\r\n"]),
        st.booleans(),
    )


csv_files = st.one_of(
    _mostly_valid_csv("id"),
    _mostly_valid_csv("email"),
    st.builds(
        Csv,
        st.lists(_header_cells, max_size=5).map(tuple),
        st.lists(st.none() | st.lists(_cells, max_size=6).map(tuple), max_size=6).map(tuple),
        _repeats,
        _newlines,
        st.booleans(),
        _encodings,
        st.booleans(),
    ),
    # Huge headers: a thousand columns and more, a few rows as wide.
    st.builds(
        Csv,
        st.builds(
            Many, st.sampled_from([60, 1000, 3000]), st.sampled_from(["c", "plan\x00", "id"]), as_list=st.just(True)
        ),
        st.lists(st.none() | st.builds(Fill, st.sampled_from(["", "x", "\x00"])), max_size=3).map(tuple),
        st.just(1),
        _newlines,
        st.booleans(),
    ),
    st.binary(max_size=200),
)
import_specs = st.fixed_dictionaries({}, optional={"workspace_id": workspace_ids, "csv": csv_files, **WRITE_FIELDS})

# Each row with a long error: an attribute column whose name is too long (R6), a value in every
# row. The product is bounded so that a server that echoes the name three times per row still
# builds its answer in memory without trouble (at most ~20 MB).
_LONG_ERROR_SHAPES = [(151, 10_000), (1000, 5000), (20_000, 300), (100_000, 60)]
long_error_imports = st.builds(
    lambda shape, unit, bad_id, rows: Csv(
        ("id", Long(unit, shape[0])),
        (((" bad-id " if bad_id else ""), "v"),),
        repeat=min(rows, shape[1]),
    ),
    st.sampled_from(_LONG_ERROR_SHAPES),
    st.sampled_from(["n", "é", "\x00"]),
    st.booleans(),
    st.sampled_from([10, 100, 10_000]),
)

settings_specs = st.fixed_dictionaries(
    {},
    optional={
        "workspace_id": st.one_of(st.just(OWN), hostile(VALID_WORKSPACE_SHAPES)),  # output only
        "identifier_mode": identifier_modes,
        "email_updatable_by_id": st.booleans(),
        "sole_identifier_updatable": st.booleans(),
        "auto_merge": st.booleans(),
        "event_retention_days": st.one_of(
            st.sampled_from([0, 1, 30, 3650, 3651, -1, 2**31 - 1, -(2**31)]), st.integers(-5, 4000), int32
        ),
    },
)
create_workspace_specs = st.fixed_dictionaries(
    {},
    optional={
        "workspace_id": st.one_of(workspace_ids, st.integers(0, 2**40).map("hz-{}".format)),
        "settings": settings_specs,
        **WRITE_FIELDS,
    },
)
_mask_paths = st.one_of(
    st.sampled_from([*SETTINGS_FIELDS, "*", "", "identifier_mode ", "IdentifierMode", "identifierMode",
                     "settings.identifier_mode", "identifier_mode.x", "workspace_id", "auto_merge,identifier_mode"]),
    st.sampled_from(SETTINGS_FIELDS),
    short_text,
    long_text,
)
update_masks = st.one_of(
    st.lists(_mask_paths, max_size=6),
    st.lists(st.sampled_from(SETTINGS_FIELDS), max_size=3),
    st.builds(Many, st.integers(10, 2000), st.one_of(st.just("p"), short_text), as_list=st.just(True)),
    st.builds(lambda path: [path], st.builds(Long, _unit, st.sampled_from([1000, 20_000, 100_000]))),
)
update_settings_specs = st.fixed_dictionaries(
    {"workspace_id": workspace_ids},
    optional={"settings": settings_specs, "update_mask": update_masks, **WRITE_FIELDS},
)

SPECS: dict[str, st.SearchStrategy[dict]] = {
    "Identify": identify_specs,
    "UpdateIdentifier": update_identifier_specs,
    "DeleteIdentifier": delete_identifier_specs,
    "GetSettings": get_settings_specs,
    "GetPerson": person_specs,
    "DeletePerson": delete_person_specs,
    "ImportPeople": import_specs,
    "CreateWorkspace": create_workspace_specs,
    "UpdateSettings": update_settings_specs,
    "MergePeople": merge_people_specs,
    "UnmergePeople": unmerge_people_specs,
    "ListPersonHistory": list_person_history_specs,
    "WatchChanges": watch_changes_specs,
    "ExportPeople": get_settings_specs,  # a workspace_id only
}

# --------------------------------------------------------------------------- raw bytes

method_names = st.sampled_from(sorted(METHODS))
_edits = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("append"), st.just(0), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("overlong"), st.just(0), st.integers(1, 2**29 - 1)),
    st.tuples(st.just("wrong-wire-type"), st.just(0), st.integers(0, 1)),
)
raw_requests = st.one_of(
    st.builds(Raw, method_names, st.binary(max_size=80)),
    st.builds(Raw, method_names, st.binary(min_size=1, max_size=8).map(lambda b: b * 64)),
    # A request of the method, encoded, then damaged.
    *[st.builds(Raw, st.just(m), SPECS[m], st.lists(_edits, min_size=1, max_size=3).map(tuple)) for m in METHODS],
    # Well formed, as bytes.
    *[st.builds(Raw, st.just(m), SPECS[m]) for m in METHODS],
    st.builds(Raw, method_names, st.integers(1, 200).map(lambda d: ("groups", d))),
    st.builds(Raw, method_names, st.just("over-receive-limit")),
)
# Bodies that are certainly not requests: undecodable, or nested too deep to decode.
undecodable_requests = st.one_of(
    st.builds(Raw, method_names, st.binary(min_size=1, max_size=40).map(lambda b: b"\xff" + b)),
    st.builds(Raw, method_names, st.integers(101, 300).map(lambda d: ("groups", d))),
    st.builds(
        Raw,
        st.just("Identify"),
        st.builds(
            lambda ws, depth, pattern: {
                "workspace_id": ws, "id": "ab100", "attributes": {"deep": Deep(depth, pattern, 1)}
            },
            st.just(OWN),
            st.integers(34, 60),
            st.sampled_from(["d", "dl"]),
        ),
    ),
)

# --------------------------------------------------------------------------- API keys

_key_chars = string.ascii_letters + string.digits + "-._~+/=!#$%&*"
bad_authorization = st.one_of(
    st.just(()),  # no metadata at all
    st.sampled_from(
        [
            (("authorization", ""),),
            (("authorization", "Bearer"),),
            (("authorization", "Bearer "),),
            (("authorization", "k-mine"),),
            (("authorization", "Basic k-admin"),),
            (("authorization", "Bearer k-mine2"),),
            (("authorization", "Bearer k-admin-"),),
            (("x-api-key", "k-admin"),),
            (("authorization", "Bearer K-ADMIN"),),
        ]
    ),
    st.text(_key_chars, min_size=1, max_size=300)
    .filter(lambda key: key not in ("k-mine", "k-admin"))
    .map(lambda key: (("authorization", f"Bearer {key}"),)),
)

# --------------------------------------------------------------------------- the contract's side

WORKSPACE_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CIO_ID_SHAPE = re.compile(r"[0-9a-z]{20}")  # a superset of the service's alphabet
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bad_id(value: str) -> bool:
    """Certainly invalid by R3 (a conservative subset of it)."""
    return (
        value == ""
        or len(value.encode("utf-8")) > 150
        or bool(_CONTROL.search(value))
        or value[0] == " "
        or value[-1] == " "
    )


def _bad_email(value: str) -> bool:
    """Certainly invalid by R4 (a conservative subset of it)."""
    return (
        value == ""
        or len(value) > 254
        or "@" not in value
        or bool(_CONTROL.search(value))
        or value[0] == " "
        or value[-1] == " "
    )


def _non_finite(value: struct_pb2.Value) -> bool:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return not math.isfinite(value.number_value)
    if kind == "struct_value":
        return any(_non_finite(v) for v in value.struct_value.fields.values())
    if kind == "list_value":
        return any(_non_finite(v) for v in value.list_value.values)
    return False


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        n = value.number_value
        return int(n) if n.is_integer() and abs(n) < 2**53 else n
    if kind == "struct_value":
        return {k: _plain(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def _bad_ref(request: Any, name: str = "person") -> str | None:
    if not request.HasField(name):
        return "no person reference (R7)"
    ref = getattr(request, name)
    which = ref.WhichOneof("ref")
    value = getattr(ref, which) if which else None
    if which is None:
        return "an empty person reference (R7)"
    if which == "cio_id" and not CIO_ID_SHAPE.fullmatch(value):
        return "a malformed cio_id reference (R5)"
    if which == "id" and _bad_id(value):
        return "an invalid id reference (R3)"
    if which == "email" and _bad_email(value):
        return "an invalid email reference (R4)"
    return None


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def must_refuse(method: str, request: Any, own: str) -> str | None:
    """Why no correct server may answer OK to this (decoded) request, or None. Conservative:
    only what the contract makes certain whatever the workspace's state and settings."""
    if not WORKSPACE_SHAPE.fullmatch(request.workspace_id):
        return "a malformed workspace_id (R8)"
    if method in WRITES and request.request_id and not _UUID.fullmatch(request.request_id):
        return "a request_id that is neither a UUID nor empty (R70)"
    if method == "Identify":
        for name in ("cio_id", "id", "email"):
            if request.HasField(name):
                value = getattr(request, name)
                if name == "cio_id" and not CIO_ID_SHAPE.fullmatch(value):
                    return "a malformed cio_id (R5)"
                if name == "id" and _bad_id(value):
                    return "an invalid id (R3)"
                if name == "email" and _bad_email(value):
                    return "an invalid email (R4)"
        if not any(request.HasField(name) for name in ("cio_id", "id", "email")):
            return "no identifier at all (R9)"
        fields = request.attributes.fields
        if len(fields) > 300:
            return "more than 300 attributes (R6)"
        for name, value in fields.items():
            if _non_finite(value):
                return "a non-finite number in attributes (no JSON for it)"
            size = len(name.encode("utf-8"))
            if size == 0 or size > 150:
                return "an attribute name of 0 or more than 150 bytes (R6)"
            if value.WhichOneof("kind") != "null_value":
                encoded = json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":")).encode()
                if len(encoded) > 1200:  # R6 says 1000; a margin for number formatting
                    return "an attribute value of more than 1000 bytes of JSON (R6)"
    if method in ("UpdateIdentifier", "DeleteIdentifier", "GetPerson", "DeletePerson", "ListPersonHistory"):
        reason = _bad_ref(request)
        if reason:
            return reason
    if method == "MergePeople":
        for name in ("primary", "secondary"):
            reason = _bad_ref(request, name)
            if reason:
                return f"{name}: {reason}"
        if request.primary == request.secondary:
            return "the same reference as primary and secondary (nobody, or the same person)"
    if method == "UnmergePeople" and request.merge_sequence <= 0:
        return "a merge_sequence that is not positive (R62)"
    if method == "ListPersonHistory" and not 0 <= request.page_size <= 1000:
        return "a page_size outside 0..1000"
    if method == "WatchChanges" and request.after_sequence < 0:
        return "a negative after_sequence (R52)"
    if method in ("UpdateIdentifier", "DeleteIdentifier"):
        if request.identifier not in (pb.IDENTIFIER_TYPE_ID, pb.IDENTIFIER_TYPE_EMAIL):
            return "an identifier type other than ID or EMAIL (R30)"
    if method == "UpdateIdentifier":
        if request.identifier == pb.IDENTIFIER_TYPE_ID and _bad_id(request.value):
            return "an invalid new id (R3)"
        if request.identifier == pb.IDENTIFIER_TYPE_EMAIL and _bad_email(request.value):
            return "an invalid new email (R4)"
    if method == "ImportPeople":
        if not request.csv:
            return "an empty file (no header row)"
        try:
            request.csv.decode("utf-8")
        except UnicodeDecodeError:
            return "a file that is not UTF-8"
    if method == "CreateWorkspace":
        if request.workspace_id == own:
            return "the workspace exists already"
        if request.HasField("settings") and request.settings.identifier_mode not in (0, 1, 2, 3):
            return "an unknown identifier mode"
        if request.HasField("settings") and not 0 <= request.settings.event_retention_days <= MAX_RETENTION_DAYS:
            return "an event_retention_days outside 1..3650 (0: the default)"
    if method == "UpdateSettings":
        paths = list(request.update_mask.paths)
        unknown = [p for p in paths if p not in (*SETTINGS_FIELDS, "*")]
        if unknown:
            return "an unknown update_mask path (AIP-134)"
        mode = request.settings.identifier_mode
        if mode not in (0, 1, 2, 3) and (not paths or "identifier_mode" in paths or "*" in paths):
            return "an unknown identifier mode"
        days = request.settings.event_retention_days
        if not 0 <= days <= MAX_RETENTION_DAYS and (not paths or "event_retention_days" in paths or "*" in paths):
            return "an event_retention_days outside 1..3650"
    return None
