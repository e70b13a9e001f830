"""The change feed seen from outside (R50-R52): readers of `WatchChanges` that resume from the
last sequence they received whenever their stream ends or breaks, and a replay of the events
that rebuilds people from an empty state, checking each event against the state it replays on.

A reader keeps every event it received, in order, with the wall-clock time it arrived: the
checks afterwards are that the list is exactly 1..N (no gap, no duplicate, in order), and the
feed lag is `arrival - commit_time` for the events that committed while a stream was open
(the others were read back from the table, on catch-up, and say nothing about lag).
"""

from __future__ import annotations

import base64
import copy
import json
import math
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from identity.v1 import identity_pb2 as pb
from identity.v1 import identity_pb2_grpc as pb_grpc
from tests.races.harness import CHANNEL_OPTIONS, REPO, error_info, wait_until

KIND = pb.PersonEventKind


@dataclass
class Received:
    event: pb.PersonEvent
    at: float  # time.time() on arrival
    stream: int  # which stream of the reader delivered it (0, 1, ...)
    live: bool  # committed after that stream opened


@dataclass
class StreamEnd:
    stream: int
    after_sequence: int  # what it was opened with
    received: int
    code: str  # the status it ended with ("OK" when it ended by itself, "STOPPED" when we cancelled it)
    reason: str | None
    at: float  # time.monotonic()


class FeedReader:
    """One client of the feed: a thread reading `WatchChanges` from `after_sequence`, resuming
    with the last sequence received each time a stream ends (a refusal such as UNAVAILABLE, a
    broken connection, or an end it did not ask for), on a fresh channel (so that a reconnect
    does not wait for the old channel's backoff, and SO_REUSEPORT picks a live worker)."""

    def __init__(self, address: str, workspace: str, *, after_sequence: int = 0, name: str = "feed", pause: float = 0.05):
        self.address = address
        self.workspace = workspace
        self.start_after = after_sequence
        self.last = after_sequence
        self.name = name
        self.pause = pause
        self.received: list[Received] = []
        self.ends: list[StreamEnd] = []
        self.opened: list[float] = []  # time.monotonic() each stream was opened
        self.failed_opens = 0  # streams that ended before delivering anything, with an error
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._target: int | None = None
        self._reached = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ------------------------------------------------------------------ running

    def start(self) -> "FeedReader":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            stream = 0
            while not self._stop.is_set():
                self._read_one_stream(stream)
                stream += 1
                if not self._stop.is_set():
                    time.sleep(self.pause)
        except BaseException as error:  # noqa: BLE001 - reported by finish()
            self.error = error

    def _read_one_stream(self, stream: int) -> None:
        after = self.last
        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        count, code, reason = 0, "OK", None
        try:
            opened_wall = time.time()
            call = pb_grpc.IdentityServiceStub(channel).WatchChanges(
                pb.WatchChangesRequest(workspace_id=self.workspace, after_sequence=after)
            )
            with self._lock:
                self._call = call
                if self._stop.is_set():
                    call.cancel()
            self.opened.append(time.monotonic())
            try:
                for response in call:
                    now = time.time()
                    for event in response.events:
                        commit = event.commit_time.ToDatetime(tzinfo=timezone.utc).timestamp()
                        self.received.append(Received(event, now, stream, commit >= opened_wall))
                        self.last = event.sequence
                        count += 1
                    if self._target is not None and self.last >= self._target:
                        self._reached.set()
            except grpc.RpcError as error:
                code = error.code().name  # type: ignore[attr-defined]
                reason, _ = error_info(error)
                if self._stop.is_set() and error.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                    code = "STOPPED"
                elif count == 0:
                    self.failed_opens += 1
        finally:
            with self._lock:
                self._call = None
            channel.close()
        self.ends.append(StreamEnd(stream, after, count, code, reason, time.monotonic()))

    # ------------------------------------------------------------------ ending

    def finish(self, target: int, timeout: float) -> bool:
        """Waits until the reader has received `target` (the last sequence), then stops it.
        Returns whether it got there in time."""
        self._target = target
        if self.last >= target:
            self._reached.set()
        reached = self._reached.wait(timeout)
        self.stop()
        return reached

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), f"{self.name} did not stop"

    # ------------------------------------------------------------------ figures

    @property
    def sequences(self) -> list[int]:
        return [r.event.sequence for r in self.received]

    def breaks(self, since: float = 0.0) -> list[StreamEnd]:
        """Streams that ended other than by our cancel (after `since`, time.monotonic())."""
        return [e for e in self.ends if e.code != "STOPPED" and e.at >= since]

    def lags(self) -> list[float]:
        """Seconds from commit to arrival, for the events received live."""
        return [r.at - r.event.commit_time.ToDatetime(tzinfo=timezone.utc).timestamp() for r in self.received if r.live]


def sequence_problems(sequences: list[int], first: int, last: int) -> list[str]:
    """What makes `sequences` differ from exactly first..last in order: gaps, duplicates,
    disorder, events past the end."""
    problems = []
    expected = list(range(first, last + 1))
    if sequences == expected:
        return []
    seen: set[int] = set()
    duplicates = sorted({s for s in sequences if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
    if duplicates:
        problems.append(f"{len(duplicates)} duplicates, e.g. {duplicates[:10]}")
    missing = sorted(set(expected) - seen)
    if missing:
        problems.append(f"{len(missing)} missing (gaps), e.g. {missing[:10]}")
    extra = sorted(seen - set(expected))
    if extra:
        problems.append(f"{len(extra)} outside {first}..{last}, e.g. {extra[:10]}")
    disorder = [(a, b) for a, b in zip(sequences, sequences[1:]) if b <= a]
    if disorder:
        problems.append(f"{len(disorder)} out of order, e.g. {disorder[:5]}")
    return problems or ["differs from the expected list"]


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[k]


def lag_figures(lags: list[float], prefix: str = "lag") -> dict[str, Any]:
    ms = [x * 1000 for x in lags]
    p50, p99, top = percentile(ms, 50), percentile(ms, 99), max(ms, default=None)
    return {
        f"{prefix}_events": len(ms),
        f"{prefix}_p50_ms": round(p50, 1) if p50 is not None else None,
        f"{prefix}_p99_ms": round(p99, 1) if p99 is not None else None,
        f"{prefix}_max_ms": round(top, 1) if top is not None else None,
    }


# --------------------------------------------------------------------------- replay


def value_of(message: Any, name: str) -> Any:
    """A google.protobuf.Value field as Python data, or ABSENT when unset."""
    return MessageToDict(getattr(message, name)) if message.HasField(name) else ABSENT


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass
class Replayed:
    """A person as the feed describes it: identifiers (as presented, EMAIL_OR_ID) and attributes."""

    id: str | None
    email: str | None
    attributes: dict[str, Any]

    def key(self) -> tuple[Any, ...]:
        """A snapshot (the attributes copied: the replay goes on changing them)."""
        return (self.id, self.email, copy.deepcopy(self.attributes))


def identifiers(message: pb.Identifiers) -> tuple[str | None, str | None]:
    return (
        message.id if message.HasField("id") else None,
        message.email if message.HasField("email") else None,
    )


def person_key(person: pb.Person) -> tuple[Any, ...]:
    """A person as GetPerson and the write RPCs present it (EMAIL_OR_ID: id and email are
    identifiers, never attributes)."""
    return (
        person.id if person.HasField("id") else None,
        person.email if person.HasField("email") else None,
        MessageToDict(person.attributes),
    )


@dataclass
class Replay:
    """Applies events in sequence order from an empty state. Each event is also checked against
    the state it applies to: its identifiers_before and the old values of its attribute changes
    must be what the replay holds (so the log is consistent with itself, in this order), a
    MERGED event's merged_person must be the merged person as replayed (R61), CREATED must be
    for a new cio_id, and every other kind for a living one."""

    people: dict[str, Replayed] = field(default_factory=dict)
    after: dict[int, tuple[str, tuple[Any, ...] | None]] = field(default_factory=dict)  # sequence -> (cio_id, state)
    problems: list[str] = field(default_factory=list)
    ever: set[str] = field(default_factory=set)
    kinds: dict[str, int] = field(default_factory=dict)

    def apply_all(self, events: list[pb.PersonEvent]) -> "Replay":
        for event in events:
            self.apply(event)
        return self

    def _problem(self, event: pb.PersonEvent, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(f"#{event.sequence} {KIND.Name(event.kind)} {event.cio_id} ({event.rpc}): {text}")

    def _check_before(self, event: pb.PersonEvent, person: Replayed) -> None:
        if event.HasField("identifiers_before") and identifiers(event.identifiers_before) != (person.id, person.email):
            self._problem(event, f"identifiers_before {identifiers(event.identifiers_before)} but the replay has {(person.id, person.email)}")
        for change in event.attribute_changes:
            old = value_of(change, "old_value")
            held = person.attributes.get(change.name, ABSENT)
            if old != held:
                self._problem(event, f"attribute {change.name}: old value {old!r} but the replay has {held!r}")

    @staticmethod
    def _apply_changes(event: pb.PersonEvent, person: Replayed) -> None:
        for change in event.attribute_changes:
            new = value_of(change, "new_value")
            if new is ABSENT:
                person.attributes.pop(change.name, None)
            else:
                person.attributes[change.name] = new

    def apply(self, event: pb.PersonEvent) -> None:
        kind = KIND.Name(event.kind).removeprefix("PERSON_EVENT_KIND_")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        cio = event.cio_id
        if kind == "CREATED":
            if cio in self.ever:
                self._problem(event, "CREATED for a cio_id seen before")
            if event.HasField("identifiers_before"):
                self._problem(event, "CREATED with identifiers_before")
            person = Replayed(*identifiers(event.identifiers_after), {})
            for change in event.attribute_changes:
                if change.HasField("old_value"):
                    self._problem(event, f"CREATED with an old value for {change.name}")
            self._apply_changes(event, person)
            self.people[cio] = person
            self.ever.add(cio)
            self.after[event.sequence] = (cio, person.key())
            return
        person = self.people.get(cio)
        if person is None:
            self._problem(event, "for a cio_id that does not exist in the replay")
            person = Replayed(None, None, {})
            self.people[cio] = person
        if kind in ("DELETED", "ERASED"):
            if kind == "DELETED":
                if not event.HasField("identifiers_before"):
                    self._problem(event, "DELETED without identifiers_before")
                self._check_before(event, person)
                if event.HasField("identifiers_after"):
                    self._problem(event, "DELETED with identifiers_after")
            del self.people[cio]
            self.after[event.sequence] = (cio, None)
            return
        if kind not in ("UPDATED", "MERGED"):
            self._problem(event, f"unexpected kind {kind} (no explicit merge or undo in this load)")
            return
        if not event.HasField("identifiers_before") or not event.HasField("identifiers_after"):
            self._problem(event, "without identifiers_before or identifiers_after")
        self._check_before(event, person)
        if kind == "MERGED":
            gone = self.people.pop(event.merged_cio_id, None)
            if not event.merged_cio_id or event.merged_cio_id == cio:
                self._problem(event, f"MERGED with merged_cio_id {event.merged_cio_id!r}")
            elif gone is None:
                self._problem(event, f"MERGED {event.merged_cio_id}, who does not exist in the replay")
            elif person_key(event.merged_person) != gone.key():
                self._problem(event, f"merged_person {person_key(event.merged_person)} but the replay has {gone.key()} (R61)")
            elif event.merged_person.cio_id != event.merged_cio_id:
                self._problem(event, "merged_person.cio_id is not merged_cio_id")
        elif event.merged_cio_id:
            self._problem(event, "UPDATED with a merged_cio_id")
        person.id, person.email = identifiers(event.identifiers_after)
        self._apply_changes(event, person)
        if kind == "UPDATED" and not event.attribute_changes and identifiers(event.identifiers_before) == identifiers(event.identifiers_after):
            self._problem(event, "UPDATED that changes nothing (R50: a call that changes nothing appends nothing)")
        self.after[event.sequence] = (cio, person.key())


# --------------------------------------------------------------------------- a reader in a process of its own


class ReaderProcess:
    """A FeedReader in a Python process of its own (`python -m tests.races.feed`), so that the
    time an event arrives is not delayed by the load's client threads (one GIL): the lag it
    measures is the service's. `finish(target)` returns a FeedReader (not running) holding what
    the process received; time.monotonic() is the system's, comparable across processes."""

    def __init__(self, address: str, workspace: str, *, name: str = "feed", pause: float = 0.05):
        self.name = name
        self.address, self.workspace, self.pause = address, workspace, pause
        # stderr to a file, not a pipe: nobody reads it while the process runs, and a full pipe
        # would block the process's writes (gRPC's logging among them).
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.races.feed", address, workspace, name, str(pause)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        self.reader: FeedReader | None = None

    def wait_open(self, timeout: float) -> bool:
        """Until the process has opened its first stream."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return bool(ready) and self.proc.stdout.readline().strip() == "open"

    def finish(self, target: int, timeout: float) -> tuple[bool, FeedReader]:
        assert self.proc.stdin is not None
        try:
            out, _ = self.proc.communicate(f"{target} {timeout}\n", timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        assert self.proc.returncode == 0, f"{self.name} exited with {self.proc.returncode}:\n{self.stderr_tail()}"
        data = json.loads(out.strip().splitlines()[-1])
        reader = FeedReader(self.address, self.workspace, name=self.name)
        for item in data["received"]:
            event = pb.PersonEvent.FromString(base64.b64decode(item["e"]))
            reader.received.append(Received(event, item["at"], item["stream"], item["live"]))
        reader.ends = [StreamEnd(**end) for end in data["ends"]]
        reader.opened = data["opened"]
        reader.failed_opens = data["failed_opens"]
        reader.last = reader.received[-1].event.sequence if reader.received else 0
        if data["error"]:
            reader.error = RuntimeError(data["error"])
        self.reader = reader
        return data["reached"], reader

    def stderr_tail(self, chars: int = 3000) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-chars:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.stderr.close()


def _child(address: str, workspace: str, name: str, pause: float) -> None:
    reader = FeedReader(address, workspace, name=name, pause=pause).start()
    wait_until(lambda: bool(reader.opened), 30.0, 0.01)
    print("open", flush=True)
    target, timeout = sys.stdin.readline().split()
    reached = reader.finish(int(target), float(timeout))
    print(json.dumps({
        "reached": reached,
        "received": [
            {"e": base64.b64encode(r.event.SerializeToString()).decode(), "at": r.at, "stream": r.stream, "live": r.live}
            for r in reader.received
        ],
        "ends": [vars(e) for e in reader.ends],
        "opened": reader.opened,
        "failed_opens": reader.failed_opens,
        "error": repr(reader.error) if reader.error else None,
    }), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
