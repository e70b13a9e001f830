"""Every command of the README's walk-through, run as written (but for the server's address) with
the real grpcurl 1.8.6 against a real server process, its exit code and output checked against
the `# ->` lines the README shows under it.

The walk-through's code blocks are read as a shell user reads them: a command may continue over
lines (a trailing backslash or an open quote); `# -> ` lines after a command are its expected
output, continued by lines starting with `#    `. An expected output that is JSON must equal
grpcurl's output, "..." standing for any value; otherwise each `# -> ` line must match a line of
the output, in order, "..." standing for any text. A command whose expected output is a
google.rpc.Status (`-format-error`) must exit with 64 + its code, as grpcurl does; every other
command must exit 0. Commands that are not grpcurl (`csv=$(...)`) run before each later one."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.runtime.codegen import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
SECTION = "## A walk-through with grpcurl"
README_ADDRESS = "127.0.0.1:50051"
ANY = "..."


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)

    @property
    def is_grpcurl(self) -> bool:
        return self.command.startswith("grpcurl ")

    @property
    def rpc(self) -> str:
        return self.command.split()[-1]


def walkthrough() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def _complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def parse_steps(section: str) -> list[Step]:
    steps: list[Step] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        pending: list[str] = []
        in_expectation = False
        for line in block.splitlines():
            if pending:
                pending.append(line)
                if _complete("\n".join(pending)):
                    steps.append(Step("\n".join(pending)))
                    pending = []
            elif line.startswith("# -> ") and steps:
                steps[-1].expected.append(line[len("# -> ") :])
                in_expectation = True
            elif line.startswith("#    ") and in_expectation:
                steps[-1].expected[-1] += " " + line[len("#    ") :].strip()
            elif not line.strip() or line.startswith("#"):
                in_expectation = False
            else:
                in_expectation = False
                pending = [line]
                if _complete(line):
                    steps.append(Step(line))
                    pending = []
        assert not pending, f"unfinished command in the README: {pending}"
    return steps


def matches(expected: Any, actual: Any) -> bool:
    """`expected` as the README shows it: "..." is any value; objects have the same keys."""
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(value, actual[key]) for key, value in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual))
        )
    return type(expected) is type(actual) and expected == actual


def _text_pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.strip().split(ANY)))


def text_matches(expected_lines: list[str], output: str) -> bool:
    lines = iter(line.strip() for line in output.splitlines())
    return all(any(_text_pattern(e).fullmatch(line) for line in lines) for e in expected_lines)


def expected_json(step: Step) -> Any | None:
    if not step.expected or not step.expected[0].lstrip().startswith(("{", "[")):
        return None
    return json.loads(" ".join(step.expected))


def expected_exit_code(step: Step) -> int:
    shown = expected_json(step)
    if isinstance(shown, dict) and isinstance(shown.get("code"), int) and "details" in shown:
        return 64 + shown["code"]  # grpcurl's exit code for a status
    return 0


STEPS = parse_steps(walkthrough())


def test_the_walkthrough_covers_the_contract():
    rpcs = {step.rpc.rsplit("/", 1)[-1] for step in STEPS if step.is_grpcurl and "/" in step.rpc}
    assert {
        "Check", "Identify", "UpdateIdentifier", "DeleteIdentifier", "GetPerson", "GetSettings",
        "ImportPeople", "CreateWorkspace", "UpdateSettings",
    } <= rpcs
    assert sum(step.is_grpcurl for step in STEPS) >= 15
    assert sum(bool(step.expected) for step in STEPS) >= 12
    # What issue 12 found wrong stays right: a FieldMask as grpcurl takes it, portable base64.
    commands = "\n".join(step.command for step in STEPS)
    assert '"update_mask": {"paths": ["identifier_mode"]}' in commands
    assert "base64 -w" not in commands
    for step in STEPS:
        if step.is_grpcurl:
            assert README_ADDRESS in step.command or "-proto " in step.command, step.command


def test_the_checks_of_this_file_can_fail():
    assert matches({"a": ANY, "b": [1]}, {"a": {"x": 1}, "b": [1]})
    assert not matches({"a": ANY}, {"a": 1, "b": 2})  # a key the README does not show
    assert not matches({"a": [1]}, {"a": [1, 2]})
    assert not matches({"n": 3}, {"n": "3"})
    assert text_matches(["a ... c", "d"], "x\n a b c \nd\n")
    assert not text_matches(["d", "a ... c"], "a b c\nd\n")  # in order
    step = parse_steps('```sh\ngrpcurl -d \'{"a":\n 1}\' x\n# -> {"code": 9,\n#    "details": []}\n```')[0]
    assert step.command == 'grpcurl -d \'{"a":\n 1}\' x' and expected_exit_code(step) == 73


def _run(step: Step, setup: list[str], address: str, path: str) -> subprocess.CompletedProcess[str]:
    script = "\n".join(["set -e", *setup, step.command.replace(README_ADDRESS, address)])
    return subprocess.run(
        ["bash", "-c", script], cwd=PROJECT_ROOT, env={"PATH": path, "HOME": "/tmp", "LC_ALL": "C.UTF-8"},
        capture_output=True, text=True, timeout=60,
    )


def test_every_readme_command_runs_as_shown(server_process, grpcurl_path):
    setup: list[str] = []
    failures: list[str] = []
    outputs: list[Any] = []
    for number, step in enumerate(STEPS, 1):
        if not step.is_grpcurl:
            setup.append(step.command)
            continue
        result = _run(step, setup, server_process.address, grpcurl_path)
        where = f"README command {number}:\n{step.command}\nexit {result.returncode}\n" \
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
            outputs.append(actual)
            if not matches(shown, actual):
                failures.append(f"{where}\nexpected (README):\n{json.dumps(shown, indent=2)}")
        elif step.expected:
            if not text_matches(step.expected, result.stdout):
                failures.append(f"{where}\nexpected lines (README): {step.expected}")
        elif not result.stdout.strip():
            failures.append(f"{where}\nexpected some output")
    assert not failures, "\n\n".join(failures)
    # "the same person": every call about Ada answered with one cio_id.
    ada = {
        out["person"]["cioId"]
        for out in outputs
        if isinstance(out, dict) and "ada@" in out.get("person", {}).get("email", "").lower()
    }
    assert len(ada) == 1, ada
