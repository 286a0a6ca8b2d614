"""docs/robustness.md stays true: at least 30 rows, and every test a row names exists
(file and function) and is in ``make test`` unless the row says it is slow."""

from __future__ import annotations

import ast
import re

from conftest import REPO, TESTS


def _rows() -> list[str]:
    text = (REPO / "docs" / "robustness.md").read_text()
    return [ln for ln in text.splitlines() if re.match(r"\| \d+ \|", ln)]


def _functions(path) -> dict[str, bool]:
    """Test functions of a file -> whether they are marked slow (module or function)."""
    tree = ast.parse(path.read_text())
    module_slow = "pytestmark = pytest.mark.slow" in path.read_text()
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            marks = [ast.unparse(d) for d in node.decorator_list]
            out[node.name] = module_slow or any("mark.slow" in m for m in marks)
    return out


def test_every_row_names_an_existing_test():
    rows = _rows()
    assert len(rows) >= 30
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[-1]
        refs = re.findall(r"`([^`]+)`", cell)
        assert refs, row
        path = None
        for ref in refs:
            file, _, func = ref.partition("::")
            if file:
                path = TESTS / file
            assert path is not None and path.is_file(), (row, ref)
            funcs = _functions(path)
            assert funcs, (row, ref)
            if func:
                assert func in funcs, (row, ref)
                assert not funcs[func] or "*slow*" in cell, (row, "slow test, not marked so")
