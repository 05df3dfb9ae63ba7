"""The layers of docs/architecture.md: every import of a package module runs downward (or within its
layer), no module has a __main__ block, and none is over 450 lines."""

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PKG = REPO / "labo_fairseq"
# layer -> the layers it may import (besides itself)
ALLOWED = {
    "losses": set(),
    "runtime": set(),
    "scoring": {"runtime"},
    "plugin": {"losses", "runtime"},
    "hf": {"losses", "runtime"},
    "study": {"hf", "plugin", "scoring", "runtime", "losses"},
    "bench": {"plugin", "losses", "runtime"},
    "gpu": {"study", "bench", "hf", "plugin", "scoring", "runtime", "losses"},
}
MODULES = sorted(p for p in PKG.rglob("*.py") if p.parent != PKG)


def layer(path: Path) -> str:
    return path.relative_to(PKG).parts[0]


def imported(path: Path):
    """(line, layer) of every ``labo_fairseq.LAYER`` import in the module, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labo_fairseq"):
            parts = node.module.split(".")
            # the root's own names (register, __version__) are the top layer's
            names = [parts[1]] if len(parts) > 1 else [a.name if a.name in ALLOWED else "root" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("labo_fairseq.")]
        for n in names:
            yield node.lineno, n


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_run_downward(path):
    own = layer(path)
    bad = [(line, n) for line, n in imported(path)
           if (n in ALLOWED or n == "root") and n != own and n not in ALLOWED[own]]
    assert not bad, f"{path.relative_to(REPO)} ({own}) imports upward: {bad}"


def test_no_module_has_a_main_block_or_more_than_450_lines():
    for path in PKG.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name != "__main__.py":
            assert 'if __name__ == "__main__"' not in text, path
        assert text.count("\n") <= 450, f"{path.relative_to(REPO)}: {text.count(chr(10))} lines"
