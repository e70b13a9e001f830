"""`python -m bench --quick` end to end against the test database, so that the benchmark runs in
CI and cannot rot: every scenario makes calls, none fails, the JSON and the chart are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = [
    "identify_existing", "identify_ids_only", "identify_emails_only", "identify_new", "identify_merge",
    "update_email", "get_person", "mix",
]  # fmt: skip
SHAPES = {"identify_existing": "both", "identify_ids_only": "ids", "identify_emails_only": "emails"}


@pytest.mark.slow
def test_quick_benchmark_runs_every_scenario_without_errors(database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench-results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--seconds", "1", "--out", str(out), "--database-url", database_url],
        cwd=ROOT,
        # Two server workers, whatever the machine: the multi-worker path, at a bounded cost.
        env={**os.environ, "BENCH_WORKERS": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    [json_path] = out.glob("bench-*.json")
    results = json.loads(json_path.read_text())
    assert results["config"]["workspace"].startswith("bench-")  # never a test's workspace
    workspaces = results["config"]["workspaces"]
    assert {shape: w["mode"] for shape, w in workspaces.items()} == {
        "ids": "ID_ONLY", "emails": "EMAIL_ONLY", "both": "EMAIL_OR_ID",
    }  # fmt: skip
    assert all(w["id"].startswith("bench-") for w in workspaces.values())
    for name in SCENARIOS:
        scenario = results["scenarios"][name]
        for run in ("peak", "half_peak"):
            assert scenario[run]["calls"] > 0, (name, run, scenario[run])
            assert scenario[run]["errors"] == {}, (name, run, scenario[run]["errors"])
            assert scenario[run]["latency_ms"]["p99"] > 0
    # The scenarios do what they say.
    for name in SHAPES:
        assert set(results["scenarios"][name]["peak"]["outcomes"]) == {"UPDATED"}, name
    assert set(results["scenarios"]["identify_new"]["peak"]["outcomes"]) == {"CREATED"}
    assert set(results["scenarios"]["identify_merge"]["peak"]["outcomes"]) == {"MERGED"}
    # A floor per shape: pgbench running the service's own statements on that shape's workspace.
    floors = results["floors"]
    assert {name: floor["shape"] for name, floor in floors.items()} == SHAPES
    for floor in floors.values():
        assert "skipped" in floor or (floor["pgbench"]["tps"] > 0 and floor["pgbench"]["failed"] == 0), floor
        if "skipped" not in floor:  # generated from the service's statements: the gate included
            assert "pg_advisory_xact_lock_shared" in Path(floor["script"]).read_text()
    assert results["config"]["server_workers"] == 2
    assert all(p["max_mb"] > 0 for p in results["server_rss"]["processes"])

    [png_path] = out.glob("bench-*.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
