"""The layering of ../shared/ARCHITECTURE.md, checked on the source (ast, no imports run).

* ``retrieval/`` and ``rerank/`` stand on ``pipeline.core`` and ``pipeline.data`` only: never
  on each other, nor on the orchestration in the rest of ``pipeline/``.
* ``pipeline.core`` imports no other project module.
* No module imports another module's ``_private`` name.
* No import cycles between project modules (counting imports inside functions too: a lazy
  import hides a cycle, it does not remove it).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "retrieval", "rerank")
STAGE_MAY_USE = ("pipeline.core", "pipeline.data")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _resolve(name: str, names: list[str], modules: set[str]) -> list[str]:
    """Project modules an import statement depends on (``from pkg import mod`` -> pkg.mod)."""
    targets = [f"{name}.{n}" for n in names if f"{name}.{n}" in modules]
    return targets or ([name] if name in modules else [])


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    sources = _sources()
    modules = set(sources)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for module, path in sources.items():
        for name, names, line in _imports(path, module):
            if not _project(name):
                continue
            graph[module].update(t for t in _resolve(name, names, modules) if t != module)
            for n in names:
                if n.startswith("_") and not n.startswith("__") and f"{name}.{n}" not in modules:
                    private.append(f"{module}:{line} imports {name}.{n}")
    return graph, private


def test_stages_stand_on_the_foundation_only() -> None:
    graph, _ = _graph()
    bad = [f"{m} -> {t}" for m, targets in graph.items() if m.split(".")[0] in ("retrieval", "rerank")
           for t in targets
           if t.split(".")[0] != m.split(".")[0] and not t.startswith(STAGE_MAY_USE)]
    assert not bad, "stages may import only pipeline.core / pipeline.data:\n" + "\n".join(sorted(bad))


def test_core_imports_no_other_project_module() -> None:
    graph, _ = _graph()
    bad = [f"{m} -> {t}" for m, targets in graph.items() if m.startswith("pipeline.core")
           for t in targets if not t.startswith("pipeline.core")]
    assert not bad, "\n".join(sorted(bad))


def test_no_module_imports_another_modules_private_name() -> None:
    _, private = _graph()
    assert not private, "\n".join(private)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    # a package's __init__ importing its own submodules is how a package exposes them
    pruned = {m: {t for t in ts if not (t.startswith(m + ".") and (ROOT / m.replace(".", "/")).is_dir())}
              for m, ts in graph.items()}
    cycles = _cycles(pruned)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from pipeline.search import TwoStageSearcher\n", "stage"),
    ("from pipeline.core.artifacts import _helper\n", "private"),
])
def test_the_rules_catch_a_violation(tmp_path, monkeypatch, source, expected) -> None:
    """The checks are not vacuous: a planted violation in a copy of a stage module is found."""
    fake = ROOT / "rerank" / "_import_rule_probe.py"
    monkeypatch.setattr(Path, "read_text", _reader(fake, source))
    monkeypatch.setattr(Path, "rglob", _globber(fake))
    graph, private = _graph()
    if expected == "stage":
        assert "pipeline.search" in graph["rerank._import_rule_probe"]
        with pytest.raises(AssertionError):
            test_stages_stand_on_the_foundation_only()
    else:
        assert any("_helper" in p for p in private)


def _reader(fake: Path, source: str):
    original = Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        return source if self == fake else original(self, *args, **kwargs)
    return read_text


def _globber(fake: Path):
    original = Path.rglob

    def rglob(self: Path, pattern: str):
        found = list(original(self, pattern))
        return found + [fake] if self == fake.parent else found
    return rglob
