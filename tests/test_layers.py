"""The package's layers (ARCHITECTURE.md): a module imports only from its own layer or lower.

The check reads every ``import`` / ``from ... import`` in ``nucdet/`` with ``ast`` (lazy
imports inside functions count too: they are upward imports all the same) and maps each
module to its layer by ``LAYERS``. It also checks the two rules of ``benchmarks/``:
nothing there imports from ``tests/``, and no script patches ``sys.path``. The checker is
tested on a planted upward import in a copy of the real package, so it cannot pass by
checking nothing.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first; a module's layer is the longest prefix listed. Keep in step with
# ARCHITECTURE.md (test_architecture_doc_lists_every_layer checks the names).
LAYERS: list[tuple[str, ...]] = [
    ("nucdet.__about__", "nucdet.io", "nucdet.structures", "nucdet.jit", "nucdet.parallel"),
    ("nucdet.config",),
    ("nucdet.visualize",),
    ("nucdet.data",),
    ("nucdet.evaluation",),
    ("nucdet.modeling",),
    ("nucdet.inference",),
    ("nucdet.engine",),
    ("nucdet.tools",),
]


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every nucdet import in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # ``from nucdet import data`` imports the subpackage nucdet.data
            names = [f"{name}.{a.name}" for a in node.names] if name == "nucdet" else [name]
            out += [(node.lineno, n) for n in names]
    return [(ln, m) for ln, m in out if m == "nucdet" or m.startswith("nucdet.")]


def layer_violations(root: Path) -> list[str]:
    """Every import in ``root/nucdet`` of a higher layer, as ``file:line: a -> b``."""
    problems = []
    for path in sorted((root / "nucdet").rglob("*.py")):
        module = module_name(path, root)
        own = layer_of(module)
        if own is None:
            if module != "nucdet":
                problems.append(f"{path.relative_to(root)}: module {module} has no layer")
            continue
        for line, target in imported_modules(path, module):
            other = layer_of(target)
            if other is not None and other > own:
                problems.append(f"{path.relative_to(root)}:{line}: {module} -> {target}")
    return problems


def benchmark_violations(root: Path) -> list[str]:
    problems = []
    for path in sorted((root / "benchmarks").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "tests" or n.startswith("tests.") for n in names):
                problems.append(f"{path.relative_to(root)}:{node.lineno}: imports tests")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"insert", "append"}
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "path"
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "sys"
            ):
                problems.append(f"{path.relative_to(root)}:{node.lineno}: patches sys.path")
    return problems


def test_no_lower_layer_imports_a_higher_one():
    assert layer_violations(REPO) == []


def test_benchmarks_import_no_tests_and_patch_no_sys_path():
    assert benchmark_violations(REPO) == []


@pytest.mark.parametrize(
    "victim, planted, expected",
    [
        ("nucdet/io/rle.py", "from nucdet.inference import fusion", "-> nucdet.inference"),
        ("nucdet/data/folds.py", "import nucdet.evaluation.mapiou", "-> nucdet.evaluation.mapiou"),
        ("nucdet/evaluation/mapiou.py", "from ..engine import hooks", "-> nucdet.engine"),
    ],
)
def test_checker_finds_a_planted_upward_import(tmp_path, victim, planted, expected):
    shutil.copytree(REPO / "nucdet", tmp_path / "nucdet")
    target = tmp_path / victim
    # inside a function: lazy imports are imports too
    target.write_text(target.read_text() + f"\n\ndef _planted():\n    {planted}\n")
    found = layer_violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(victim) and found[0].endswith(expected)


def test_checker_finds_a_planted_benchmark_shortcut(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "b.py").write_text(
        "import sys\nsys.path.insert(0, 'x')\nfrom tests.conftest import blob_image\n"
    )
    assert benchmark_violations(tmp_path) == [
        "benchmarks/b.py:3: imports tests",
        "benchmarks/b.py:2: patches sys.path",
    ] or sorted(benchmark_violations(tmp_path)) == [
        "benchmarks/b.py:2: patches sys.path",
        "benchmarks/b.py:3: imports tests",
    ]


def test_architecture_doc_lists_every_layer():
    doc = (REPO / "ARCHITECTURE.md").read_text()
    for names in LAYERS:
        for name in names:
            assert f"`{name}`" in doc, f"ARCHITECTURE.md does not name the layer {name}"
