"""Shared by the API key and isolation tests: metadata for a key, a log capture of everything
the in-process servers log, and the check that no secret shows anywhere."""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import grpc
import pytest
from click.testing import CliRunner

from service.cli import cli


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def cli_admin_key(database_url: str) -> tuple[str, str]:
    """`identity-service keys create --admin`: (secret, key_id), as an operator gets them."""
    result = CliRunner().invoke(cli, ["keys", "create", "--admin", "--description", "tests",
                                      "--database-url", database_url])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert "\n" not in secret and secret.startswith("idk_")
    key_id = secret.split("_")[1]
    assert f"created admin API key {key_id}" in result.stderr and secret not in result.stderr
    return secret, key_id


class LogCapture(logging.Handler):
    """Every record the process logs at INFO and above, formatted with its stack if any."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def server_logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    yield capture
    root.removeHandler(capture)
    root.setLevel(level)


def assert_no_secret(secrets: Iterable[str], *texts: str | bytes) -> None:
    """No secret (nor its random part alone) in any of the texts."""
    for secret in secrets:
        part = secret.split("_", 2)[2] if secret.startswith("idk_") else secret
        for text in texts:
            haystack = text.decode("latin-1") if isinstance(text, bytes) else text
            assert part not in haystack, "a secret leaked"


def error_bytes(error: grpc.RpcError) -> bytes:
    """Everything a refusal carries: code, message, every trailer (details included)."""
    parts = [str(error.code()).encode(), (error.details() or "").encode()]
    for key, value in error.trailing_metadata() or ():
        parts.append(key.encode())
        parts.append(value if isinstance(value, bytes) else value.encode())
    return b"\n".join(parts)
