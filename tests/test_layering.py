"""derivcheck's modules import downward only, function-level imports included, and without a circle.

The layers, lowest first (docs/internals.md has the map):
  derivcheck/*.py   base: errors, vocabulary, results, tolerance; no SymPy, no user code
  engine/           the formula language, rules, derivation (concrete and generic tiers), cache
  check/            targets and conventions, the judge, verify, networks
  present/          report text/JSON/JUnit, Jacobian rendering, explain
  run/              isolation, config, the gate, CLI, pytest plugin, the Python API
A module imports its own layer and the ones below. The packages' ``__init__`` files are facades
(``derivcheck.load_rule`` is imported lazily by name) and are not walked, nor is ``derivcheck/__main__.py``,
the command's entry point (it sets the environment NumPy reads, then runs run/cli.py).
"""
import ast
from pathlib import Path

import derivcheck

PACKAGE = Path(derivcheck.__file__).parent
LAYERS = ("", "engine", "check", "present", "run")  # "" is the base, derivcheck/*.py


def modules() -> dict:
    """dotted name -> path, for every module but the packages' __init__ files and the command's __main__."""
    return {"derivcheck." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in sorted(PACKAGE.rglob("*.py")) if p.name not in ("__init__.py", "__main__.py")}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 else 0


def imports(known: dict) -> dict:
    """module -> the package's modules it imports, at any depth of its code (a function's own imports too)."""
    graph = {}
    for name, path in known.items():
        package = name.rsplit(".", 1)[0]
        deps = set()
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Import):
                deps |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    up = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                deps |= {base} | {f"{base}.{a.name}" for a in n.names}
        graph[name] = {d for d in deps if d in known} - {name}
    return graph


def upward(graph: dict) -> list:
    """Every import of a higher layer's module, as 'importer -> imported'."""
    return [f"{a} -> {b}" for a, bs in sorted(graph.items()) for b in sorted(bs) if layer(b) > layer(a)]


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


def test_every_module_is_in_a_layer():
    for name in modules():
        parts = name.split(".")
        assert len(parts) == 2 or parts[1] in LAYERS, f"{name} is in no layer: {LAYERS}"


def test_imports_go_downward_only():
    assert upward(imports(modules())) == []


def test_no_import_circle():
    graph = imports(modules())
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    (tmp_path / "derivcheck" / "engine").mkdir(parents=True)
    (tmp_path / "derivcheck" / "run").mkdir()
    (tmp_path / "derivcheck" / "engine" / "a.py").write_text("def f():\n    from ..run import b\n")
    (tmp_path / "derivcheck" / "run" / "b.py").write_text("from derivcheck.engine.a import f\n")
    known = {"derivcheck.engine.a": tmp_path / "derivcheck" / "engine" / "a.py",
             "derivcheck.run.b": tmp_path / "derivcheck" / "run" / "b.py"}
    graph = imports(known)
    assert upward(graph) == ["derivcheck.engine.a -> derivcheck.run.b"]
    assert cycle(graph) == ["derivcheck.engine.a", "derivcheck.run.b", "derivcheck.engine.a"]


def test_the_circle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_every_package_is_installed():
    """pyproject.toml lists the packages a wheel holds: a new folder left off it works here, in the
    source tree, and is missing from every install."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"derivcheck" + "".join("." + p for p in init.parent.relative_to(PACKAGE).parts)
               for init in PACKAGE.rglob("__init__.py")}
    assert folders - listed == set()
