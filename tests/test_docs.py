"""The documentation cannot rot: every Python example in ``docs/`` runs, and the site builds strictly.

- Each fenced ```` ```python ```` block of ``docs/**/*.md`` is executed in a fresh namespace
  (one thread, the suite's runtime shape checking on). A block preceded by the line
  ``<!-- no-test -->`` is a fragment and is skipped; few are.
- ``mkdocs build --strict`` (Material theme, mkdocstrings API reference for every public name)
  must finish without a warning. It needs the ``docs`` extra: ``pip install -e .[dev,docs]``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test -->"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, int, str]]:
    """``(file, line, code)`` of every runnable ```python block under ``docs/``."""
    blocks = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            if before == NO_TEST:
                continue
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((str(path.relative_to(ROOT)), line, match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_docs_have_examples() -> None:
    files = {f for f, _, _ in BLOCKS}
    for page in ("quickstart.md", "concepts.md", "memory.md"):
        assert f"docs/{page}" in files, f"docs/{page} lost its runnable examples"
    for family in ("memory_models", "objectives", "optimizers", "gates", "attention", "persistent"):
        assert f"docs/components/{family}.md" in files, f"docs/components/{family}.md has no runnable example"


@pytest.fixture
def restore_registries():
    """Examples may register components; leave the global tables as they were."""
    from titans import registry

    tables = [t for t in vars(registry).values() if isinstance(t, registry.Registry)]
    saved = [dict(t._entries) for t in tables]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for table, entries in zip(tables, saved):
            table._entries.clear()
            table._entries.update(entries)


@pytest.mark.parametrize("where,code", [pytest.param(f"{f}:{line}", code, id=f"{f}:{line}") for f, line, code in BLOCKS])
def test_doc_example_runs(
    where: str, code: str, restore_registries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # an example that saves to a relative path writes here, not into the repository
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": f"docs_example_{abs(hash(where))}"}
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - running our own docs is the point


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
        import material  # noqa: F401
    except ImportError as error:  # pragma: no cover - a broken environment, not a skip
        pytest.fail(f"the docs build needs the `docs` extra (pip install -e .[dev,docs]): {error}")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "api" / "memory_blocks" / "index.html").exists()


def test_api_reference_lists_every_public_name() -> None:
    import memory_blocks
    import titans

    for module in (memory_blocks, titans):
        page = (DOCS / "api" / f"{module.__name__}.md").read_text(encoding="utf-8")
        listed = set(re.findall(rf"^::: {module.__name__}\.(\w+)\s*$", page, re.MULTILINE))
        missing = sorted(set(module.__all__) - listed)
        assert not missing, f"docs/api/{module.__name__}.md lacks {missing}"
