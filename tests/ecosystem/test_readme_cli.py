"""Every command of the README's "Bulk import and export" section, run as written (but for the
workspace's name and the server's address) in bash, in a folder of its own, against the test
server: each must exit 0 and print, in order, the lines shown under it as `# -> `, "..."
standing for any text."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from service.runtime.codegen import PROJECT_ROOT

SECTION = "## Bulk import and export (§11)"


def _steps() -> list[tuple[str, list[str]]]:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    block = section[section.index("```sh\n") + 6 : section.index("```\n", section.index("```sh\n") + 6)]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("# -> "):
            steps[-1][1].append(line[len("# -> ") :])
        elif line and not line.startswith("#"):
            steps.append((line, []))
    return steps


def _matches(pattern: str, line: str) -> bool:
    regex = ".*".join(re.escape(part) for part in pattern.split("..."))
    return re.fullmatch(regex, line) is not None


def test_the_section_has_commands_with_outputs():
    steps = _steps()
    assert any(command.startswith("identity-service import") for command, _ in steps)
    assert sum(len(expected) for _, expected in steps) >= 8


def test_every_command_of_the_bulk_section_runs_as_written(server, tmp_path: Path):
    workspace = f"readme-{secrets.token_hex(5)}"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "IDENTITY_ADDRESS": f"127.0.0.1:{server.port}",
    }
    exports: list[str] = []
    for command, expected in _steps():
        command = command.replace("shop", workspace)
        if command.startswith("export "):
            exports.append(command)
            continue
        done = subprocess.run(
            ["bash", "-c", "\n".join([*exports, command])], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        lines = done.stdout.splitlines()
        at = 0
        for pattern in expected:
            while at < len(lines) and not _matches(pattern, lines[at]):
                at += 1
            assert at < len(lines), f"{command}: no line matches {pattern!r} (in order) in:\n{done.stdout}"
            at += 1
