"""Regenerates the Python code for protos/ into a folder (`make generate`).

The output is committed in generated/; tests/test_generated.py regenerates into a temporary
folder and fails when the committed copy is stale.

Beside the Python code it writes `identity/v1/descriptor_set.binpb`: a FileDescriptorSet of
the service's protos with their comments (`--include_source_info`) and every file they import
(`--include_imports`), plus google/rpc/error_details.proto so that clients can decode the
ErrorInfo and BadRequest details of a refusal. Server reflection serves it
(service/api/reflection.py), so `grpcurl describe` shows the proto's documentation.

The google/rpc protos the service imports are vendored in protos/google/rpc/, copied from the
installed googleapis-common-protos package by `make generate` (`vendor_google_rpc`), so that
tools reading protos/ (grpcurl -import-path protos, buf) find them; tests/ecosystem checks that
the copies are the package's.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = PROJECT_ROOT / "protos"
# Vendored third-party protos: compiled as imports, never generated into generated/ (the
# googleapis-common-protos package provides their Python modules).
VENDORED = PROTO_ROOT / "google"
GOOGLE_RPC_PROTOS = ("code.proto", "error_details.proto", "status.proto")
# Served by reflection beside the service's own protos (the details of a refusal).
REFLECTION_EXTRAS = ("google/rpc/error_details.proto",)
DESCRIPTOR_SET = Path("identity") / "v1" / "descriptor_set.binpb"


def proto_files() -> list[Path]:
    """The service's own protos (the vendored google/ ones excluded)."""
    return sorted(p for p in PROTO_ROOT.rglob("*.proto") if VENDORED not in p.parents)


def googleapis_root() -> Path:
    """Where googleapis-common-protos keeps its .proto files (beside its generated modules)."""
    from google.rpc import status_pb2

    return Path(status_pb2.__file__).resolve().parent.parent.parent


def vendor_google_rpc(proto_root: Path = PROTO_ROOT) -> None:
    """Copies google/rpc/{code,error_details,status}.proto from googleapis-common-protos."""
    target = proto_root / "google" / "rpc"
    target.mkdir(parents=True, exist_ok=True)
    for name in GOOGLE_RPC_PROTOS:
        shutil.copyfile(googleapis_root() / "google" / "rpc" / name, target / name)


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = resources.files("grpc_tools") / "_proto"
    if protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *args]) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    _protoc([f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *files])
    descriptor_set = out_dir / DESCRIPTOR_SET
    descriptor_set.parent.mkdir(parents=True, exist_ok=True)
    _protoc(
        [
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={descriptor_set}",
            *files,
            *REFLECTION_EXTRAS,
        ]
    )
    # Make every generated folder a regular package so setuptools and mypy find it.
    for folder in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        while folder != out_dir:
            (folder / "__init__.py").touch()
            folder = folder.parent


if __name__ == "__main__":
    vendor_google_rpc()
    generate(Path(sys.argv[1] if len(sys.argv) > 1 else PROJECT_ROOT / "generated"))
