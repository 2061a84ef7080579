"""derivcheck's modules import each other without a circle, function-level imports included."""
import ast
from pathlib import Path

import derivcheck

PACKAGE = Path(derivcheck.__file__).parent


def imports() -> dict:
    """module -> the package's modules it imports, at any depth of its code (a function's own imports too)."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for p in PACKAGE.glob("*.py"):
        deps = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                deps |= {n.module.split(".")[0]} if n.module else {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("derivcheck."):
                deps.add(n.module.split(".")[1])
        graph[p.stem] = (deps & names) - {p.stem}
    return graph


def cycle(graph):
    """One import circle as a list of modules, or None."""
    state, path = {}, []

    def visit(v):
        state[v] = "open"
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "done"
        path.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_circle():
    assert cycle(imports()) is None, " -> ".join(cycle(imports()))


def test_the_circle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
