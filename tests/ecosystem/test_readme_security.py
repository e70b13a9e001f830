"""The README's Security commands, run as written (but for the server's address) against a real
server process started with REQUIRE_API_KEYS=1 on a database of its own, with the commands'
outputs checked against the README's `# ->` lines (as test_readme_commands does for the
walk-through). An assignment (`NAME=$(...)`) runs before every later command."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from service.runtime.codegen import PROJECT_ROOT
from tests.ecosystem.conftest import ServerProcess, _free_port, is_serving
from tests.ecosystem.test_readme_commands import (
    README, README_ADDRESS, expected_exit_code, expected_json, matches, parse_steps, text_matches,
)

SECTION = "## Security"
ASSIGNMENT = re.compile(r"[A-Z_]+=")


def security_section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    return text[start : text.index("\n## ", start + len(SECTION))]


STEPS = parse_steps(security_section())


@pytest.fixture(scope="module")
def keyed_process(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    name = f"identity_sec_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    log = tmp_path_factory.mktemp("server") / "server.log"
    proc = None
    try:
        address = f"127.0.0.1:{_free_port()}"
        env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "API_KEYS_FILE")}
        env["REQUIRE_API_KEYS"] = "1"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.runtime.server", "--listen", address, "--database-url", url,
                 "--workers", "1", "--migrate", "--default-workspace", "default"],
                cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not is_serving(address):
            time.sleep(0.2)
        assert proc.poll() is None and is_serving(address), log.read_text()
        yield ServerProcess(address, proc, log), url
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_section_shows_the_key_commands():
    commands = [step.command for step in STEPS]
    assert any(c.startswith("ADMIN_KEY=$(identity-service keys create --admin") for c in commands)
    assert {"CreateApiKey", "GetSettings", "UpdateSettings"} <= {c.split("/")[-1] for c in commands if c.startswith("grpcurl")}
    assert "identity-service keys list" in commands


def test_every_security_command_runs_as_shown(keyed_process, grpcurl_path):
    server, url = keyed_process
    path = f"{Path(sys.executable).parent}{os.pathsep}{grpcurl_path}"  # identity-service and python3 of the venv
    env = {"PATH": path, "HOME": "/tmp", "LC_ALL": "C.UTF-8", "DATABASE_URL": url}
    setup: list[str] = []
    failures: list[str] = []
    secrets_seen: list[str] = []
    for number, step in enumerate(STEPS, 1):
        if ASSIGNMENT.match(step.command):
            setup.append(step.command)
            continue
        # The assignments' own messages (stderr) are not the command's output.
        quiet = ["{", *setup, "} 2>/dev/null"] if setup else []
        script = "\n".join(["set -e", *quiet, step.command.replace(README_ADDRESS, server.address)])
        result = subprocess.run(["bash", "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        where = f"README Security command {number}:\n{step.command}\nexit {result.returncode}\n" \
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        if result.returncode != expected_exit_code(step):
            failures.append(f"{where}\nexpected exit {expected_exit_code(step)}")
            continue
        shown = expected_json(step)
        if shown is not None:
            try:
                actual = json.loads(result.stdout.strip() or result.stderr.strip())
            except json.JSONDecodeError:
                failures.append(f"{where}\nexpected JSON")
                continue
            if not matches(shown, actual):
                failures.append(f"{where}\nexpected (README):\n{json.dumps(shown, indent=2)}")
            if isinstance(actual, dict) and actual.get("secret"):
                secrets_seen.append(actual["secret"])
        elif step.expected and not text_matches(step.expected, result.stdout):
            failures.append(f"{where}\nexpected lines (README): {step.expected}")
    assert not failures, "\n\n".join(failures)
    assert secrets_seen
    log = server.log.read_text()
    for secret in secrets_seen:
        assert secret.split("_", 2)[2] not in log
