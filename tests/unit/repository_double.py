"""What the repository returns for a lookup, over an in-memory list of people: the rules-core
tests run the lookup and the decision as the service does, without a database."""

from __future__ import annotations

from service.domain import Person, Settings
from service.db.keys import keys_for
from service.rules.changes import Lookup


def stored(settings: Settings, lookup: Lookup, people: list[Person]) -> list[Person]:
    """The people whose cio_id, id key or email key (per the mode) is looked up."""
    found = []
    for p in people:
        keys = keys_for(settings.mode, p)
        if (
            p.cio_id in lookup.cio_ids
            or (keys.id_key is not None and keys.id_key in lookup.id_keys)
            or (keys.email_key is not None and keys.email_key in lookup.email_keys)
        ):
            found.append(p)
    return found
