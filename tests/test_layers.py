"""The library is a DAG of layers: no import runs back up, no module cycle, inner imports only with a reason."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import radimpress_lib

LIB = Path(radimpress_lib.__file__).parent
#: Layers, lowest first: a module may import its own layer and the layers before it.
LAYERS = ("core", "data", "clinical", "llm", "train", "evaluation", "apps", "notebook")


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> list[tuple[str, str, int, bool, str]]:
    """(importing module, imported radimpress module, line, inside a function, source line)."""
    modules = {_module_name(p) for p in LIB.rglob("*.py")}
    out = []
    for path in sorted(LIB.rglob("*.py")):
        mod = _module_name(path)
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("radimpress_lib"):
                targets = []
                for alias in node.names:  # `from pkg import module` names a module, `from module import f` a module too
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("radimpress_lib")]
            else:
                continue
            for target in targets:
                out.append((mod, target, node.lineno, node.col_offset > 0, lines[node.lineno - 1]))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer():
    loose = [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside the layers: {loose}"
    assert sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)


def test_no_import_runs_back_up():
    upward = [f"{m}:{line} imports {t} ({_layer(t)} is above {_layer(m)})"
              for m, t, line, _inner, _src in _imports()
              if _layer(m) and _layer(t) and LAYERS.index(_layer(t)) > LAYERS.index(_layer(m))]
    assert upward == []


def test_lower_layers_stay_independent():
    edges = defaultdict(set)
    for m, t, *_ in _imports():
        if _layer(m) and _layer(t) and _layer(m) != _layer(t):
            edges[_layer(m)].add(_layer(t))
    assert edges["core"] == set()
    assert edges["data"] <= {"core"}
    assert not edges["clinical"] & {"llm", "train", "evaluation", "apps", "notebook"}
    assert not edges["train"] & {"evaluation", "apps", "notebook"}


def test_no_import_cycles():
    graph = defaultdict(set)
    for m, t, *_ in _imports():
        if m != t:
            graph[m].add(t)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_inner_imports_say_why():
    """Imports inside functions only where they keep torch/transformers out of a light entry point, with a comment."""
    for m, t, line, inner, src in _imports():
        if inner:
            path = LIB.parent / (m.replace(".", "/") + ".py")
            lines = path.read_text().splitlines()
            start = line - 1  # a comment may head a block of consecutive imports
            while start > 0 and lines[start - 1].strip().startswith(("from ", "import ")):
                start -= 1
            block = lines[max(0, start - 1): line]
            assert any("#" in s for s in block), f"{m}:{line}: `{src.strip()}` inside a function needs a reason"
