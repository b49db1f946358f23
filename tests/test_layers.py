"""The package's layers import only downwards, no module imports itself in a circle, and local imports say why."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
LINT = [str(Path(sys.executable).with_name("lint-imports"))]  # import-linter's command, beside this Python
# Function-local imports of visionkit modules are kept only where they spare `visionkit --help` (and every
# command) the import of torch: the command-line layer imports the library inside its command functions.
LOCAL_IMPORTS_ALLOWED = ("visionkit/cli/",)


def _lint(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LINT, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contract_holds() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "visionkit", copy / "visionkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
    lower = copy / "visionkit" / "engine" / "precision.py"
    lower.write_text(lower.read_text() + "\n\ndef _reach_up() -> None:\n    from visionkit.api import train  # noqa\n")
    proc = _lint(copy, env={**os.environ, "PYTHONPATH": str(copy)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "visionkit.engine.precision -> visionkit.api" in proc.stdout


def test_no_module_imports_itself_in_a_circle() -> None:
    graph = grimp.build_graph("visionkit")
    modules = sorted(graph.modules)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.find_modules_directly_imported_by(module)):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in modules:
        if module not in index:
            visit(module)
    assert cycles == []


def test_local_imports_of_visionkit_only_where_they_spare_start_up() -> None:
    found = []
    for path in sorted((ROOT / "visionkit").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.level == 0:
                    names = [inner.module or ""]
                elif isinstance(inner, ast.Import):
                    names = [a.name for a in inner.names]
                else:
                    continue
                if any(n.split(".")[0] == "visionkit" for n in names) and not rel.startswith(LOCAL_IMPORTS_ALLOWED):
                    found.append(f"{rel}:{inner.lineno} {', '.join(names)}")
    assert found == [], "import these at the top of the module (or say in the test why they must stay local)"
