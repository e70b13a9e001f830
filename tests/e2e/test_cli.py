"""The `identity-service` command line against the real test server (click's CliRunner)."""

from __future__ import annotations

import csv
import io
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli


@pytest.fixture
def run(server):
    address = f"127.0.0.1:{server.port}"

    def invoke(*args: str):
        runner = CliRunner()
        return runner.invoke(cli, [*args, "--address", address], catch_exceptions=False)

    return invoke


def new_workspace_id() -> str:
    return f"cli-{secrets.token_hex(6)}"


def test_workspace_create_show_update(run):
    ws = new_workspace_id()
    created = run("workspace", "create", ws, "--mode", "id-only")
    assert created.exit_code == 0, created.output
    assert "created" in created.output and "identifier_mode:           ID_ONLY" in created.output
    assert "auto_merge:                true" in created.output  # the other settings keep their defaults

    shown = run("workspace", "show", ws, "--json")
    assert shown.exit_code == 0, shown.output
    settings = json.loads(shown.output)
    assert settings["workspace_id"] == ws and settings["identifier_mode"] == "IDENTIFIER_MODE_ID_ONLY"
    assert settings["auto_merge"] is True and settings["email_updatable_by_id"] is True

    updated = run("workspace", "update", ws, "--no-auto-merge", "--json")
    assert updated.exit_code == 0, updated.output
    after = json.loads(updated.output)
    assert after["auto_merge"] is False and after["identifier_mode"] == "IDENTIFIER_MODE_ID_ONLY"

    mode = run("workspace", "update", ws, "--mode", "email-or-id")
    assert mode.exit_code == 0, mode.output
    assert "identifier_mode:           EMAIL_OR_ID" in mode.output and "auto_merge:                false" in mode.output

    nothing = run("workspace", "update", ws)
    assert nothing.exit_code == 2 and "at least one setting" in nothing.output


def test_person_identify_get_delete_human_and_json(run, workspace):
    made = run("person", "identify", "-w", workspace, "--id", "u1", "--email", "u1@example.com",
               "--attr", "plan=pro", "--attr", "seats=3", "--attr", 'code="007"', "--attr", "vip=true")
    assert made.exit_code == 0, made.output
    assert "outcome:    CREATED" in made.output and "id:         u1" in made.output

    again = run("person", "identify", "-w", workspace, "--id", "u1", "--attr", "plan=team", "--json")
    assert again.exit_code == 0, again.output
    body = json.loads(again.output)
    assert body["outcome"] == "IDENTIFY_OUTCOME_UPDATED"
    person = body["person"]
    assert person["attributes"] == {"plan": "team", "seats": 3, "code": "007", "vip": True}
    cio_id = person["cio_id"]

    got = run("person", "get", "-w", workspace, "--email", "U1@example.com")
    assert got.exit_code == 0, got.output
    assert f"cio_id:     {cio_id}" in got.output and '"plan": "team"' in got.output

    got_json = run("person", "get", "-w", workspace, "--cio-id", cio_id, "--json")
    assert got_json.exit_code == 0 and json.loads(got_json.output)["id"] == "u1"

    deleted = run("person", "delete", "-w", workspace, "--id", "u1")
    assert deleted.exit_code == 0 and deleted.output.strip() == f"deleted {cio_id}"

    gone = run("person", "get", "-w", workspace, "--cio-id", cio_id)
    assert gone.exit_code == 2
    assert gone.stdout == ""
    lines = gone.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: NOT_FOUND ") and ": " in lines[0], gone.stderr


def test_refusals_are_one_line_with_code_and_reason(run, workspace):
    ws = new_workspace_id()
    assert run("workspace", "create", ws).exit_code == 0
    exists = run("workspace", "create", ws)
    assert exists.exit_code == 2
    assert exists.stderr.count("\n") == 1 and exists.stderr.startswith("error: ALREADY_EXISTS "), exists.stderr

    bad = run("person", "identify", "-w", workspace, "--email", "not an email")
    assert bad.exit_code == 2
    line = bad.stderr.strip()
    assert "\n" not in line and line.startswith("error: INVALID_ARGUMENT "), line

    two_refs = run("person", "get", "-w", workspace, "--id", "a", "--email", "a@example.com")
    assert two_refs.exit_code == 2 and "exactly one of" in two_refs.output


def test_unreachable_server_exits_3():
    result = CliRunner().invoke(cli, ["workspace", "show", "w", "--address", "127.0.0.1:1", "--timeout", "2"])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_export_jsonl_and_csv(run, workspace):
    for n in range(3):
        assert run("person", "identify", "-w", workspace, "--id", f"e{n}", "--attr", f"n={n}").exit_code == 0
    jsonl = run("export", "--workspace", workspace, "--format", "jsonl")
    assert jsonl.exit_code == 0, jsonl.output
    people = [json.loads(line) for line in jsonl.output.splitlines()]
    assert sorted(p["id"] for p in people) == ["e0", "e1", "e2"]
    assert [p["cio_id"] for p in people] == sorted(p["cio_id"] for p in people)

    as_csv = run("export", "--workspace", workspace, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert list(rows[0]) == ["cio_id", "id", "email", "n"]
    assert sorted((r["id"], r["n"]) for r in rows) == [("e0", "0"), ("e1", "1"), ("e2", "2")]


def test_watch_until_caught_up(run, workspace):
    assert run("person", "identify", "-w", workspace, "--id", "w1").exit_code == 0
    assert run("person", "identify", "-w", workspace, "--id", "w1", "--attr", "a=1").exit_code == 0
    result = run("watch", "--workspace", workspace, "--until-caught-up")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert [e["kind"] for e in events] == ["PERSON_EVENT_KIND_CREATED", "PERSON_EVENT_KIND_UPDATED"]
    first = int(events[0]["sequence"])
    after = run("watch", "--workspace", workspace, "--after", str(first), "--until-caught-up")
    assert [json.loads(line)["kind"] for line in after.output.splitlines()] == ["PERSON_EVENT_KIND_UPDATED"]


@pytest.mark.parametrize(
    "command",
    [
        [], ["workspace"], ["workspace", "create"], ["workspace", "show"], ["workspace", "update"],
        ["person"], ["person", "get"], ["person", "identify"], ["person", "delete"], ["export"], ["watch"],
    ],
)
def test_help_on_each_command(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    if command[-1:] in (["create"], ["show"], ["update"], ["get"], ["identify"], ["delete"], ["export"], ["watch"]):
        assert "--address" in result.output and "--json" in result.output and "Exit codes" in result.output


def test_serve_and_migrate_help_show_the_servers_flags():
    serve = CliRunner().invoke(cli, ["serve", "--help"])
    assert serve.exit_code == 0, serve.output
    assert "Run the gRPC server" in serve.output and "--listen" in serve.output and "--database-url" in serve.output
    migrate = CliRunner().invoke(cli, ["migrate", "--help"])
    assert migrate.exit_code == 0 and "--migrate-only" in migrate.output


def test_migrate_runs_the_servers_migrate_only(database_url):
    result = CliRunner().invoke(cli, ["migrate", "--database-url", database_url, "--log-level", "WARNING"])
    assert result.exit_code == 0, result.output


def test_api_key_is_never_printed(run):
    secret = "sekrit-" + secrets.token_hex(8)
    result = run("workspace", "show", "nope-" + secrets.token_hex(3), "--api-key", secret)
    assert secret not in result.output


def test_installed_entry_point():
    exe = Path(sys.executable).parent / "identity-service"
    if not exe.exists():
        pytest.skip("identity-service is not installed (pip install -e .)")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "workspace" in result.stdout and "Exit codes" in result.stdout


def test_workspace_fair_share_limits(run):
    ws = new_workspace_id()
    created = run("workspace", "create", ws, "--max-concurrent-calls", "3")
    assert created.exit_code == 0, created.output
    assert "max_calls_per_second:      server default" in created.output
    assert "max_concurrent_calls:      3" in created.output
    updated = run("workspace", "update", ws, "--max-calls-per-second", "50")
    assert updated.exit_code == 0, updated.output
    assert "max_calls_per_second:      50" in updated.output and "max_concurrent_calls:      3" in updated.output
    refused = run("workspace", "update", ws, "--max-calls-per-second", "-1")
    assert refused.exit_code == 2 and "INVALID_ARGUMENT INVALID_LIMIT" in refused.output
