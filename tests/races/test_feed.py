"""The change feed under races and faults (issue 8, "Proof"), on the real multi-process server.

1. Rebuild from the feed: readers of `WatchChanges` (one from before the storm, one that joins
   halfway with after_sequence=0) while 32 client threads race Identify (creating, updating and
   merging people), UpdateIdentifier, DeleteIdentifier and DeletePerson on overlapping values.
   Afterwards: each reader received exactly 1..N; replaying the events from an empty state
   rebuilds every person exactly as GetPerson returns it, and the same set of people as the
   database; every acknowledged call that changed something has exactly one event (matched by
   its request_id, with the state the call returned), every acknowledged call without one
   changed nothing, no refused call has one.
2. Faults: six readers resume from their last sequence while a worker is SIGKILLed and Postgres
   (a throwaway instance of the fault suite's, tests/races/test_faults.py) is stopped and
   restarted, writes retrying with their request_id throughout: every reader received exactly
   1..N, and each write is in the log once.

Both print the feed lag (commit to arrival, for events received live), p50/p99: figures for
the report, not bounds (the bounds of R52 belong to `make bench`).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from datetime import timezone
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
import sqlalchemy as sa

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from tests.races.feed import FeedReader, ReaderProcess, Replay, lag_figures, person_key, sequence_problems
from tests.races.harness import CHANNEL_OPTIONS, Call, Client, Load, ServerProcess, case_variant, fetch_people, tally, wait_until
from tests.races.test_faults import (  # noqa: F401 - the fault suite's fixtures: a throwaway Postgres of its own
    GRACE,
    fault_engine,
    fault_url,
    fault_workspace,
    throwaway_pg,
)

pytestmark = pytest.mark.slow

C = grpc.StatusCode
THREADS = 32
SECONDS = 6.0
MAX_CALLS = 400
TIMEOUT = 15.0
RACE_REFUSALS = {C.ALREADY_EXISTS, C.FAILED_PRECONDITION, C.ABORTED, C.NOT_FOUND}
CATCH_UP_S = 60.0  # readers must reach the last sequence within this (seconds; wide for a busy CI machine)
KIND = pb.PersonEventKind
OUTCOME_KIND = {
    pb.IDENTIFY_OUTCOME_CREATED: KIND.PERSON_EVENT_KIND_CREATED,
    pb.IDENTIFY_OUTCOME_UPDATED: KIND.PERSON_EVENT_KIND_UPDATED,
    pb.IDENTIFY_OUTCOME_MERGED: KIND.PERSON_EVENT_KIND_MERGED,
}
SHARED_VALUES: list[Any] = ["free", "pro", None, 3, 2.5, True, {"seats": 4, "tags": ["a", "b"]}, [1, "x", None], ""]


def rid() -> str:
    return str(uuid.uuid4())


def log_bounds(engine: sa.Engine, workspace: str) -> tuple[int, int, int | None, int | None]:
    """(last sequence taken, events stored, smallest, largest) for the workspace, in SQL."""
    with engine.connect() as conn:
        last = conn.execute(
            sa.text("SELECT last_sequence FROM event_sequences WHERE workspace_id = :w"), {"w": workspace}
        ).scalar()
        count, low, high = conn.execute(
            sa.text("SELECT count(*), min(sequence), max(sequence) FROM person_events WHERE workspace_id = :w"),
            {"w": workspace},
        ).one()
    return int(last or 0), int(count), low, high


def commit_seconds(event: pb.PersonEvent) -> float:
    return event.commit_time.ToDatetime(tzinfo=timezone.utc).timestamp()


def update_time(person: pb.Person) -> tuple[int, int]:
    return (person.update_time.seconds, person.update_time.nanos)


def check_calls_against_events(calls: list[Call], events: list[pb.PersonEvent], replay: Replay) -> tuple[list[str], dict[str, int]]:
    """R50 seen from the calls. Every write carries a request_id of its own (a retry reuses its
    call's), and each event carries the request_id of the call that appended it, so:

    - every event names a recorded call's request_id, and no request_id has two events;
    - an acknowledged call that changed something (Identify CREATED/UPDATED/MERGED, DeletePerson,
      an identifier change with an event) has exactly one event, of the kind its answer says,
      about the person it returned, and the replayed state right after that event is the state
      it returned;
    - an acknowledged call with no event changed nothing: UNCHANGED for Identify; for
      UpdateIdentifier and DeleteIdentifier, the person it returned (cio_id, update_time and
      data) is a state that an acknowledged call with an event had produced (updated_at moves
      only when something changes, and every change of a person's row returns that person);
    - a refused call has none (unless an earlier attempt with its request_id had an unknown
      outcome and may have been applied).
    """
    problems: list[str] = []
    by_rid: dict[str, list[pb.PersonEvent]] = defaultdict(list)
    for event in events:
        by_rid[event.request_id].append(event)
    attempts: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        if c.request.request_id:
            attempts[c.request.request_id].append(c)
    if "" in by_rid:
        problems.append(f"{len(by_rid[''])} events without a request_id, e.g. #{by_rid[''][0].sequence}")
    for request_id, found in by_rid.items():
        if len(found) > 1:
            problems.append(f"request_id {request_id} has {len(found)} events: {[e.sequence for e in found]} ({attempts[request_id][0].describe() if attempts[request_id] else 'no call'})")
        if request_id and request_id not in attempts:
            problems.append(f"event #{found[0].sequence} names request_id {request_id}, which no recorded call sent")

    produced: dict[tuple[str, tuple[int, int]], tuple[Any, ...]] = {}
    counts: Counter[str] = Counter()
    noops: list[Call] = []
    for request_id, tries in attempts.items():
        tries.sort(key=lambda c: c.start)
        final = tries[-1]
        found = by_rid.get(request_id, [])
        uncertain = any(c.unknown for c in tries)
        if not final.ok:
            if final.refused and not uncertain:
                counts["refused"] += 1
                if found:
                    problems.append(f"refused call has event #{found[0].sequence}: {final.describe()}")
            else:
                counts["unknown"] += 1
            continue
        counts["ok"] += 1
        res = final.response
        if final.method == "Identify" and res.outcome == pb.IDENTIFY_OUTCOME_UNCHANGED:
            expected_kind = None
        elif final.method == "Identify":
            expected_kind = OUTCOME_KIND[res.outcome]
        elif final.method == "DeletePerson":
            expected_kind = KIND.PERSON_EVENT_KIND_DELETED
        else:  # UpdateIdentifier, DeleteIdentifier: an event exactly when it changed the person
            expected_kind = KIND.PERSON_EVENT_KIND_UPDATED if found else None
        if expected_kind is None:
            if found:
                problems.append(f"a call that changed nothing has event #{found[0].sequence}: {final.describe()}")
            else:
                noops.append(final)
            counts["ok_unchanged"] += 1
            continue
        counts["ok_changed"] += 1
        if not found:
            problems.append(f"an acknowledged change has no event: {final.describe()}")
            continue
        event = found[0]
        cio = res.cio_id if final.method == "DeletePerson" else res.person.cio_id
        if (event.kind, event.cio_id, event.rpc) != (expected_kind, cio, final.method):
            problems.append(
                f"event #{event.sequence} is {KIND.Name(event.kind)} of {event.cio_id} by {event.rpc}, "
                f"expected {KIND.Name(expected_kind)} of {cio}: {final.describe()}"
            )
            continue
        if final.method == "DeletePerson":
            continue
        if expected_kind == KIND.PERSON_EVENT_KIND_MERGED and list(res.merged_cio_ids) != [event.merged_cio_id]:
            problems.append(f"event #{event.sequence} merged {event.merged_cio_id}, the answer says {list(res.merged_cio_ids)}")
        replayed = replay.after.get(event.sequence, (None, None))[1]
        if replayed != person_key(res.person):
            problems.append(f"after event #{event.sequence} the replay has {replayed}, the call returned {person_key(res.person)}: {final.describe()}")
        produced[(cio, update_time(res.person))] = person_key(res.person)

    for c in noops:
        if c.method == "Identify":
            continue  # UNCHANGED: its own answer says so
        key = (c.response.person.cio_id, update_time(c.response.person))
        if produced.get(key) != person_key(c.response.person):
            problems.append(
                f"an acknowledged {c.method} has no event, but returned a state no change with an event produced "
                f"(so it changed the person silently?): {c.describe()} -> {person_key(c.response.person)}"
            )
    return problems, dict(counts)


def get_people(address: str, workspace: str, cio_ids: list[str]) -> dict[str, tuple[Any, ...] | None]:
    """GetPerson by cio_id for each (None when NOT_FOUND)."""
    found: dict[str, tuple[Any, ...] | None] = {}
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.IdentityServiceStub(channel)
        for cio in cio_ids:
            try:
                person = stub.GetPerson(pb.GetPersonRequest(workspace_id=workspace, person=pb.PersonRef(cio_id=cio)), timeout=10).person
                found[cio] = person_key(person)
            except grpc.RpcError as error:
                if error.code() != C.NOT_FOUND:  # type: ignore[attr-defined]
                    raise
                found[cio] = None
    return found


def rebuild_problems(replay: Replay, server_people: dict[str, tuple[Any, ...] | None], database: set[str]) -> list[str]:
    problems = []
    alive = set(replay.people)
    if alive != database:
        problems.append(
            f"the replay has {len(alive)} people, the database {len(database)}: only replayed "
            f"{sorted(alive - database)[:5]}, only stored {sorted(database - alive)[:5]}"
        )
    for cio, served in server_people.items():
        mine = replay.people[cio].key() if cio in replay.people else None
        if mine != served:
            problems.append(f"{cio}: the replay has {mine}, GetPerson returns {served}")
    return problems


# --------------------------------------------------------------------------- rebuild


def test_rebuild_every_person_from_the_feed_after_a_storm(race_server: ServerProcess, engine, make_workspace, figures):
    ws = make_workspace()  # EMAIL_OR_ID: id and email are identifiers, in the feed as in GetPerson
    # The first reader in a process of its own (the lag it measures is not the load's GIL), the
    # second a thread beside the load's.
    early_process = ReaderProcess(race_server.address, ws, name="feed-early")
    late = FeedReader(race_server.address, ws, name="feed-late")
    try:
        assert early_process.wait_open(30.0), "the first reader never opened its stream"
    except BaseException:
        early_process.kill()
        raise
    time.sleep(0.3)
    t0 = time.monotonic()

    def body(client: Client) -> None:
        rng = client.rng
        known: list[str] = []  # cio_ids this thread was answered, newest last

        def ref() -> pb.PersonRef:
            generation = int((time.monotonic() - t0) / 0.5)
            roll = rng.random()
            if known and roll < 0.5:
                return pb.PersonRef(cio_id=rng.choice(known[-12:]))
            if roll < 0.75:
                return pb.PersonRef(id=f"g{generation}-u{rng.randrange(6)}")
            return pb.PersonRef(email=case_variant(rng, f"g{generation}-p{rng.randrange(6)}@feed.example.com"))

        while client.more():
            generation = int((time.monotonic() - t0) / 0.5)
            new_id = f"g{generation}-u{rng.randrange(6)}"
            new_email = case_variant(rng, f"g{generation}-p{rng.randrange(6)}@feed.example.com")
            op = rng.choices(
                ["identify", "identify_cio", "update_id", "update_email", "delete_identifier", "delete_person"],
                weights=[45, 8, 10, 12, 17, 8],
            )[0]
            token = None
            if op in ("identify", "identify_cio"):
                method = "Identify"
                request = pb.IdentifyRequest(workspace_id=ws, request_id=rid())
                shape = rng.random()
                if op == "identify_cio" and known:
                    request.cio_id = rng.choice(known[-12:])
                    shape = rng.random() * 1.6  # often neither id nor email
                if shape < 0.65:
                    request.id = new_id
                if 0.35 <= shape < 1.0:
                    request.email = new_email
                if not (request.HasField("id") or request.HasField("email") or request.HasField("cio_id")):
                    request.id = new_id
                token = client.token()
                request.attributes.update({f"t{client.index}": token})
                if rng.random() < 0.5:
                    request.attributes.update({"shared": rng.choice(SHARED_VALUES)})
                if rng.random() < 0.2:
                    request.attributes.update({f"t{client.index}": None, "n": rng.randrange(1000)})
            elif op in ("update_id", "update_email"):
                method = "UpdateIdentifier"
                identifier = pb.IDENTIFIER_TYPE_ID if op == "update_id" else pb.IDENTIFIER_TYPE_EMAIL
                request = pb.UpdateIdentifierRequest(
                    workspace_id=ws, person=ref(), identifier=identifier,
                    value=new_id if op == "update_id" else new_email, request_id=rid(),
                )
            elif op == "delete_identifier":
                method = "DeleteIdentifier"
                identifier = pb.IDENTIFIER_TYPE_ID if rng.random() < 0.5 else pb.IDENTIFIER_TYPE_EMAIL
                request = pb.DeleteIdentifierRequest(workspace_id=ws, person=ref(), identifier=identifier, request_id=rid())
            else:
                method = "DeletePerson"
                request = pb.DeletePersonRequest(workspace_id=ws, person=ref(), request_id=rid())
            call = client.call(method, request, token=token, tag=op)
            if call.person is not None:
                known.append(call.person.cio_id)
                del known[:-50]

    load = Load(race_server.address, THREADS, body, seconds=SECONDS, max_calls=MAX_CALLS, timeout=TIMEOUT).start()
    try:
        time.sleep(SECONDS / 2)
        late.start()  # joins halfway: catch-up from the table, then live, without a seam
    finally:
        try:
            calls = load.join()
        except BaseException:
            early_process.kill()
            late.stop()
            raise
    t_load_end = time.time()
    last, stored, low, high = log_bounds(engine, ws)
    try:
        early_reached, early = early_process.finish(last, CATCH_UP_S)
    finally:
        early_process.kill()
    reached = [early_reached, late.finish(last, CATCH_UP_S)]
    catch_up = max([0.0, *(r.received[-1].at - t_load_end for r in (early, late) if r.received)])

    replay = Replay().apply_all([r.event for r in early.received])
    server_people = get_people(race_server.address, ws, sorted(set(replay.people) | set(replay.ever)))
    database = set(fetch_people(engine, ws))
    rebuild = rebuild_problems(replay, server_people, database)
    mapping, counts = check_calls_against_events(calls, [r.event for r in early.received], replay)
    early_problems = sequence_problems(early.sequences, 1, last)
    late_problems = sequence_problems(late.sequences, 1, last)
    same_events = [a.event.SerializeToString(deterministic=True) for a in early.received] == [
        b.event.SerializeToString(deterministic=True) for b in late.received
    ]
    values = {
        **tally(calls),
        "threads": THREADS,
        "events": last,
        "events_stored": stored,
        "event_kinds": replay.kinds,
        "calls_by_method": dict(Counter(c.method for c in calls)),
        "writes_checked": counts.get("ok", 0) + counts.get("refused", 0),
        "calls_with_event": counts.get("ok_changed", 0),
        "ok_calls_unchanged": counts.get("ok_unchanged", 0),
        "merges": replay.kinds.get("MERGED", 0),
        "people": len(database),
        "people_ever": len(replay.ever),
        "gaps_or_duplicates": len(early_problems) + len(late_problems),
        "replay_problems": len(replay.problems),
        "rebuild_problems": len(rebuild),
        "mapping_problems": len(mapping),
        "stream_breaks": len(early.breaks()) + len(late.breaks()),
        "late_reader_catch_up_events": sum(1 for r in late.received if not r.live),
        "catch_up_after_load_seconds": round(catch_up, 3),
        **lag_figures(early.lags()),  # the reader in its own process
        **lag_figures(late.lags(), "late_lag"),  # the reader among the load's threads
    }
    figures(values)

    assert early.error is None and late.error is None, (early.error, late.error)
    assert all(reached), f"a reader did not reach sequence {last} within {CATCH_UP_S}s: {early.last}, {late.last}"
    assert (stored, low, high) == (last, 1 if last else None, last or None), (
        f"the log holds {stored} events {low}..{high}, the counter says {last}"
    )
    assert not early_problems, f"the reader from the start did not receive exactly 1..{last}: {early_problems}"
    assert not late_problems, f"the reader that joined halfway did not receive exactly 1..{last}: {late_problems}"
    assert same_events, "the two readers received different events"
    unexpected = [c for c in calls if not c.ok and not (c.refused and c.code in RACE_REFUSALS)]
    assert not unexpected, f"{len(unexpected)} calls ended unexpectedly:\n" + "\n".join(c.describe() for c in unexpected[:20])
    assert not replay.problems, f"{len(replay.problems)} events inconsistent with the replayed state:\n" + "\n".join(replay.problems[:30])
    assert not rebuild, f"{len(rebuild)} differences between the replay and the server:\n" + "\n".join(rebuild[:30])
    assert not mapping, f"{len(mapping)} calls and events that do not match:\n" + "\n".join(mapping[:30])
    assert counts.get("ok_changed", 0) == last, f"{last} events for {counts.get('ok_changed', 0)} acknowledged changes"
    # The load exercised what it claims (wide: a few of each in a normal run, hundreds).
    kinds = replay.kinds
    assert all(kinds.get(k, 0) > 0 for k in ("CREATED", "UPDATED", "MERGED", "DELETED")), kinds
    by_method = Counter(c.method for c in calls if c.ok)
    assert all(by_method[m] > 0 for m in ("Identify", "UpdateIdentifier", "DeleteIdentifier", "DeletePerson")), by_method
    assert any(c.refused for c in calls), "no call was refused"
    assert late.received and late.received[0].event.sequence == 1 and values["late_reader_catch_up_events"] > 0


# --------------------------------------------------------------------------- faults


@pytest.fixture
def fault_server(fault_url: str, fault_engine: sa.Engine, tmp_path: Path) -> Iterator[ServerProcess]:
    """The real server (2 workers) on the throwaway Postgres, stopped at the end."""
    server = ServerProcess(fault_url, tmp_path / "server.log", workers=2, grace=GRACE)
    try:
        yield server.start()
    finally:
        server.stop()


READERS = 6
WRITERS = 12
RETRY_FOR_S = 20.0  # a write is retried with its request_id (R70) for this long


def retrying_writer(workspace: str, *, timeout: float) -> Any:
    """Each thread creates people of its own, updates them (attributes, a new email), deletes
    some, and identifies people of a small shared pool (merges); each write has a request_id
    and is retried with it while the answer is UNAVAILABLE or the transport failed."""

    def body(client: Client) -> None:
        rng = client.rng
        mine: list[str] = []
        n = 0
        while client.more():
            n += 1
            roll = rng.random()
            token = None
            if roll < 0.15:  # the shared pool: people with an id only, an email only, and merges of them
                method = "Identify"
                request = pb.IdentifyRequest(workspace_id=workspace)
                shape = rng.random()
                if shape < 0.67:
                    request.id = f"s{rng.randrange(8)}"
                if shape >= 0.33:
                    request.email = case_variant(rng, f"s{rng.randrange(8)}@fault-feed.example.com")
            elif mine and roll < 0.45:
                method = "Identify"
                request = pb.IdentifyRequest(workspace_id=workspace, id=rng.choice(mine))
            elif mine and roll < 0.55:
                method = "UpdateIdentifier"
                request = pb.UpdateIdentifierRequest(
                    workspace_id=workspace, person=pb.PersonRef(id=rng.choice(mine)),
                    identifier=pb.IDENTIFIER_TYPE_EMAIL, value=f"w{client.index}-{n}@fault-feed.example.com",
                )
            elif mine and roll < 0.60:
                method = "DeletePerson"
                victim = mine.pop(rng.randrange(len(mine)))
                request = pb.DeletePersonRequest(workspace_id=workspace, person=pb.PersonRef(id=victim))
            else:
                method = "Identify"
                new = f"w{client.index}-{n}"
                request = pb.IdentifyRequest(workspace_id=workspace, id=new, email=f"{new}@fault-feed.example.com")
            request.request_id = rid()
            if method == "Identify":
                token = client.token()
                request.attributes.update({f"t{client.index}": token})
            first = time.monotonic()
            while True:
                call = client.call(method, request, token=token, timeout=timeout)
                if not call.unknown or time.monotonic() - first > RETRY_FOR_S:
                    break
                time.sleep(0.05)
            if call.ok and method == "Identify" and call.response.outcome == pb.IDENTIFY_OUTCOME_CREATED and request.id.startswith("w"):
                mine.append(request.id)
            time.sleep(0.01)

    return body


def test_feed_readers_resume_without_gap_or_duplicate_through_a_worker_kill_and_a_database_restart(
    throwaway_pg, fault_engine, fault_workspace, fault_server, figures
):
    server, ws = fault_server, fault_workspace

    def open_streams() -> list[int]:
        return [int(server.counter(i, "identity_open_streams", method="WatchChanges")) for i in range(server.workers)]

    # Each reader in a process of its own (as the service's clients would be).
    processes = [ReaderProcess(server.address, ws, name=f"feed-{i}", pause=0.1) for i in range(READERS)]
    marks: dict[str, float] = {}
    try:
        opened = [p.wait_open(30.0) for p in processes]
        assert all(opened), f"readers that opened a stream: {opened}"
        assert wait_until(lambda: sum(open_streams()) == READERS, 10.0), f"streams open per worker: {open_streams()}"
        # Bounded by stop() below, not by its own clock (the faults take longer on a busy machine).
        load = Load(server.address, WRITERS, retrying_writer(ws, timeout=2.0), seconds=60.0, max_calls=20000, timeout=2.0)
        load.start()
        try:
            time.sleep(1.5)
            # (a) SIGKILL the worker holding the most streams: its streams break.
            per_worker = open_streams()
            index = max(range(server.workers), key=lambda i: per_worker[i])
            victim = next(pid for pid in server.worker_pids() if server.worker_index(pid) == index)
            marks["kill"] = time.monotonic()
            kill_wall = time.time()
            os.kill(victim, signal.SIGKILL)
            replaced = wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(), 10.0, 0.02)
            marks["replaced"] = time.monotonic()
            time.sleep(max(0.0, marks["kill"] + 3.0 - time.monotonic()))
            # (b) Postgres stopped (fast shutdown) for 2.5 s, then started again.
            marks["db_stop"] = time.monotonic()
            db_stop_wall = time.time()
            throwaway_pg.stop()
            time.sleep(2.5)
            throwaway_pg.start()
            marks["db_up"] = time.monotonic()
            db_up_wall = time.time()
            time.sleep(3.0)  # writes and reads go on after both faults
        finally:
            load.stop()
            calls = load.join()
            fault_engine.dispose()  # its pooled connections died with the database
        t_load_end = time.time()
        last, stored, low, high = log_bounds(fault_engine, ws)
        finished = [p.finish(last, CATCH_UP_S) for p in processes]
    finally:
        for p in processes:
            p.kill()
    reached = [done for done, _ in finished]
    readers = [reader for _, reader in finished]
    assert all(r.error is None for r in readers), [r.error for r in readers]
    # How long after the load the last reader got the last event.
    catch_up = max([0.0, *(r.received[-1].at - t_load_end for r in readers if r.received)])

    problems = {r.name: sequence_problems(r.sequences, 1, last) for r in readers}
    replay = Replay().apply_all([r.event for r in readers[0].received])
    stored_people = {cio: (s.id, s.email, s.attributes) for cio, s in fetch_people(fault_engine, ws).items()}
    replayed_people = {cio: p.key() for cio, p in replay.people.items()}
    mapping, counts = check_calls_against_events(calls, [r.event for r in readers[0].received], replay)
    breaks_kill = [len(r.breaks(marks["kill"])) - len(r.breaks(marks["db_stop"])) for r in readers]
    breaks_db = [len(r.breaks(marks["db_stop"])) for r in readers]
    lags = [x for r in readers for x in r.lags()]
    # Per reader, the worst lag of the events committed after the database came back (received
    # live): a stream that lived through the outage waits for notifications that resume only
    # when the worker's LISTEN connection is back.
    after_restart = [
        max((x.at - commit_seconds(x.event) for x in r.received if x.live and commit_seconds(x.event) >= db_up_wall), default=0.0)
        for r in readers
    ]
    values = {
        **tally(calls),
        "readers": READERS,
        "writers": WRITERS,
        "events": last,
        "events_stored": stored,
        "event_kinds": replay.kinds,
        "writes_checked": counts.get("ok", 0) + counts.get("refused", 0),
        "writes_unknown_after_retries": counts.get("unknown", 0),
        "calls_with_event": counts.get("ok_changed", 0),
        "streams_per_worker_at_kill": per_worker,
        "replacement_seconds": round(marks["replaced"] - marks["kill"], 3),
        "stream_breaks_after_kill": breaks_kill,
        "stream_breaks_after_db_stop": breaks_db,
        "failed_reopens": [r.failed_opens for r in readers],
        "end_codes": dict(Counter(f"{e.code}/{e.reason or '-'}" for r in readers for e in r.ends)),
        "gaps_or_duplicates": sum(len(p) for p in problems.values()),
        "catch_up_after_load_seconds": round(catch_up, 3),
        "database_down_seconds": round(marks["db_up"] - marks["db_stop"], 3),
        **lag_figures(lags),
        "lag_after_restart_max_ms_per_reader": [round(x * 1000) for x in after_restart],
        # The worst live lags: (reader, sequence, commit time from the kill in s, lag in ms),
        # with the database stopped from db_stop_s to db_up_s after the kill.
        "worst_live_lags": sorted(
            ((i, x.event.sequence, round(commit_seconds(x.event) - kill_wall, 2), round((x.at - commit_seconds(x.event)) * 1000))
             for i, r in enumerate(readers) for x in r.received if x.live),
            key=lambda t: -t[3],
        )[:6],
        "db_stop_s": round(db_stop_wall - kill_wall, 2),
        "db_up_s": round(db_up_wall - kill_wall, 2),
    }
    figures(values)

    assert all(r.error is None for r in readers), [r.error for r in readers]
    assert last > 0 and sum(1 for c in calls if c.ok) > 0, f"no write was applied: {tally(calls)}\n{server.log_tail()}"
    assert replaced, "no replacement worker"
    assert all(reached), f"readers did not reach sequence {last} within {CATCH_UP_S}s: {[r.last for r in readers]}; " + str(
        [[(e.code, e.reason, e.received) for e in r.ends[-5:]] for r in readers]
    )
    assert (stored, low, high) == (last, 1 if last else None, last or None), (
        f"the log holds {stored} events {low}..{high}, the counter says {last}"
    )
    bad = {name: p for name, p in problems.items() if p}
    assert not bad, f"readers did not receive exactly 1..{last}: {bad}"
    assert per_worker[index] >= 1 and sum(breaks_kill) >= 1, (
        f"no stream broke when the worker holding {per_worker[index]} of them was killed: {breaks_kill}"
    )
    assert not replay.problems, f"{len(replay.problems)} events inconsistent with the replayed state:\n" + "\n".join(replay.problems[:30])
    differ = sorted(c for c in set(replayed_people) | set(stored_people) if replayed_people.get(c) != stored_people.get(c))
    assert not differ, f"{len(differ)} people differ between the replay and the database: " + str(
        [(c, replayed_people.get(c), stored_people.get(c)) for c in differ[:5]]
    )
    assert not mapping, f"{len(mapping)} writes and events that do not match (a retry applied twice?):\n" + "\n".join(mapping[:30])
    assert sum(1 for c in calls if c.ok and c.end > marks["db_up"]) > 0, "no write succeeded after the database came back"
