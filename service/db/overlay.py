"""The people of one import batch in memory (R80): loaded once, for every row's lookup at once,
then changed by each row's decision in file order, so that each row sees the rows before it as
it would have seen them in the database. It answers a Lookup as LOAD_SQL does (by cio_id and by
the unique keys of service.db.keys, sorted by cio_id) and, at the end, gives the batch's net
writes for the bulk statements (service.db.bulk). It decides nothing: the rules core does."""

from __future__ import annotations

from dataclasses import dataclass

from service.db.keys import Keys, keys_for
from service.domain import Mode, Person
from service.rules.decisions import Decision, Lookup, Write
from service.rules.validation import email_key


@dataclass
class NetWrites:
    """What a batch changed, person by person, against the people as loaded."""

    deleted: list[str]  # cio_ids of loaded people the batch deleted
    updated: list[tuple[Person, Keys]]  # loaded people whose row changed
    rekeyed: list[str]  # cio_ids among `updated` whose unique keys changed (cleared first)
    inserted: list[tuple[Person, Keys]]  # people the batch created (and did not delete)


class BatchPeople:
    def __init__(self, mode: Mode, loaded: list[Person]):
        self.mode = mode
        self.loaded: dict[str, tuple[Person, Keys]] = {}
        self.current: dict[str, tuple[Person, Keys] | None] = {}
        self.by_id: dict[str, str] = {}
        self.by_email: dict[str, str] = {}
        for person in loaded:
            keys = keys_for(mode, person)
            self.loaded[person.cio_id] = (person, keys)
            self._put(person, keys)

    def _put(self, person: Person, keys: Keys) -> None:
        self.current[person.cio_id] = (person, keys)
        if keys.id_key is not None:
            self.by_id[keys.id_key] = person.cio_id
        if keys.email_key is not None:
            self.by_email[keys.email_key] = person.cio_id

    def _drop(self, cio_id: str) -> None:
        entry = self.current.get(cio_id)
        if entry is None:
            return
        _, keys = entry
        if keys.id_key is not None and self.by_id.get(keys.id_key) == cio_id:
            del self.by_id[keys.id_key]
        if keys.email_key is not None and self.by_email.get(keys.email_key) == cio_id:
            del self.by_email[keys.email_key]
        self.current[cio_id] = None

    def find(self, lookup: Lookup) -> list[Person]:
        """Who `lookup` names now, as LOAD_SQL would find them: by cio_id, by id key, by the
        key of an email; each once, in cio_id order."""
        named: set[str] = set()
        for cio_id in lookup.cio_ids:
            if self.current.get(cio_id) is not None:
                named.add(cio_id)
        for value in lookup.ids:
            cio_id = self.by_id.get(value)
            if cio_id is not None:
                named.add(cio_id)
        for email in lookup.emails:
            cio_id = self.by_email.get(email_key(email))
            if cio_id is not None:
                named.add(cio_id)
        return [self.current[cio_id][0] for cio_id in sorted(named)]  # type: ignore[index]

    def apply(self, decision: Decision) -> None:
        """A decision's writes, in the order the repository stages them: the deleted first."""
        for cio_id in decision.deleted:
            self._drop(cio_id)
        person = decision.person
        if decision.write == Write.DELETE:
            self._drop(person.cio_id)
        elif decision.write in (Write.INSERT, Write.UPDATE):
            self._drop(person.cio_id)
            self._put(person, keys_for(self.mode, person))

    def net_writes(self) -> NetWrites:
        deleted, updated, rekeyed, inserted = [], [], [], []
        for cio_id, entry in self.current.items():
            before = self.loaded.get(cio_id)
            if entry is None:
                if before is not None:
                    deleted.append(cio_id)
            elif before is None:
                inserted.append(entry)
            elif entry[0] != before[0]:
                updated.append(entry)
                if entry[1].id_key != before[1].id_key or entry[1].email_key != before[1].email_key:
                    rekeyed.append(cio_id)
        return NetWrites(deleted, updated, rekeyed, inserted)
