"""The layers of docs/architecture.md: every import of a package module runs downward (or within its
layer), no module has a __main__ block, and none is over 450 lines; JSON is read and processes are
started one way; a function over 60 lines says why."""

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


def calls(path: Path, module: str, names) -> list:
    """Lines where the module calls ``MODULE.NAME(...)`` for a NAME in ``names``, or imports one of
    them by name (``from MODULE import NAME``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
                and isinstance(node.func.value, ast.Name) and node.func.value.id == module):
            found.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == module and any(a.name in names for a in node.names):
            found.append(node.lineno)
    return found


def checked(allowed) -> list:
    """The package's modules outside ``allowed`` (paths relative to the package)."""
    return [p for p in sorted(PKG.rglob("*.py")) if str(p.relative_to(PKG)) not in allowed]


def test_json_is_read_in_one_place():
    """JSON files through runtime.files.read_json; fairseq's json log records through
    study.fairseq_tools.log_record."""
    bad = {str(p.relative_to(REPO)): lines for p in checked({"runtime/files.py", "study/fairseq_tools.py"})
           if (lines := calls(p, "json", {"load", "loads"}))}
    assert not bad, f"json.load/json.loads outside runtime/files.py and study/fairseq_tools.py: {bad}"


def test_processes_are_started_in_one_place():
    """Processes through runtime.processes (``subprocess.CompletedProcess`` as a type is fine)."""
    starters = {"subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput"},
                "os": {"system", "popen", "execv", "execvp", "execve", "spawnv", "spawnvp", "posix_spawn"}}
    bad = {str(p.relative_to(REPO)): lines for p in checked({"runtime/processes.py"})
           if (lines := [n for module, names in starters.items() for n in calls(p, module, names)])}
    assert not bad, f"subprocess started outside runtime/processes.py: {bad}"


LONG = 60  # lines, the def line to the last


def long_functions(path: Path):
    """(name, line, length, whether it says why) of each function over LONG lines: a ``# Long:``
    comment between its ``def`` and its first statement after the docstring."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LONG:
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            head = lines[node.lineno - 1:body[0].lineno - 1]
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1, any("# Long:" in x for x in head)


def test_every_long_function_says_why():
    """Functions over 60 lines are split by concern, or say in a ``# Long:`` comment why they are not."""
    bad = [f"{p.relative_to(REPO)}:{line} {name} ({n} lines)" for p in sorted(PKG.rglob("*.py"))
           for name, line, n, why in long_functions(p) if not why]
    assert not bad, "over 60 lines without a '# Long:' comment saying why: " + ", ".join(bad)
