"""`python -m bench.change_log --quick` end to end against the test database, so that the change
log's cost benchmark runs in CI and cannot rot: both servers (the old commit's from a worktree,
this checkout's) serve the same workspace, the runs make calls without errors, the watchers
receive the events, and the JSON reports every figure issue 8 asks for (not their values: the
machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_old_commit() -> bool:
    done = subprocess.run(["git", "cat-file", "-e", "f3ab5ca^{commit}"], cwd=ROOT, capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _has_old_commit(), reason="needs the git history (commit f3ab5ca)")
def test_quick_change_log_benchmark_reports_every_figure(database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench-results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.change_log", "--quick", "--seconds", "1", "--idle-calls", "20",
         "--out", str(out), "--database-url", database_url],
        cwd=ROOT,
        env={**os.environ, "BENCH_WORKERS": "2"},
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    [json_path] = out.glob("change_log-*.json")
    results = json.loads(json_path.read_text())
    newest = max(p.name.split("_")[0] for p in (ROOT / "service" / "db" / "migrations" / "versions").glob("0*.py"))
    assert results["schema_version"] == newest  # both servers ran on the current schema
    # Each server ran its own code: the old one from the worktree, without a feed or events.
    code = results["code"]
    assert "/service/" in code["without_log"]["service"] and not code["without_log"]["service"].startswith(str(ROOT))
    assert code["without_log"]["commit"].startswith("f3ab5ca")
    # Committed code, from a worktree of HEAD (HEAD may have moved on since: others commit).
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", code["with_log"]["commit"], "HEAD"], cwd=ROOT)
    assert ancestor.returncode == 0
    assert code["with_log"]["uncommitted_changes_in_service_or_generated"] is False
    for name in ("without_log", "with_log"):
        tree = Path(code[name]["service"]).parents[1]
        assert tree != ROOT and not tree.exists() and str(tree) not in _worktrees()  # removed at the end
    checks = results["server_checks"]
    assert checks["without_log"]["watch_changes"] == "UNIMPLEMENTED"
    assert checks["without_log"]["events_written_by_one_identify"] == 0
    assert checks["with_log"]["events_written_by_one_identify"] == 1
    assert results["old_code_wrote_no_events"] is True

    labels = [r["label"] for r in results["runs"]]
    assert labels == ["without_log_1", "with_log_1", "with_log_watchers"]
    for run in results["runs"]:
        assert run["calls"] > 0 and run["errors"] == {}, run
        assert set(run["outcomes"]) == {"UPDATED"}, run["outcomes"]
        for key in ("server_cpu_ms_per_call", "postgres_backends_cpu_ms_per_call", "machine_busy"):
            assert run[key] > 0, (run["label"], key)
        assert (run["events_written"] > 0) == (run["server"] == "with_log"), run["label"]

    summary = results["summary"]
    assert summary["throughput_ratio"] > 0
    for name in ("without_log", "with_log"):
        assert summary[name]["server_cpu_ms_per_call"] > 0
        assert summary[name]["postgres_backends_cpu_ms_per_call"] > 0
    watchers = summary["watchers"]
    assert watchers["watchers"] == 5
    assert watchers["caught_up"] is True
    assert watchers["gaps"] == 0 and watchers["duplicates"] == 0 and not watchers["errors"]
    assert watchers["server_cpu_ms_per_call"] > 0 and watchers["server_rss_mb_total_max"] > 0
    assert watchers["server_uss_mb_open_idle"]
    lag = watchers["lag"]
    assert lag["events"] > 0 and lag["per_watcher_min"] > 0
    assert lag["p50_ms"] <= lag["p95_ms"] <= lag["p99_ms"] <= lag["max_ms"]
    idle = summary["idle_lag"]
    assert idle["events"] == 20
    assert 0 < idle["p50_ms"] <= idle["p99_ms"]
    assert set(summary["targets_met"]) == {"throughput_ratio_ge_0.85", "idle_lag_p99_le_100ms", "peak_lag_p99_le_1s"}
    assert "throughput with/without the log" in done.stdout and "idle lag" in done.stdout


def _worktrees() -> str:
    return subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
