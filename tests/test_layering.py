"""The package boundaries the architecture promises, read from every import statement (at any
depth, lazy ones included): `pipeline` never imports Ray or the other packages, and `tune` and
`serve` never import each other."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "pipeline": {"ray", "tune", "serve", "twostep"},
    "tune": {"serve", "twostep"},
    "serve": {"tune", "twostep"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_their_layer(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    crossings = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & FORBIDDEN[package])
                 for f in files}
    assert {f: names for f, names in crossings.items() if names} == {}


def test_the_checker_sees_a_lazy_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from ray import serve\n    import tune.launch\n")
    assert imported_packages(module) == {"ray", "tune"}
