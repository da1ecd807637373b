"""The package's shape: no import cycle among trikern's modules, and importing trikern changes no
environment variable."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trikern"

# Packages whose internal cycles are known and being untangled: a cycle is tolerated only when every
# module on it lies in one of these. Empty it once they are gone.
KNOWN_CYCLES_IN: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level(tree: ast.Module):
    """The import statements that run when the module is imported: at module level or in a class
    body, inside if / try / with blocks too, but not in a function (a lazy import) nor under
    `if TYPE_CHECKING:`."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))
            for handler in getattr(node, "handlers", []):
                todo.extend(handler.body)


def import_graph() -> dict[str, set[str]]:
    """module -> the trikern modules its import runs. Importing `a.b.c` from outside package `a.b`
    also runs `a.b`'s __init__ (from inside it, that __init__ is already running)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        targets = []
        for node in module_level(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
                continue
            src = node.module
            if node.level:
                base = package.split(".")
                src = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            # `from p import x`: the submodule p.x when there is one, else a name of p's __init__
            targets += [f"{src}.{a.name}" if f"{src}.{a.name}" in files else src for a in node.names]
        edges = set()
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):  # the module, and the packages above it
                mod = ".".join(parts[:i])
                inside = name == mod or name.startswith(mod + ".")
                if mod in files and mod != name and (i == len(parts) or not inside):
                    edges.add(mod)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first repeated last) per strongly connected component that has one."""
    index, low, stack, on_stack, comps, counter = {}, {}, [], set(), [], [0]

    def connect(v):  # Tarjan's algorithm, recursive: the graph is small
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    out = []
    for comp in comps:
        start = min(comp)
        if len(comp) == 1 and start not in graph[start]:
            continue
        # a shortest path back to `start` inside the component (breadth first)
        prev, frontier = {}, [start]
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path, v = [start], prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        out.append([start, *reversed(path[1:]), start])
    return out


def known(cycle: list[str]) -> bool:
    return any(all(m == p or m.startswith(p + ".") for m in cycle) for p in KNOWN_CYCLES_IN)


def test_graph_sees_imports():
    g = import_graph()
    assert "trikern.kernels.autotune_store" in g["trikern.kernels.autotune"]  # from .autotune_store import ...
    assert "trikern.kernels.autotune" in g["trikern.decode.auto.profile"]  # from ...kernels import autotune
    assert "trikern.kernels" in g["trikern.decode.auto.profile"]  # ... runs the kernels package first
    assert "trikern.kernels" not in g["trikern.kernels.rope"]  # a sibling's package is already running
    assert "trikern.cli.options" in g["trikern.cli.generate"]
    assert "trikern.api" not in g["trikern"]  # a lazy import, inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": set()}) == [["a", "b", "c", "a"], ["d", "d"]]


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if not known(c)]
    assert not found, "import cycles (break one edge, e.g. with an import inside the function that needs it):\n" + \
        "\n".join(" -> ".join(c) for c in found)


def test_import_leaves_the_environment_alone():
    """Importing trikern, and each of its modules, sets no environment variable (trikern.kernels once
    set TRITON_DEFAULT_FP_FUSION; launches pass enable_fp_fusion instead)."""
    mods = sorted(m for m in import_graph() if not m.endswith("__main__"))
    code = "\n".join([
        "import importlib, json, os, sys",
        "before = dict(os.environ)",
        "skipped = []",
        f"for name in {mods!r}:",
        "    try:",
        "        importlib.import_module(name)",
        "    except ModuleNotFoundError as e:  # an optional extra that is not installed",
        "        if (e.name or '').split('.')[0] == 'trikern':",
        "            raise",
        "        skipped.append(name)",
        "after = dict(os.environ)",
        "print(json.dumps({'changed': sorted(k for k in before.keys() | after.keys()",
        "                                    if before.get(k) != after.get(k)), 'skipped': skipped}))",
    ])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_DEFAULT_FP_FUSION"}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["changed"] == [], out
    assert "trikern.kernels" not in out["skipped"] and "trikern.cli" not in out["skipped"]
