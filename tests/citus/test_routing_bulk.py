"""The import's set-based statements (service/db/bulk.py) on Citus, as test_routing.py checks
service/db/statements.py's: each run as the service runs it (prepared, DB_PLAN_CACHE_MODE=auto),
then its commands to the workers and its plan read back. Each must be sent as one command to the
workspace's worker, with nothing run on the coordinator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.db import bulk
from tests.citus import test_routing as routing_test
from tests.citus.test_routing import NOW, Sample, routing, run, sample  # noqa: F401  (a fixture)

BULK = {name[:-4].lower(): value for name, value in sorted(vars(bulk).items()) if name.endswith("_SQL") and isinstance(value, str)}
FIXED: dict[str, Any] = {
    "events": json.dumps([{"n": 1, "cio_id": "cbulk", "kind": "CREATED", "merged_cio_id": None, "undoes": None, "body": {}}]),
    "count": 1,
    "import_id": "imp1",
    "rows_done": 1,
    "applied": 1,
    "refused": 0,
    "finished": False,
    "statuses": [b"\x01"],
}


def _people(k: int) -> str:
    """One person, new on every execution (the insert's keys are unique)."""
    row = {
        "cio_id": f"cbulk{k}", "id": f"bulk{k}", "email": None, "email_norm": None, "id_key": f"bulk{k}",
        "email_key": None, "attributes": {}, "created_at": NOW.isoformat(), "updated_at": NOW.isoformat(),
    }  # fmt: skip
    return json.dumps([row])


class BulkSample(Sample):
    def value(self, name: str) -> Any:
        if name == "people":
            return _people(next(self.counter))
        if name == "rows":
            return [next(self.counter)]
        return FIXED[name] if name in FIXED else super().value(name)


@pytest.mark.parametrize("name", list(BULK))
def test_every_import_statement_is_a_single_task_router_plan(database_url: str, sample: Sample, name: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setitem(routing_test.STATEMENTS, name, BULK[name])
    # The events are numbered from the counter the statement before advanced, as the service does.
    monkeypatch.setitem(routing_test.STATEMENTS, "take_sequences", BULK["take_sequences"])
    monkeypatch.setitem(routing_test.RUNS_AFTER, "append_events", "take_sequences")
    outcome = run(database_url, name, BulkSample(sample.workspace_id, sample.cio_ids, sample.counter))
    result = routing(outcome)
    print(f"\n{name}: {result}")
    assert result.startswith("router ("), f"{name}: {result}\n{BULK[name]}"
