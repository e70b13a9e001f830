"""`python -m bench.fairness --quick` end to end against the test database, so that the fairness
benchmark runs in CI and cannot rot: the flooder is refused past its limit, the calm tenant is
served without errors, and the JSON has the figures. The ratio itself is a figure of the
benchmark (README, Benchmark), not asserted here: a shared machine moves it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_fairness_benchmark_reports_its_figures(database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench-results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.fairness", "--quick", "--seconds", "1", "--out", str(out),
         "--database-url", database_url],
        cwd=ROOT, env={**os.environ, "BENCH_WORKERS": "2"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ratio" in done.stdout
    [path] = out.glob("fairness-*.json")
    results = json.loads(path.read_text())
    assert results["config"]["workers"] == 2
    assert results["calm_peak"]["ok"] > 0 and results["calm_peak"]["errors"] == {}
    for run in results["calm_flooded"]:
        assert run["ok"] > 0 and run["errors"] == {}, run
    # Without the flooder's limits the server may be at its calls in flight, for both tenants.
    unlimited = results["calm_flooded_without_limits"]
    assert unlimited["ok"] > 0 and set(unlimited["errors"]) <= {"RESOURCE_EXHAUSTED"}, unlimited
    for run in results["calm_alone"]:
        assert run["ok"] > 0 and run["errors"] == {}
    [flood] = results["flood"]
    # Ten times its limit: most of it refused, and only that.
    assert set(flood["errors"]) == {"RESOURCE_EXHAUSTED"} and flood["errors"]["RESOURCE_EXHAUSTED"] > flood["ok"]
    assert set(results["flood_without_limits"]["errors"]) <= {"RESOURCE_EXHAUSTED"}
    assert results["p99_ratio"] > 0 and results["p99_ratio_without_limits"] > 0
