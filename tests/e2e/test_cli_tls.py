"""`identity-service` over TLS: --tls with --ca-cert trusts the server's CA; without --tls, a
plaintext client cannot talk to a TLS server (exit 3, UNAVAILABLE); a CA that did not sign the
server's certificate is refused the same way."""

from __future__ import annotations

import secrets

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.runtime.tls import ServerTls
from tests.e2e.test_tls import Pki


@pytest.fixture(scope="module")
def tls_server(start_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-tls")
    pki, other = Pki.make(folder, "cli"), Pki.make(folder, "other")
    running = start_server(tls=ServerTls(str(pki.cert_file), str(pki.key_file)), pool_size=2)
    yield running, pki, other
    running.stop(0)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_tls_with_the_servers_ca(tls_server):
    running, pki, _ = tls_server
    workspace = f"cli-tls-{secrets.token_hex(4)}"
    address = ("--address", f"127.0.0.1:{running.port}")
    created = _run("workspace", "create", workspace, "--tls", "--ca-cert", str(pki.ca_file), *address)
    assert created.exit_code == 0, created.output
    shown = _run("workspace", "show", workspace, "--ca-cert", str(pki.ca_file), "--json", *address)
    assert shown.exit_code == 0 and workspace in shown.output


@pytest.mark.parametrize("how", ["plaintext", "another CA"])
def test_without_the_right_tls_the_call_fails_with_exit_3(tls_server, how):
    running, _, other = tls_server
    tls = [] if how == "plaintext" else ["--tls", "--ca-cert", str(other.ca_file)]
    result = _run("workspace", "show", "default", "--address", f"127.0.0.1:{running.port}", "--timeout", "5", *tls)
    assert result.exit_code == 3
    assert result.output.startswith("error: UNAVAILABLE")
