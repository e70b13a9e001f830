"""`python -m bench.bulk_import --quick` end to end against the test database, so that the bulk
benchmark runs in CI and cannot rot: both imports apply every row, the export returns every
person, and the JSON reports every figure issue 10 asks for (not their values: the machine is
shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_bulk_import_benchmark_reports_every_figure(database_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench-results"
    done = subprocess.run(
        [sys.executable, "-m", "bench.bulk_import", "--quick", "--rows", "2500", "--out", str(out),
         "--database-url", database_url],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [json_path] = out.glob("bulk_import-*.json")
    results = json.loads(json_path.read_text())
    for phase in ("import_new", "import_updates"):
        figures = results[phase]
        assert figures["rows_applied"] == 2500 and figures["rows_refused"] == 0
        assert figures["rows_per_second"] > 0 and figures["server_cpu_us_per_row"] > 0
        assert figures["online_during"]["calls"] > 0 and not figures["online_during"]["errors"]
    assert results["export"]["people"] == 2500
    assert results["server_rss_peak_mb"] > 0
    assert set(results["verdict"]) == {"import_new_s", "import_updates_s", "export_s", "server_rss_mb", "online_p99_ms"}
