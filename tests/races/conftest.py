"""Fixtures of the race and fault suites: the real server (`python -m service.runtime.server --workers 2`)
as a subprocess on free ports, and the figures each test reports.

The figures of every test are printed (visible with -s), shown in pytest's terminal summary, added
to the JUnit XML as a property, and appended to races-summary.json in the repository root
(git-ignored): a JSON list with one entry per test and run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from tests.races.harness import REPO, ServerProcess, dumps, summary_line

SUMMARY_FILE = REPO / "races-summary.json"
_FIGURES: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture(scope="module")
def race_server(engine: sa.Engine, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server with 2 worker processes on the test run's database (migrated by the
    `engine` fixture), stopped with SIGTERM at the end."""
    log = tmp_path_factory.mktemp("race-server") / "server.log"
    server = ServerProcess(database_url, log, workers=2, grace=5.0).start()
    try:
        yield server
        code, seconds = server.terminate()
        assert code == 0, f"the server exited with {code} on SIGTERM; log:\n{server.log_tail()}"
    finally:
        server.stop()


@pytest.fixture
def figures(request: pytest.FixtureRequest, record_property: Callable[[str, Any], None]) -> Callable[[dict[str, Any]], None]:
    """Reports a test's figures: print, JUnit property, terminal summary, races-summary.json."""

    def report(values: dict[str, Any]) -> None:
        name = request.node.name
        values = {**values, "test": request.node.nodeid}
        print("\n" + summary_line(name, values))
        record_property("figures", dumps(values))
        _FIGURES.append((name, values))

    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("race and fault figures")
    for name, values in _FIGURES:
        terminalreporter.write_line(summary_line(name, values))
    run = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "database": "citus" if os.environ.get("CITUS_URL") else "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
    }
    try:
        existing = json.loads(SUMMARY_FILE.read_text()) if SUMMARY_FILE.exists() else []
        if not isinstance(existing, list):
            existing = []
    except (OSError, ValueError):
        existing = []
    existing.extend({**run, **values} for _, values in _FIGURES)
    SUMMARY_FILE.write_text(json.dumps(existing, indent=1, sort_keys=True, default=str) + "\n")
    terminalreporter.write_line(f"figures appended to {SUMMARY_FILE.relative_to(REPO)}")
