"""generated/ is committed: it must be exactly what `make generate` makes from protos/."""

from pathlib import Path

from service.codegen import PROJECT_ROOT, generate


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
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
