"""The house keeps its shape: the import contracts in pyproject.toml hold (import-linter), no two
modules import each other through any chain (imports deferred inside functions included), the
top level stays small and no file grows past what one reader holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastdia"


def _env() -> dict:
    # this checkout's package, whatever an installed fastdia points at
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_import_linter_contracts_are_kept():
    proc = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "BROKEN" not in proc.stdout, proc.stdout[-4000:]


def _cycles() -> list[list[str]]:
    """Strongly connected groups of modules in fastdia's import graph (Tarjan's algorithm)."""
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("fastdia", include_external_packages=False, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for module in sorted(graph.modules):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return groups


def test_no_import_cycles_deferred_imports_included():
    assert _cycles() == []


def test_the_top_level_is_small_and_files_stay_readable():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 9, top
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_each_family_keeps_to_its_package():
    """Dia-1's modules live in fastdia/dia1, Dia2's in fastdia/dia2: no `*_dia2.py` beside them."""
    strays = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
              if p.parent.name not in ("dia1", "dia2", "onnx", "bench", "cpu")
              and ("dia2" in p.stem or "dia1" in p.stem)]
    assert not strays, strays
