"""Project configuration: ``[tool.derivcheck]`` in pyproject.toml, or a derivcheck.toml.

Found by walking up from the current folder (or given). Paths in it are
relative to the file. Every key is checked: unknown keys, missing targets and
bad values are refused with the file, the line, the key and what to write.
This module is light (standard library only): the pytest plugin imports it at
start-up.

    [tool.derivcheck]
    rules = ["my_rules"]          # extra rule folders
    cache-dir = ".derivcheck"     # derivation cache
    seed = 0
    trials = 5
    steps = 2
    dtypes = ["float64", "float32"]
    strict = false
    timeout = 120                 # seconds per layer check (each runs in a worker process)

    [[tool.derivcheck.layers]]
    target = "layers.py:Affine"   # required
    rule = "affine"               # default: from the name
    hyper = { axis = 1 }
    style = "dlfs2"
    dtypes = ["float64"]          # and trials, steps, seed, strict, timeout as above
    group = "reference"           # for --group
    expect = "pass"               # or "fail": a layer known to be broken
    caught-by = ["grad W"]        # with expect = "fail": exactly the checks that must fail
                                  # ("warning:KIND" for a warning under strict = true)
    diagnosis = "transposed"      # with expect = "fail": the diagnosis that must name the bug (a list: each must)
    name = "Affine"               # the id's first part (default: the target's name)
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from derivcheck.errors import DerivcheckError
from derivcheck.vocab import DEFAULT_TIMEOUT, DEFAULTS, DIAGNOSIS_KINDS, DTYPES

OPTIONS = ("seed", "trials", "steps", "dtypes", "strict", "timeout")  # top-level defaults a layer may override
KEYS = {
    "rules": "list of folders with rule files of your own",
    "cache-dir": "folder for the derivation cache",
    "seed": "integer seed (trial k uses seed + k)",
    "trials": "number of shapes per layer",
    "steps": "forward/backward passes per shape",
    "dtypes": 'list of "float64", "float32"',
    "strict": "true to make warnings fail",
    "timeout": f"seconds a layer check may take before it is stopped and fails (default {DEFAULT_TIMEOUT:g})",
    "layers": "array of tables [[layers]], one per layer to verify",
}
LAYER_KEYS = {
    "target": 'the layer, as "path/to/file.py:Name" or "package.module:Name"',
    "rule": "the rule's name (default: the target's name in snake_case)",
    "hyper": "table of hyperparameters, as in hyper = { axis = 1 }",
    "style": "dlfs1, dlfs2, dezero or functional (default: detected)",
    "dtypes": 'list of "float64", "float32"',
    "seed": "integer seed",
    "trials": "number of shapes",
    "steps": "passes per shape",
    "strict": "true to make warnings fail",
    "timeout": "seconds this layer's check may take",
    "group": "a name to select with --group",
    "expect": '"pass" (default) or "fail" for a layer known to be broken',
    "caught-by": 'with expect = "fail": the checks that must fail, as in ["grad W"] ("warning:KIND" for a warning)',
    "diagnosis": 'with expect = "fail": the diagnosis kind that must name the bug, as in "transposed"; a list when each of several must',
    "name": "the first part of the binding's id",
}


@dataclass
class Binding:
    """One layer to verify, at one dtype: one row of `check`, one pytest item."""

    id: str
    target: str
    rule: str | None
    hyper: dict
    style: str | None
    dtype: str
    seed: int
    trials: int
    steps: int
    strict: bool
    group: str
    expect: str
    where: str  # "derivcheck.toml:12", for messages
    timeout: float | None = None  # None: vocab.DEFAULT_TIMEOUT
    caught_by: tuple | None = None  # expect = "fail": exactly these checks fail ("warning:KIND" for warnings)
    diagnosis: tuple = ()  # expect = "fail": each of these diagnosis kinds names the bug


@dataclass
class Config:
    path: Path | None = None
    rules: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    bindings: list[Binding] = field(default_factory=list)
    raw: dict = field(default_factory=dict)


def has_derivcheck_table(path: Path) -> bool:
    """True for a derivcheck.toml, or a pyproject.toml with [tool.derivcheck]."""
    if not path.is_file():
        return False
    if path.name == "derivcheck.toml":
        return True
    if path.name != "pyproject.toml":
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        return "derivcheck" in tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError:
        # broken TOML that means to configure derivcheck is an error to report, never a file to skip
        return re.search(r"^\s*\[+\s*tool\.derivcheck\b", text, re.MULTILINE) is not None


def find_config(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    if here.is_file():
        return here
    for folder in (here, *here.parents):
        for name in ("derivcheck.toml", "pyproject.toml"):
            if has_derivcheck_table(folder / name):
                return folder / name
    return None


def _read(path: Path) -> tuple[dict, str]:
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise DerivcheckError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise DerivcheckError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise DerivcheckError(f"{path}: cannot read: {exc.strerror}") from None


def _line_of(text: str, pattern: str, nth: int = 0) -> int | None:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if re.match(pattern, line)]
    return hits[nth] if nth < len(hits) else None


def load_config(path: Path | None = None, *, require: bool = False) -> Config:
    """The configuration at ``path`` (a file or a folder to search upwards from)."""
    found = find_config(path) if path is None or Path(path).is_dir() else Path(path)
    if found is None:
        if require:
            where = path or Path.cwd()
            raise DerivcheckError(f"no derivcheck.toml or pyproject.toml with [tool.derivcheck] in {where} or above")
        return Config()
    if not found.is_file():
        raise DerivcheckError(f"configuration file '{found}' not found")
    data, text = _read(found)
    in_pyproject = found.name == "pyproject.toml"
    table = data.get("tool", {}).get("derivcheck", {}) if in_pyproject else data
    prefix = "tool.derivcheck." if in_pyproject else ""

    def fail(key: str | None, message: str, line: int | None = None):
        if line is None and key:
            line = _line_of(text, rf"^\s*\"?{re.escape(key)}\"?\s*=")
        raise DerivcheckError(f"{found}:{line}: {message}" if line else f"{found}: {message}")

    for key in table:
        if key not in KEYS:
            fail(key, f"unknown key '{key}' (allowed: " + "; ".join(f"{k}: {v}" for k, v in KEYS.items()) + ")")
    base = found.parent
    rules = table.get("rules", [])
    if isinstance(rules, str):
        rules = [rules]
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        fail("rules", 'rules must be a list of folder paths, as in rules = ["my_rules"]')
    cache_dir = table.get("cache-dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        fail("cache-dir", "cache-dir must be a folder path string")
    defaults = dict(DEFAULTS)
    for key in OPTIONS:
        if key in table:
            defaults[key] = _value(key, table[key], lambda m, k=key: fail(k, m))

    layers = table.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        fail("layers", f"layers must be an array of tables: write [[{prefix}layers]] before each layer")
    bindings = []
    header = rf"^\s*\[\[\s*{re.escape(prefix)}layers\s*\]\]"
    for i, layer in enumerate(layers):
        line = _line_of(text, header, i)
        where = f"{found.name}:{line}" if line else found.name

        def lfail(message, key=None, line=line, i=i):
            fail(None, f"layer {i + 1}: {message}", line)

        for key in layer:
            if key not in LAYER_KEYS:
                lfail(f"unknown key '{key}' (allowed: " + "; ".join(f"{k}: {v}" for k, v in LAYER_KEYS.items()) + ")")
        target = layer.get("target")
        if not isinstance(target, str) or ":" not in target:
            lfail('needs target = "path/to/file.py:Name" (or "package.module:Name")')
        spec, _, name = target.rpartition(":")
        if spec.endswith(".py") or "/" in spec:
            target = f"{(base / spec)}:{name}"
        rule = layer.get("rule")
        if rule is not None and not isinstance(rule, str):
            lfail("rule must be a rule's name")
        hyper = layer.get("hyper", {})
        if not isinstance(hyper, dict):
            lfail("hyper must be a table, as in hyper = { axis = 1 }")
        style = layer.get("style")
        if style is not None:
            from derivcheck.check.conventions.registry import STYLES  # here: reading a config needs no NumPy until a layer names a style

            if style not in STYLES:
                lfail(f"style '{style}' is not one of {', '.join(STYLES)}")
        expect = layer.get("expect", "pass")
        if expect not in ("pass", "fail"):
            lfail(f'expect must be "pass" or "fail", not {expect!r}')
        caught_by = layer.get("caught-by")
        if caught_by is not None:
            if isinstance(caught_by, str):
                caught_by = [caught_by]
            if expect != "fail" or not isinstance(caught_by, list) or not caught_by or not all(isinstance(c, str) and c for c in caught_by):
                lfail('caught-by goes with expect = "fail" and is a list of check names, as in caught-by = ["grad W"]')
            caught_by = tuple(caught_by)
        diagnosis = layer.get("diagnosis", [])
        diagnosis = [diagnosis] if isinstance(diagnosis, str) else diagnosis
        if diagnosis and (expect != "fail" or not isinstance(diagnosis, list) or not all(d in DIAGNOSIS_KINDS for d in diagnosis)):
            lfail(f'diagnosis goes with expect = "fail" and is one of {", ".join(DIAGNOSIS_KINDS)} (or a list of them), '
                  f'not {layer["diagnosis"]!r}')
        diagnosis = tuple(diagnosis)
        group = layer.get("group", "default")
        if not isinstance(group, str):
            lfail("group must be a string")
        opts = {k: _value(k, layer[k], lfail) if k in layer else defaults[k] for k in OPTIONS}
        label = layer.get("name", name)
        if hyper:
            label += "[" + ",".join(f"{k}={_text(v)}" for k, v in hyper.items()) + "]"
        for dtype in opts["dtypes"]:
            bindings.append(Binding(
                # the id's rule part is the guess from the name when no rule is given
                id=f"{label}-{rule or _snake(name)}-{dtype}", target=target, rule=rule, hyper=dict(hyper), style=style,
                dtype=dtype, seed=opts["seed"], trials=opts["trials"], steps=opts["steps"], strict=opts["strict"],
                group=group, expect=expect, where=where, timeout=opts["timeout"], caught_by=caught_by, diagnosis=diagnosis,
            ))
    _dedupe_ids(bindings)
    return Config(found, [base / r for r in rules], (base / cache_dir) if cache_dir else None, bindings, table)


def _value(key, value, fail):
    if key in ("seed", "trials", "steps"):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
            fail(f"{key} must be {'a non-negative' if key == 'seed' else 'a positive'} integer, not {value!r}")
    elif key == "timeout":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            fail(f"timeout must be a positive number of seconds, not {value!r}")
        value = float(value)
    elif key == "strict":
        if not isinstance(value, bool):
            fail(f"strict must be true or false, not {value!r}")
    elif key == "dtypes":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or any(v not in DTYPES for v in value):
            fail(f'dtypes must be a list of "float64", "float32", not {value!r}')
    return value


def _text(v) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _snake(name: str) -> str:
    name = re.sub(r"(_forward|_backward)$", "", name)
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _dedupe_ids(bindings: list[Binding]) -> None:
    """Ids must be unique: prefix the file's folder where two layers share a name."""
    seen: dict[str, int] = {}
    for b in bindings:
        seen[b.id] = seen.get(b.id, 0) + 1
    for b in bindings:
        if seen[b.id] > 1:
            spec = b.target.rpartition(":")[0]
            b.id = f"{Path(spec).parent.name or spec}.{b.id}"
    final = [b.id for b in bindings]
    dup = {i for i in final if final.count(i) > 1}
    if dup:
        raise DerivcheckError(f"two layers have the id {sorted(dup)[0]}: give one of them name = \"...\"")
