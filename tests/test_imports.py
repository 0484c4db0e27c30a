"""The package's imports: every module imports on its own, `sami` imports sit at the top of their module, and the
top-level `sami` import graph has no circle.

Function-level imports hide circles (a module that imports another inside a function works until someone moves
the import up); the only allowed way to keep a `sami` module off a start-up path is `sami.cli` loading a command
module by name (importlib), and `sami/__init__.py`'s lazy public names.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# (module, imported sami module) -> why the import sits inside a function. Keep it empty if you can.
ALLOWED_INNER: dict[tuple[str, str], str] = {
    (
        "sami.commands.evaluate",
        "sami.evaluation.context",
    ): "loads torch: kept off the command's --help (the CLI imports a command module to build its parser)",
    (
        "sami.commands.evaluate",
        "sami.evaluation.evaluate",
    ): "loads torch: kept off the command's --help (the CLI imports a command module to build its parser)",
    (
        "sami.commands.generate",
        "sami.generation",
    ): "its factory loads the backends and torch: kept off `sami generate --help`",
    ("sami.commands.principles", "sami"): "sami.principle_writer loads torch: kept off `sami principles --help`",
    (
        "sami.commands.run",
        "sami.dry_run",
    ): "loads torch: kept off the command's --help (the CLI imports a command module to build its parser)",
    (
        "sami.commands.run",
        "sami.pipeline",
    ): "loads torch: kept off the command's --help (the CLI imports a command module to build its parser)",
    (
        "sami.commands.run",
        "sami.preflight",
    ): "loads torch: kept off the command's --help (the CLI imports a command module to build its parser)",
}

# Imports every module named on stdin in turn, each after dropping every module of the package from sys.modules,
# so that each is imported as if it were the first (a circle fails from the side where a name is not bound yet).
# Third-party modules (torch, ...) stay loaded: one interpreter, a few seconds instead of one process per module.
_IMPORT_EACH = textwrap.dedent(
    """
    import importlib, json, sys, traceback
    package, modules = json.loads(sys.stdin.read())
    failed = {}
    for name in modules:
        for loaded in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except BaseException as e:
            failed[name] = traceback.format_exception_only(type(e), e)[-1].strip()
    print(json.dumps(failed))
    """
)


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `src`."""
    names = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_each(src: Path, package: str) -> dict[str, str]:
    """Import every module of `package` on its own in a fresh interpreter; the modules that failed, with the error."""
    payload = json.dumps([package, list(module_files(src, package))])
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH],
        input=payload,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The `package` modules an import statement names (absolute imports; the package's code has no relative ones)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level or not node.module:
            return []
        names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return [n for n in names if n == package or n.startswith(package + ".")]


def inner_imports(src: Path, package: str) -> list[tuple[str, int, str]]:
    """(module, line, imported module) of every `package` import that is not a module-level statement (inside a
    function, a class or a conditional), except those in a module-level `if TYPE_CHECKING:` block."""
    found = []
    for name, path in module_files(src, package).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set()
        for node in tree.body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                top.update(id(n) for n in ast.walk(node))
            elif isinstance(node, ast.Import | ast.ImportFrom):
                top.add(id(node))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top:
                found += [(name, node.lineno, target) for target in _targets(node, package)[:1]]
    return found


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the `package` modules its module-level statements import, `if TYPE_CHECKING:` blocks included (an
    import kept for type checkers only must not hide a circle either). Importing `a.b.c` runs `a.b`'s `__init__`
    too, so that is an edge as well (but not a module's own packages, which are already being imported when it
    runs)."""
    modules = module_files(src, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            for sub in ast.walk(node):
                if not isinstance(sub, ast.Import | ast.ImportFrom):
                    continue
                for target in _targets(sub, package):
                    parts = target.split(".")
                    for i in range(2, len(parts) + 1):
                        step = ".".join(parts[:i])
                        if step in modules and step != name and not name.startswith(step + "."):
                            graph[name].add(step)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_every_module_imports_on_its_own():
    failed = import_each(SRC, "sami")
    assert not failed, "modules that do not import on their own:\n" + "\n".join(f"{k}: {v}" for k, v in failed.items())


def test_no_sami_import_inside_a_function():
    found = [(m, line, t) for m, line, t in inner_imports(SRC, "sami") if (m, t) not in ALLOWED_INNER]
    assert not found, "sami imports below module level (move them to the top, or allowlist with a reason):\n" + (
        "\n".join(f"{m}:{line}: imports {t}" for m, line, t in found)
    )


def test_allowlist_is_current():
    present = {(m, t) for m, _, t in inner_imports(SRC, "sami")}
    assert not set(ALLOWED_INNER) - present, "stale ALLOWED_INNER entries"


def deferred_imports_without_reason(src: Path, package: str) -> list[str]:
    """`file:line` of every import inside a function with no `#` comment on its line or above its group of imports
    (an import deferred off a light path, e.g. torch or an optional extra, says why)."""
    found = []
    for path in module_files(src, package).values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        here, i = lines[node.lineno - 1], node.lineno - 2
                        while lines[i].strip().startswith(("import ", "from ")) and "#" not in lines[i]:
                            i -= 1  # one comment above a group of imports covers the group
                        if "#" not in here and not lines[i].strip().startswith("#"):
                            found.append(f"{path.relative_to(src)}:{node.lineno}: {here.strip()}")
    return found


def test_a_deferred_import_says_why():
    found = deferred_imports_without_reason(SRC, "sami")
    assert not found, "imports inside functions with no reason (a comment):\n" + "\n".join(found)


def test_no_import_circle():
    cycle = find_cycle(import_graph(SRC, "sami"))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _circle_package(tmp_path: Path) -> Path:
    """A package `circ` whose modules `a` and `b` import each other at the top, `c` imports `a` inside a function,
    and `d` imports `e` (which imports `d`) for type checkers only."""
    pkg = tmp_path / "circ"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ.b import B\n\nA = 1\n")
    (pkg / "b.py").write_text("from circ.a import A\n\nB = 2\n")
    (pkg / "c.py").write_text("def f():\n    from circ.a import A\n\n    return A\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from circ.e import E\n")
    (pkg / "e.py").write_text("from circ.d import TYPE_CHECKING as E\n")
    return tmp_path


def test_the_checks_catch_a_circle(tmp_path):
    """The checks on a package with circles and a function-level import: each one fails."""
    src = _circle_package(tmp_path)
    failed = import_each(src, "circ")
    assert set(failed) == {"circ.a", "circ.b"} and "partially initialized" in failed["circ.a"]
    graph = import_graph(src, "circ")
    assert find_cycle(graph) == ["circ.a", "circ.b", "circ.a"]
    graph["circ.b"].discard("circ.a")  # the circle that a TYPE_CHECKING import hides is found too
    assert find_cycle(graph) == ["circ.d", "circ.e", "circ.d"]
    assert inner_imports(src, "circ") == [("circ.c", 2, "circ.a")]
    assert deferred_imports_without_reason(src, "circ") == ["circ/c.py:2: from circ.a import A"]
