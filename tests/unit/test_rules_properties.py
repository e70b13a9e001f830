"""Random sequences of calls against an in-memory workspace, run as the service runs them (the
lookup, who it finds, the decision, the write), with the identity invariants checked after every
step.

The calls are drawn from the state of the world (its people, the identifiers of its mode) and
from small pools of values with case variants, so that most calls succeed and requests hit each
other's identifiers: people are created, updated, merged (R13), given new identifiers and lose
them, and the mode changes (R2). A refusal is not passed over: each one is checked against an
independent reading of the rule that its reason names. Each run counts what happened, and the
tests assert that most calls succeeded and that merges happened (STATS has the last counts)."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Callable

from hypothesis import HealthCheck, event, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from service.domain import Field, IdentifyInput, Mode, Outcome, Person, Ref, Settings
from service.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound
from service.rules import identifiers, modes
from service.rules.decisions import Decision, Write
from service.rules.identify import decide_identify, identify_lookup
from service.rules.modes import Check, CheckResult
from tests.unit.repository_double import stored

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
WS = "ws-1"
CIO_UNKNOWN = "z" * 20
E, I, O = Mode.EMAIL_OR_ID, Mode.ID_ONLY, Mode.EMAIL_ONLY

# Small pools with case variants: ids are case-sensitive (two people), emails are not (one).
IDS = ["ab100", "AB100", "cd200", "ef300"]
EMAILS = ["p@example.com", "P@Example.com", "q@example.com", "r@example.com"]
BAD_ID, BAD_EMAIL = " ab100", "not-an-email"  # malformed (R3, R4)
ATTRIBUTE_VALUES = [None, "", "pro", "free", 0, 1, True, ["a", 1], {"k": "v"}]

# Test-side readings of the rules, independent of the rules core's code.
IDENTIFIERS = {E: {Field.CIO_ID, Field.ID, Field.EMAIL}, I: {Field.CIO_ID, Field.ID}, O: {Field.CIO_ID, Field.EMAIL}}
SOLE = {E: None, I: Field.ID, O: Field.EMAIL}
RESERVED = {mode: {f.value for f in fields} for mode, fields in IDENTIFIERS.items()}


def holds(mode: Mode, p: Person, field: Field, value: str) -> bool:
    """Whether `value` names `p` (the pools are ASCII: lower() is the email key)."""
    if field not in IDENTIFIERS[mode]:
        return False
    if field is Field.CIO_ID:
        return p.cio_id == value
    if field is Field.ID:
        return p.id == value
    return p.email is not None and p.email.lower() == value.lower()


def holder(mode: Mode, people: list[Person], field: Field, value: str | None) -> Person | None:
    found = [p for p in people if value is not None and holds(mode, p, field, value)]
    assert len(found) <= 1, f"R41: {field.value} {value!r} names {found}"
    return found[0] if found else None


def data_check(check: Check, people: list[Person]) -> CheckResult:
    """What R2's checks find in the data, read directly from the spec."""
    if check is Check.EVERY_PERSON_HAS_ID:
        bad = [p for p in people if p.id is None]
    elif check is Check.EVERY_PERSON_HAS_EMAIL:
        bad = [p for p in people if p.email is None]
    elif check is Check.IDS_UNIQUE:
        bad = [p for p in people if p.id is not None and sum(q.id == p.id for q in people) > 1]
    else:
        bad = [p for p in people if p.email is not None
               and sum(q.email is not None and q.email.lower() == p.email.lower() for q in people) > 1]
    return CheckResult(len(bad), tuple(sorted(p.cio_id for p in bad))[: modes.SAMPLE_SIZE])


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class IdentifyCall:
    req: IdentifyInput
    invalid: bool = False  # drawn to be INVALID_ARGUMENT (R3-R6, R9, R12)


@dataclass(frozen=True)
class UpdateCall:
    ref: Ref
    field: Field
    value: str
    invalid: bool = False


@dataclass(frozen=True)
class DeleteCall:
    ref: Ref
    field: Field


@dataclass(frozen=True)
class SettingsCall:
    new: Settings


Call = IdentifyCall | UpdateCall | DeleteCall | SettingsCall

settings_st = st.builds(
    Settings,
    workspace_id=st.just(WS),
    mode=st.sampled_from([E, E, I, O]),
    email_updatable_by_id=st.sampled_from([True, True, True, False]),
    sole_identifier_updatable=st.sampled_from([True, True, True, False]),
    auto_merge=st.sampled_from([True, True, True, False]),
)


def rarely(p: int = 30) -> st.SearchStrategy[bool]:
    """True about once in `p` draws; False is the simplest (what Hypothesis shrinks to)."""
    return st.sampled_from([False] * (p - 1) + [True])


@st.composite
def identify_call(draw, world: "World") -> IdentifyCall:
    mode = world.settings.mode
    invalid = False
    cio_id = None
    if world.people and draw(rarely(8)):  # R10: by cio_id, now and then an unknown one
        cio_id = draw(st.sampled_from([p.cio_id for p in world.people] * 8 + [CIO_UNKNOWN]))
    # Single-identifier people are what R13 merges.
    shapes = {E: ["id", "id", "email", "email", "both"], I: ["id", "id", "both"], O: ["email", "email", "both"]}[mode]
    shape = "neither" if draw(rarely(40)) else draw(st.sampled_from(shapes))
    id_ = draw(st.sampled_from(IDS)) if shape in ("id", "both") else None
    email = draw(st.sampled_from(EMAILS)) if shape in ("email", "both") else None
    lone_ids = [p.id for p in world.people if p.id is not None and p.email is None]
    lone_emails = [p.email for p in world.people if p.email is not None and p.id is None]
    if mode is E and lone_ids and lone_emails and draw(rarely(4)):
        # Aimed at R13: the id of someone without an email, the email of someone without an id.
        id_, email = draw(st.sampled_from(lone_ids)), draw(st.sampled_from(lone_emails))
    if draw(rarely(40)):
        id_, invalid = BAD_ID, True
    if draw(rarely(40)):
        email, invalid = BAD_EMAIL, True
    if cio_id is None and not (id_ and Field.ID in IDENTIFIERS[mode] or email and Field.EMAIL in IDENTIFIERS[mode]):
        invalid = True  # R9/R12: nothing that identifies a person
    names = ["plan", "city", "tags"]
    # R12: id or email where it is an attribute, set through an attribute of that name.
    if mode is I and email is None:
        names.append("email")
    if mode is O and id_ is None:
        names.append("id")
    attributes = draw(st.dictionaries(st.sampled_from(names), st.sampled_from(ATTRIBUTE_VALUES), max_size=3))
    for name in set(attributes) & {"id", "email"}:
        attributes[name] = draw(st.sampled_from([None] + (IDS if name == "id" else EMAILS)))
    if draw(rarely(40)):  # R6: an identifier's name as an attribute
        attributes[draw(st.sampled_from(sorted(RESERVED[mode])))] = "x"
        invalid = True
    update_only = draw(rarely(15))
    return IdentifyCall(IdentifyInput(WS, cio_id, id_, email, attributes, update_only), invalid)


@st.composite
def ref_to(draw, world: "World") -> tuple[Ref, Person | None]:
    """Mostly a reference to someone who exists (returned too), by an identifier of the mode
    they have: by cio_id most often, as R20-R22 allow the most through it."""
    mode = world.settings.mode
    if not world.people or draw(rarely(30)):
        field = draw(st.sampled_from(sorted(IDENTIFIERS[mode], key=lambda f: f.value)))
        value = {Field.CIO_ID: CIO_UNKNOWN, Field.ID: draw(st.sampled_from(IDS)),
                 Field.EMAIL: draw(st.sampled_from(EMAILS))}[field]
        return Ref(field, value), None
    p = draw(st.sampled_from(world.people))
    options = [Ref(Field.CIO_ID, p.cio_id)] * 4
    if Field.ID in IDENTIFIERS[mode] and p.id is not None:
        options.append(Ref(Field.ID, p.id))
    if Field.EMAIL in IDENTIFIERS[mode] and p.email is not None:
        options += [Ref(Field.EMAIL, p.email), Ref(Field.EMAIL, p.email.upper())]
    if draw(rarely(40)):  # R7: a field that is not an identifier
        options = [Ref(f, p.id or "ab100") if f is Field.ID else Ref(f, p.email or "p@example.com")
                   for f in (Field.ID, Field.EMAIL) if f not in IDENTIFIERS[mode]] or options
    return draw(st.sampled_from(options)), p


@st.composite
def update_call(draw, world: "World") -> UpdateCall:
    mode = world.settings.mode
    fields = sorted(IDENTIFIERS[mode] - {Field.CIO_ID}, key=lambda f: f.value)
    if draw(rarely(30)):  # R23, section 1: a non-identifier or the cio_id
        fields = sorted(set(Field) - set(fields), key=lambda f: f.value)
    field = draw(st.sampled_from(fields))
    pool = {Field.ID: IDS, Field.EMAIL: EMAILS, Field.CIO_ID: [CIO_UNKNOWN]}[field]
    free = [v for v in pool if holder(mode, world.people, field, v) is None]
    if free and draw(st.booleans()):  # a value nobody holds (else often R24's ALREADY_EXISTS)
        pool = free
    value, invalid = draw(st.sampled_from(pool)), False
    if field is not Field.CIO_ID and draw(rarely(40)):
        value, invalid = (BAD_ID if field is Field.ID else BAD_EMAIL), True
    return UpdateCall(draw(ref_to(world))[0], field, value, invalid)


@st.composite
def delete_call(draw, world: "World") -> DeleteCall:
    ref, p = draw(ref_to(world))
    fields = [Field.ID, Field.EMAIL]
    if p is not None and (p.id is None) != (p.email is None):
        # One identifier left: removing the one it lacks changes nothing (R31), mostly.
        fields = [Field.ID if p.id is None else Field.EMAIL] * 2 + [Field.EMAIL if p.id is None else Field.ID]
    if draw(rarely(40)):
        fields = [Field.CIO_ID]  # R30
    return DeleteCall(ref, draw(st.sampled_from(fields)))


def call_for(world: "World") -> st.SearchStrategy[Call]:
    """A call, weighted by what can succeed in the world's mode (an identifier is deleted only in
    EMAIL_OR_ID, R31-R32; a sole identifier is updated only when the setting allows it, R22)."""
    s = world.settings
    weights: list[tuple[st.SearchStrategy, int]] = [
        (identify_call(world), 12),
        (update_call(world), (4 if s.mode is E or s.sole_identifier_updatable else 1) if world.people else 0),
        (delete_call(world), (3 if s.mode is E else 0) if world.people else 0),
        (st.builds(SettingsCall, settings_st), 1),
    ]
    return st.sampled_from([s for s, w in weights for _ in range(w)]).flatmap(lambda s: s)


# --------------------------------------------------------------------------- the world


class World:
    """A workspace: settings and people, and the service's steps for each call."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.people: list[Person] = []
        self.step = 0
        self.minted = 0

    @property
    def now(self) -> datetime:
        return NOW + timedelta(seconds=self.step // 2)  # some people share a creation time

    def new_cio_id(self) -> str:
        self.minted += 1
        return f"m{self.minted:019d}"

    def run(self, call: Call) -> Decision | None:
        """The call as the service runs it: lookup, the people it finds, decision."""
        s = self.settings
        if isinstance(call, IdentifyCall):
            people = stored(s, identify_lookup(call.req), self.people)
            return decide_identify(s, call.req, people, self.now, self.new_cio_id())
        if isinstance(call, UpdateCall):
            lookup = identifiers.update_identifier_lookup(WS, call.ref, call.field, call.value)
            people = stored(s, lookup, self.people)
            return identifiers.decide_update_identifier(s, call.ref, call.field, call.value, people, self.now)
        if isinstance(call, DeleteCall):
            people = stored(s, identifiers.delete_identifier_lookup(WS, call.ref, call.field), self.people)
            return identifiers.decide_delete_identifier(s, call.ref, call.field, people, self.now)
        checks = modes.mode_change_checks(s.mode, call.new.mode)
        results = {check: modes.check_people(check, self.people) for check in checks}
        for check, result in results.items():
            assert result == data_check(check, self.people), check
        self.settings = modes.decide_settings_change(s, call.new, results)
        return None

    def apply(self, decision: Decision) -> None:
        """The repository's write, with what it may assume checked."""
        cio_ids = [p.cio_id for p in self.people]
        assert set(decision.deleted) <= set(cio_ids), "a merge deletes someone who exists"
        people = [p for p in self.people if p.cio_id not in decision.deleted]
        if decision.write is Write.INSERT:
            assert decision.person.cio_id not in cio_ids, "an insert has a fresh cio_id"
            people.append(decision.person)
        elif decision.write is Write.UPDATE:
            index = [p.cio_id for p in people].index(decision.person.cio_id)
            assert decision.person.created_at == people[index].created_at
            assert decision.person.updated_at == self.now
            assert stored_form(decision.person) != stored_form(people[index]), "an update changes something"
            people[index] = decision.person
        elif decision.write is Write.DELETE:
            people = [p for p in people if p.cio_id != decision.person.cio_id]
        else:
            assert decision.write is Write.NONE and decision.deleted == ()
            assert decision.person in people, "UNCHANGED returns the person as stored"
        self.people = people


# --------------------------------------------------------------------------- checks


def stored_form(p: Person) -> tuple:
    """A person as the database would hold it: JSON tells true from 1 (Python's == does not)."""
    return p.id, p.email, json.dumps(p.attributes, sort_keys=True)



def check_invariants(settings: Settings, people: list[Person]) -> None:
    mode = settings.mode
    cio_ids = [p.cio_id for p in people]
    assert len(set(cio_ids)) == len(cio_ids), "cio_ids are unique"
    for field in IDENTIFIERS[mode] - {Field.CIO_ID}:
        for p in people:
            value = p.id if field is Field.ID else p.email
            holder(mode, people, field, value)  # R41: at most one person per identifier value
    for p in people:
        if mode is E:
            assert p.id is not None or p.email is not None, f"R1: {p} has neither id nor email"
        else:
            assert (p.id if mode is I else p.email) is not None, f"R1: {p} lacks {mode}'s identifier"
        assert not {"id", "email", "cio_id"} & set(p.attributes), "identifier fields never become attributes"
        assert len(p.attributes) <= 300


def check_success(world: World, before: list[Person], call: Call, decision: Decision | None) -> None:
    """What a successful call must have decided."""
    mode = world.settings.mode
    assert not getattr(call, "invalid", False), f"{call} should have been INVALID_ARGUMENT"
    if decision is None:
        return
    if isinstance(call, IdentifyCall):
        # R15: each outcome has its write; only a merge deletes (one person).
        write = {Outcome.CREATED: Write.INSERT, Outcome.UPDATED: Write.UPDATE, Outcome.MERGED: Write.UPDATE,
                 Outcome.UNCHANGED: Write.NONE}[decision.outcome]
        assert decision.write is write and len(decision.deleted) == (decision.outcome is Outcome.MERGED)
        if decision.outcome is Outcome.MERGED:
            check_merge(world.settings, before, call.req, decision)
        return
    assert decision.outcome is None and decision.deleted == ()
    p = holder(mode, before, call.ref.field, call.ref.value)
    assert p is not None and p.cio_id == decision.person.cio_id
    if isinstance(call, UpdateCall):
        after = decision.person.id if call.field is Field.ID else decision.person.email
        assert after == call.value  # R20-R22, R24
    else:
        assert (decision.person.id if call.field is Field.ID else decision.person.email) is None  # R31


def check_merge(settings: Settings, before: list[Person], req: IdentifyInput, decision: Decision) -> None:
    """R13, read from the spec."""
    a = holder(settings.mode, before, Field.ID, req.id)
    b = holder(settings.mode, before, Field.EMAIL, req.email)
    assert settings.auto_merge and settings.mode is E and req.cio_id is None
    assert a is not None and b is not None and a.email is None and b.id is None and a != b
    primary, secondary = sorted((a, b), key=lambda p: (p.created_at, p.cio_id))
    assert decision.deleted == (secondary.cio_id,)
    person = decision.person
    assert (person.cio_id, person.created_at, person.id, person.email) == (
        primary.cio_id, primary.created_at, a.id, b.email
    )
    expected = dict(primary.attributes)
    for name, value in secondary.attributes.items():
        if expected.get(name) is None or expected.get(name) == "":
            expected[name] = value
    for name, value in req.attributes.items():
        if value is None:
            expected.pop(name, None)
        else:
            expected[name] = value
    assert dict(person.attributes) == expected


def subject(world: World, call: Call) -> Person | None:
    if isinstance(call, IdentifyCall):
        return holder(world.settings.mode, world.people, Field.CIO_ID, call.req.cio_id)
    return holder(world.settings.mode, world.people, call.ref.field, call.ref.value)


def check_refusal(world: World, call: Call, err: DomainError) -> None:
    """A refusal must be one the rules call for: an independent reading of each reason."""
    s, mode = world.settings, world.settings.mode
    if isinstance(err, InvalidArgument):
        assert getattr(call, "invalid", False), f"{call} refused as invalid: {err}"
        return
    assert not getattr(call, "invalid", False), f"{call} should have been INVALID_ARGUMENT, not {err.reason}"
    if isinstance(call, SettingsCall):
        checks = modes.mode_change_checks(s.mode, call.new.mode)
        assert isinstance(err, FailedPrecondition) and any(data_check(c, world.people).offending for c in checks)
        return
    who = subject(world, call)
    field = getattr(call, "field", None)
    reason = err.reason
    if isinstance(err, NotFound):
        if isinstance(call, IdentifyCall) and call.req.cio_id is None:
            assert call.req.update_only
            assert holder(mode, world.people, Field.ID, call.req.id) is None
            assert holder(mode, world.people, Field.EMAIL, call.req.email) is None
        else:
            assert who is None, f"{call}: PERSON_NOT_FOUND but {who} matches"
        return
    if isinstance(err, AlreadyExists):
        owner = next(p for p in world.people if p.cio_id == err.metadata["owner_cio_id"])
        named = Field(err.metadata["field"])
        value = {IdentifyCall: lambda: getattr(call.req, named.value)}.get(type(call), lambda: call.value)()
        assert holds(mode, owner, named, value), (call, owner)
        if isinstance(call, IdentifyCall) and call.req.cio_id is None:
            a = holder(mode, world.people, Field.ID, call.req.id)
            assert a is not None and a.cio_id == err.metadata["id_owner_cio_id"] and a != owner
            # R13 would have merged them otherwise.
            assert not (s.auto_merge and mode is E and a.email is None and owner.id is None)
        return
    assert isinstance(err, FailedPrecondition), err
    expected: dict[str, Callable[[], bool]] = {
        "NOT_AN_IDENTIFIER": lambda: (field is not None and field not in IDENTIFIERS[mode])
        or (not isinstance(call, IdentifyCall) and call.ref.field not in IDENTIFIERS[mode]),
        "CIO_ID_IMMUTABLE": lambda: isinstance(call, UpdateCall) and field is Field.CIO_ID,
        "CIO_ID_NOT_DELETABLE": lambda: isinstance(call, DeleteCall) and field is Field.CIO_ID,
        "SOLE_IDENTIFIER_NOT_DELETABLE": lambda: isinstance(call, DeleteCall) and field is SOLE[mode],
        "LAST_IDENTIFIER": lambda: who is not None and mode is E
        and (who.id is None) != (who.email is None) and getattr(who, field.value) is not None,
        "SOLE_IDENTIFIER_NOT_UPDATABLE": lambda: SOLE[mode] is not None and not s.sole_identifier_updatable,
        "SOLE_IDENTIFIER_CHANGE_REQUIRES_CIO_ID": lambda: SOLE[mode] is not None
        and isinstance(call, UpdateCall) and call.ref.field is not Field.CIO_ID,
        # By an email reference (R20), or by id with the switch off: the person has an email.
        "EMAIL_CHANGE_REQUIRES_CIO_ID": lambda: mode is E and not isinstance(call, IdentifyCall)
        and who is not None and who.email is not None
        and (call.ref.field is Field.EMAIL or not s.email_updatable_by_id)
        or isinstance(call, IdentifyCall) and not s.email_updatable_by_id
        and holder(mode, world.people, Field.ID, call.req.id).email is not None,
        "ID_CHANGE_REQUIRES_CIO_ID": lambda: mode is E and (
            isinstance(call, IdentifyCall) and holder(mode, world.people, Field.EMAIL, call.req.email).id is not None
            or isinstance(call, UpdateCall) and who is not None and who.id is not None
            and call.ref.field is not Field.CIO_ID
        ),
    }
    assert reason in expected and expected[reason](), f"{call} refused {reason} unexpectedly: {err}"


# --------------------------------------------------------------------------- the properties

# Fewer examples for quick runs (e.g. mutation testing): RULES_PROPERTY_EXAMPLES=50.
EXAMPLES = int(os.environ.get("RULES_PROPERTY_EXAMPLES", "200"))
PROPERTY = hyp_settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATS: dict[str, Counter] = {}


def kind(call: Call) -> str:
    return type(call).__name__.removesuffix("Call").lower()


def run_calls(world: World, calls: list[Call] | None, data, count: int, stats: Counter, after_each=None) -> None:
    for n in range(count):
        call = calls[n] if calls is not None else data.draw(call_for(world), label=f"call {n}")
        world.step += 1
        before = list(world.people)
        stats[f"{kind(call)} calls"] += 1
        try:
            decision = world.run(call)
        except DomainError as err:
            check_refusal(world, call, err)
            stats[f"{kind(call)} refused"] += 1
            stats[f"{kind(call)} refused {err.reason}"] += 1
            event(f"{kind(call)} refused {err.reason}")
            continue
        check_success(world, before, call, decision)
        stats[f"{kind(call)} ok"] += 1
        if decision is not None:
            if decision.outcome is not None:
                stats[decision.outcome.value] += 1
                event(f"identify {decision.outcome.value}")
            world.apply(decision)
        check_invariants(world.settings, world.people)
        if after_each is not None:
            after_each(world, call, decision)


def ratio(stats: Counter, kinds=("identify", "update", "delete", "settings")) -> float:
    ok = sum(stats[f"{k} ok"] for k in kinds)
    return ok / max(1, sum(stats[f"{k} calls"] for k in kinds))


def test_r1_r2_r11_r13_r41_random_calls_keep_the_invariants():
    stats: Counter = Counter()

    @PROPERTY
    @given(settings_st, st.integers(5, 30), st.data())
    def run(settings, count, data):
        run_calls(World(settings), None, data, count, stats)

    run()
    STATS["invariants"] = stats
    # Most calls succeed (the rest are refusals the rules call for), and every kind of outcome
    # happens, merges included.
    # (Measured over 200 examples: about 0.8 of all calls, 0.85 of Identify, 0.55 of
    # UpdateIdentifier, 0.8 of DeleteIdentifier; 40 to 100 merges.)
    assert ratio(stats) > 0.6, stats
    assert ratio(stats, ("identify",)) > 0.6 and ratio(stats, ("update",)) > 0.3, stats
    assert ratio(stats, ("delete",)) > 0.3 and stats["settings ok"] > EXAMPLES / 10, stats
    assert all(stats[o.value] > EXAMPLES / 20 for o in Outcome), stats


def test_r13_merges_in_email_or_id_keep_the_invariants():
    # EMAIL_OR_ID with auto merge: people with one identifier each, then requests carrying an
    # id and an email, which merge them (R13) or are refused (R11), and more of both.
    stats: Counter = Counter()
    merging = settings_st.map(lambda s: replace(s, mode=E, auto_merge=True))
    attributes = st.dictionaries(st.sampled_from(["plan", "city"]), st.sampled_from(ATTRIBUTE_VALUES), max_size=2)

    def requests(shapes: list[str], size: int) -> st.SearchStrategy[list[IdentifyCall]]:
        return st.lists(st.builds(
            lambda shape, id, email, attributes: IdentifyCall(IdentifyInput(
                WS, id=id if shape != "email" else None, email=email if shape != "id" else None,
                attributes=attributes,
            )),
            st.sampled_from(shapes), st.sampled_from(IDS), st.sampled_from(EMAILS), attributes,
        ), min_size=size // 2, max_size=size)

    @PROPERTY
    @given(merging, requests(["id", "email"], 10), requests(["both", "both", "both", "id", "email"], 6), st.data())
    def run(settings, singles, mixed, data):
        calls = singles + mixed
        run_calls(World(settings), calls, data, len(calls), stats)

    run()
    STATS["merges"] = stats
    # (Measured over 200 examples: about 0.93 succeed, 110 to 170 merges.)
    assert ratio(stats) > 0.6 and stats["MERGED"] > EXAMPLES / 4, stats


def test_r15_r24_r31_repeating_a_successful_call_writes_nothing():
    # Identify again with the same request: UNCHANGED (R15). The same identifier change again,
    # through the person's cio_id (the first may have changed the value its reference used):
    # an equal value (R24) or an absent one (R31) writes nothing.
    stats: Counter = Counter()

    def again(world: World, call: Call, decision: Decision | None) -> None:
        if decision is None or decision.write is Write.NONE:
            return
        world.step += 1
        if isinstance(call, IdentifyCall):
            repeat = world.run(call)
            assert repeat.outcome is Outcome.UNCHANGED, (call, decision, repeat)
        else:
            repeat = world.run(replace(call, ref=Ref(Field.CIO_ID, decision.person.cio_id)))
        assert repeat.write is Write.NONE and repeat.person == decision.person, (call, decision, repeat)
        stats["repeated"] += 1

    @PROPERTY
    @given(settings_st, st.integers(1, 15), st.data())
    def run(settings, count, data):
        run_calls(World(settings), None, data, count, stats, after_each=again)

    run()
    STATS["repeats"] = stats
    assert stats["repeated"] > EXAMPLES * 2, stats
