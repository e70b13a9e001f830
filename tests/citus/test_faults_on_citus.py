"""The fault suite (tests/races/test_faults.py) on the Citus cluster: the same three tests, their
code unchanged, with the database they stop being the cluster's coordinator (the Postgres the
service connects to) instead of a throwaway Postgres:

- the coordinator stopped and restarted under load: UNAVAILABLE while it is down, health
  NOT_SERVING, service back within the same limit, no acknowledged write lost;
- a server worker process killed with SIGKILL under load;
- SIGTERM under load, with four calls held by a row lock (on the worker that holds the shard,
  watched through citus_lock_waits: tests/lock_waits.py);
- and the change feed's fault test (tests/races/test_feed.py): readers resume without gap or
  duplicate through a server worker's SIGKILL and the coordinator's restart.

A worker node (a Citus worker, not a server process) stopped under load: test_worker_down.py."""

from __future__ import annotations

import secrets
from typing import Iterator

import pytest
import sqlalchemy as sa

from service.db.citus import distribute
from service.db.engine import create_engine, migrate
from tests.citus.conftest import create_citus_database, drop_citus_database
from tests.citus.nodes import Node, coordinator
from tests.races.conftest import figures  # noqa: F401  (a fixture)
from tests.races.test_feed import (  # noqa: F401  (the feed's fault test and its server, collected here)
    fault_server,
    test_feed_readers_resume_without_gap_or_duplicate_through_a_worker_kill_and_a_database_restart,
)
from tests.races.test_faults import (  # noqa: F401  (the tests and the fixtures they use, collected here)
    fault_workspace,
    start_server,
    test_database_stopped_and_restarted_under_load,
    test_sigterm_under_load_drains_and_exits,
    test_worker_killed_with_sigkill_under_load,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def throwaway_pg(citus_url: str, engine: sa.Engine) -> Iterator[Node]:
    """What the database restart test stops and starts: the coordinator (stop, start, accepts)."""
    node = coordinator(citus_url)
    assert node.accepts()
    try:
        yield node
    finally:
        node.ensure_started()  # a failed test must not leave the cluster without its coordinator
        # The session's engine (tests/citus/conftest.py) pooled connections the restart ended.
        engine.dispose()


@pytest.fixture(scope="module")
def fault_url(citus_url: str, citus_workers: list[tuple[str, int]], throwaway_pg: Node) -> Iterator[str]:
    name = f"identity_citus_faults_{secrets.token_hex(4)}"
    url = create_citus_database(citus_url, citus_workers, name)
    try:
        yield url
    finally:
        throwaway_pg.ensure_started()
        drop_citus_database(citus_url, citus_workers, name)


@pytest.fixture(scope="module")
def fault_engine(fault_url: str) -> Iterator[sa.Engine]:
    """Migrated and distributed, as an operator would (tests/citus/conftest.py's engine)."""
    engine = create_engine(fault_url, pool_size=4)
    migrate(engine)
    distribute(engine)
    yield engine
    engine.dispose()
