"""Regenerates the Python code for protos/ into a folder (`make generate`).

The output is committed in generated/; tests/test_generated.py regenerates into a temporary
folder and fails when the committed copy is stale.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = PROJECT_ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    # google/rpc/*.proto ship with googleapis-common-protos, beside its generated modules.
    from google.rpc import status_pb2

    googleapis = Path(status_pb2.__file__).resolve().parent.parent.parent
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(files))
    # Make every generated folder a regular package so setuptools and mypy find it.
    for folder in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        while folder != out_dir:
            (folder / "__init__.py").touch()
            folder = folder.parent


if __name__ == "__main__":
    generate(Path(sys.argv[1] if len(sys.argv) > 1 else PROJECT_ROOT / "generated"))
