"""The README's "Clients in other languages", run: `make clients` (as the README shows it)
generates and builds the Go, TypeScript and Java clients of clients/, then each client's command
from the README runs its scenario against a real server process, and its output must be the
`# -> ` lines the README shows (create a workspace, identify with attributes, change the email,
read it back, remove the id, and a refusal whose google.rpc.ErrorInfo is read from the
grpc-status-details-bin trailer). The README's Go, TypeScript and Java examples must be taken
from the clients' sources, line for line, so that they are compiled and run too.

`make clients` installs what it needs (Debian packages through apt-get, npm packages into
clients/ts/node_modules) on first use: about a minute and a half on a new machine with the Debian
packages already there, a second when nothing changed."""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess

import pytest

from service.runtime.codegen import PROJECT_ROOT
from tests.ecosystem.conftest import ServerProcess

README = PROJECT_ROOT / "README.md"
SECTION = "## Clients in other languages"
README_ADDRESS = "127.0.0.1:50051"
README_WORKSPACE = "acme"
# Each language: the folder its README command names, and the source its README example is from.
CLIENTS = {
    "go": ("clients/go/", PROJECT_ROOT / "clients/go/main.go"),
    "ts": ("clients/ts/", PROJECT_ROOT / "clients/ts/src/scenario.ts"),
    "java": ("clients/java/", PROJECT_ROOT / "clients/java/src/com/identityservice/client/Scenario.java"),
}
BUILD_TIMEOUT = 1500  # seconds: a first build may install Debian and npm packages
RUN_TIMEOUT = 120


def section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


def shell_lines() -> tuple[list[str], list[str]]:
    """The commands of the section's sh blocks, and the `# -> ` lines (each client's output)."""
    commands: list[str] = []
    expected: list[str] = []
    for block in blocks("sh"):
        for line in block.splitlines():
            if line.startswith("# -> "):
                expected.append(line[len("# -> ") :])
            elif line.strip() and not line.startswith("#"):
                commands.append(line.split(" #")[0].strip())
    return commands, expected


@pytest.fixture(scope="module")
def built() -> None:
    commands, _ = shell_lines()
    assert commands and commands[0] == "make clients", commands
    result = subprocess.run(
        ["make", "--no-print-directory", "clients"], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, f"make clients failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"


def client_command(language: str) -> str:
    folder, _ = CLIENTS[language]
    commands, _ = shell_lines()
    matching = [c for c in commands[1:] if folder in c]
    assert len(matching) == 1, (language, commands)
    return matching[0]


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_client_runs_the_scenario(language: str, built: None, server_process: ServerProcess) -> None:
    command = client_command(language)
    workspace = f"{language}-{secrets.token_hex(4)}"
    args = shlex.split(command)
    assert args.count(README_ADDRESS) == 1 and args[-1] == README_WORKSPACE, command
    args = [server_process.address if a == README_ADDRESS else a for a in args[:-1]] + [workspace]
    result = subprocess.run(args, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    _, expected = shell_lines()
    expected = [line.replace(f"id={README_WORKSPACE} ", f"id={workspace} ") for line in expected]
    assert result.stdout.splitlines() == expected, result.stderr
    assert result.stderr == "", result.stderr


def test_the_output_shows_what_each_client_must_show() -> None:
    """The README's expected output is the scenario's: the double pitfall (2^53 + 1 comes back
    as 2^53; as a string it is kept), the email read back, the reason and metadata of the
    refusal, read from the ErrorInfo."""
    _, expected = shell_lines()
    steps = {line.split()[0]: dict(f.split("=", 1) for f in line.split()[1:]) for line in expected}
    assert list(steps) == ["workspace", "identify", "update", "get", "delete-id", "refused"]
    assert steps["identify"]["outcome"] == "IDENTIFY_OUTCOME_CREATED"
    assert steps["identify"]["big"] == steps["get"]["big"] == str(2**53)
    assert steps["get"]["big_as_string"] == str(2**53 + 1)
    assert steps["get"]["email"] == steps["update"]["email"] == "ada@new.example.com"
    assert steps["get"]["plan"] == "pro" and steps["get"]["tags"] == "a,b"
    assert steps["refused"] == {"code": "FAILED_PRECONDITION", "reason": "LAST_IDENTIFIER",
                                "domain": "identity.v1", "metadata.field": "email", "metadata.rule": "R31"}


def _normalized(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_readme_example_is_the_clients_code(language: str) -> None:
    """The README's example is excerpts of the client's source: between two `...` lines, each line
    is a line of the source, in the source's order."""
    _, source = CLIENTS[language]
    examples = blocks(language)
    assert examples, f"no ```{language} example in {SECTION}"
    code = _normalized(source.read_text())
    for example in examples:
        position = 0
        for line in _normalized(example):
            if line == "...":
                position = 0
                continue
            assert line in code[position:], f"{line!r} is not in {source.relative_to(PROJECT_ROOT)} (in order)"
            position = code.index(line, position) + 1


def test_generated_code_is_not_committed() -> None:
    tracked = subprocess.run(["git", "ls-files", "clients"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    generated = [p for p in tracked if re.match(r"clients/(go/build|ts/(gen|dist|node_modules)|java/(gen|build))/", p)]
    assert generated == []
    ignored = subprocess.run(["git", "check-ignore", "clients/ts/gen/x.ts", "clients/java/gen/X.java",
                              "clients/go/build/x", "clients/ts/node_modules/x", "clients/java/build/x"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert len(ignored.stdout.split()) == 5, ignored
