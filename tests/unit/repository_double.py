"""What the repository returns for a lookup, over an in-memory list of people: the rules-core
tests run the lookup and the decision as the service does, without a database. Who a lookup
finds is the rules core's definition (identifiers.found), not a re-implementation."""

from __future__ import annotations

from service.domain import Person, Settings
from service.rules.decisions import Lookup
from service.rules.identifiers import found


def stored(settings: Settings, lookup: Lookup, people: list[Person]) -> list[Person]:
    """The people the lookup names in the workspace's mode."""
    return found(settings.mode, lookup, people)
