"""buf (npm @bufbuild/buf, the version the Makefile pins) on protos/: STANDARD lint and breaking
changes against the last release's contract pass, both checks catch what they are for, and the
committed baseline is what `make proto-baseline` rebuilds from git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from google.protobuf import descriptor_pb2

from service.runtime.codegen import PROJECT_ROOT

BASELINE = PROJECT_ROOT / "protos" / "release" / "identity-v1.binpb"
IDENTITY = Path("protos") / "identity" / "v1" / "identity.proto"


def _buf(buf: Path, *args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _copy_of_the_module(tmp_path: Path) -> Path:
    root = tmp_path / "module"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "buf.yaml", root / "buf.yaml")
    shutil.copytree(PROJECT_ROOT / "protos", root / "protos", ignore=shutil.ignore_patterns("release"))
    return root


def test_buf_lint_passes(buf):
    result = _buf(buf, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_against_the_release_passes(buf):
    result = _buf(buf, "breaking", "--against", str(BASELINE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_a_violation_in_our_protos(buf, tmp_path):
    root = _copy_of_the_module(tmp_path)
    proto = root / IDENTITY
    proto.write_text(proto.read_text() + "\nmessage lower_case_message {}\n")
    result = _buf(buf, "lint", cwd=root)
    assert result.returncode == 100, result.stdout + result.stderr
    assert "lower_case_message" in result.stdout and "PascalCase" in result.stdout


def test_buf_breaking_catches_a_renumbered_field(buf, tmp_path):
    root = _copy_of_the_module(tmp_path)
    proto = root / IDENTITY
    text = proto.read_text()
    assert "  string workspace_id = 1;\n  // References an existing person" in text
    proto.write_text(text.replace("  string workspace_id = 1;\n  // References an existing person",
                                  "  string workspace_id = 99;\n  // References an existing person", 1))
    result = _buf(buf, "breaking", "--against", str(BASELINE), cwd=root)
    assert result.returncode == 100, result.stdout + result.stderr
    assert "IdentifyRequest" in result.stdout, result.stdout


def test_the_baseline_is_rebuilt_from_git(buf, tmp_path):
    rebuilt = tmp_path / "identity-v1.binpb"
    subprocess.run(
        ["make", "--no-print-directory", "-s", "proto-baseline", f"PROTO_BASELINE={rebuilt}"],
        cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=300,
    )
    committed = descriptor_pb2.FileDescriptorSet.FromString(BASELINE.read_bytes())
    fresh = descriptor_pb2.FileDescriptorSet.FromString(rebuilt.read_bytes())
    assert [f.name for f in committed.file][-1] == "identity/v1/identity.proto"
    assert fresh == committed, "run `make proto-baseline`: protos/release/identity-v1.binpb is not what git gives"
