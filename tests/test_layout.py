"""The import layers: ``memory_blocks`` never imports ``titans``; the ``titans`` model library
never imports its experiment application (``titans.experiments``); the pure functions never
import the modules built on them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a source file imports (``import a.b`` and ``from a.b import c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module)
    return names


def files_under(folder: str) -> list[Path]:
    return sorted((SRC / folder).rglob("*.py"))


def test_the_scan_sees_imports() -> None:
    # Guard against a scan that finds nothing: the public entry of titans imports experiments.
    assert any(name.startswith("titans.experiments") for name in imported_modules(SRC / "titans" / "__init__.py"))
    assert "memory_blocks.functional.memorize_op.chunk" in imported_modules(SRC / "memory_blocks" / "neural_memory.py")


@pytest.mark.parametrize("path", files_under("memory_blocks"), ids=lambda p: str(p.relative_to(SRC)))
def test_memory_blocks_never_imports_titans(path: Path) -> None:
    bad = sorted(name for name in imported_modules(path) if name == "titans" or name.startswith("titans."))
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


LIBRARY = [
    path
    for path in files_under("titans")
    if "experiments" not in path.relative_to(SRC).parts and path.name not in ("__init__.py", "__main__.py")
    or path.parent.name in ("blocks", "hf")
]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(SRC)))
def test_model_library_never_imports_experiments(path: Path) -> None:
    bad = sorted(name for name in imported_modules(path) if name.startswith("titans.experiments"))
    assert not bad, f"{path.relative_to(SRC)} (model library) imports the experiment application: {bad}"


@pytest.mark.parametrize("path", files_under("memory_blocks/functional"), ids=lambda p: str(p.relative_to(SRC)))
def test_functional_core_imports_only_downward(path: Path) -> None:
    bad = sorted(
        name
        for name in imported_modules(path)
        if name.startswith("memory_blocks.") and not name.startswith("memory_blocks.functional")
    )
    assert not bad, f"{path.relative_to(SRC)} (pure functions) imports modules built on them: {bad}"
