"""generated/ is committed: it must be exactly what `make generate` makes from protos/."""

import re
from pathlib import Path

from service.runtime.codegen import PROJECT_ROOT, generate


# The generator stamps its own version in: a newer grpcio-tools is not a stale contract.
_TOOL_VERSIONS = [
    (re.compile(r"Protobuf Python Version: .*"), "Protobuf Python Version: X"),
    (re.compile(r"ValidateProtobufRuntimeVersion\([^)]*\)"), "ValidateProtobufRuntimeVersion(X)"),
    (re.compile(r"GRPC_GENERATED_VERSION = .*"), "GRPC_GENERATED_VERSION = X"),
]


def _normalised(text: str) -> str:
    for pattern, replacement in _TOOL_VERSIONS:
        text = pattern.sub(replacement, text)
    return text


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): _normalised(p.read_text())
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in {".py", ".pyi"} and "__pycache__" not in p.parts
    }


def test_generated_code_matches_protos(tmp_path):
    generate(tmp_path)
    committed = _files(PROJECT_ROOT / "generated")
    fresh = _files(tmp_path)
    assert committed.keys() == fresh.keys(), "run `make generate`: files differ"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert not stale, f"run `make generate`: stale {stale}"
