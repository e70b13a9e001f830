"""A pytest plugin that runs the end-to-end suite (or any suite built on tests/conftest.py's
fixtures) unchanged against a Citus cluster:

    CITUS_URL=postgresql://postgres@127.0.0.1:5441/postgres \\
      .venv/bin/python -m pytest --confcutdir=tests/e2e -p tests.citus.e2e_plugin tests/e2e/test_identify.py

`--confcutdir=tests/e2e` keeps pytest from loading tests/conftest.py (whose database fixtures
would win over a plugin's); this plugin provides the same fixtures instead: tests/conftest.py's
own for the server and its stubs, and tests/citus/conftest.py's for the database (a database of
the run's own on every node, migrated and distributed by workspace_id). The service's
connections use DB_PLAN_CACHE_MODE=auto (set by tests/citus/conftest.py on import)."""

from __future__ import annotations

from tests.citus.conftest import admin_url, citus_url, citus_workers, database_url, engine  # noqa: F401
from tests.conftest import (  # noqa: F401
    channel,
    make_workspace,
    people_rows,
    server,
    start_server,
    stub,
    workspace,
    workspace_stub,
)
