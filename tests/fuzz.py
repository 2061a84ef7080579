"""Malformed input, thrown at the command line: no traceback, no hang, no reasonless error, no wrong verdict.

    python tests/fuzz.py            # prints one line per problem and the count

Cases: rule files, targets, options, configurations and cache entries, each
built in a scratch folder. Every case names the exit codes it may end with
(2 for bad input; 0 or 1 where a verdict is due) and must end within its time
limit with at most a one-line message on stderr that is not an internal error.
``tests/test_fuzz.py`` runs it and asserts that nothing is wrong.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CASE_SECONDS = 60


@dataclass
class Case:
    name: str
    args: list
    exits: tuple = (2,)  # the exit codes this case may end with
    files: dict = field(default_factory=dict)  # relative path -> text (or bytes)
    before: object = None  # callable(folder) run before the command
    want: str | None = None  # text that must appear in the output


GOOD_RULE = 'name = "{name}"\nsummary = "s"\nformula = "exp(x)"\noutput = ["N", "D"]\n[inputs.x]\nshape = ["N", "D"]\n'


def rule_cases() -> list[Case]:
    bodies = {
        "empty": "",
        "not toml": "name = \n",
        "binary": b"\x00\xff\xfe\x00",
        "not utf8": b'name = "\xff"\n',
        "no name": 'summary = "s"\nformula = "x"\n[inputs.x]\nshape = ["N"]\n',
        "name mismatch": GOOD_RULE.format(name="other"),
        "name uppercase": GOOD_RULE.format(name="Bad"),
        "no inputs": 'name = "r"\nsummary = "s"\nformula = "1"\n',
        "inputs not table": 'name = "r"\nsummary = "s"\nformula = "1"\ninputs = 3\n',
        "input no shape": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\n',
        "shape not list": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = "N"\n',
        "shape zero": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = [0]\n',
        "shape bool": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = [true]\n',
        "dim bad name": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = ["1N"]\n',
        "summary empty": 'name = "r"\nsummary = ""\nformula = "x"\n[inputs.x]\nshape = ["N"]\n',
        "formula not string": 'name = "r"\nsummary = "s"\nformula = 3\n[inputs.x]\nshape = ["N"]\n',
        "unknown key": GOOD_RULE.format(name="r") + "colour = 1\n",
        "domain kind": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = ["N"]\ndomain = "weird"\n',
        "domain low>high": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = ["N"]\ndomain = {kind = "uniform", low = 2, high = 1}\n',
        "domain text": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = ["N"]\ndomain = {kind = "normal", scale = "big"}\n',
        "hyper no type": GOOD_RULE.format(name="r") + "[hyper.a]\ndefault = 1\n",
        "hyper bad default": GOOD_RULE.format(name="r") + '[hyper.a]\ntype = "int"\ndefault = "x"\n',
        "choice no choices": GOOD_RULE.format(name="r") + '[hyper.a]\ntype = "choice"\ndefault = "x"\n',
        "dims min>max": GOOD_RULE.format(name="r") + "[dims.N]\nmin = 5\nmax = 2\n",
        "dims zero": GOOD_RULE.format(name="r") + "[dims.N]\nmin = 0\n",
        "output unknown dim": 'name = "r"\nsummary = "s"\nformula = "x"\noutput = ["Q"]\n[inputs.x]\nshape = ["N"]\n',
        "output wrong shape": 'name = "r"\nsummary = "s"\nformula = "x"\noutput = ["N", "N"]\n[inputs.x]\nshape = ["N"]\n',
        "label bad kind": GOOD_RULE.format(name="r") + '[labels.t]\nkind = "weird"\n',
        "label no classes": GOOD_RULE.format(name="r") + '[labels.t]\nkind = "classes"\nshape = ["N"]\n',
        "closed form unknown": GOOD_RULE.format(name="r") + '[closed_form]\nz = "dout"\n',
        "closed form syntax": GOOD_RULE.format(name="r") + '[closed_form]\nx = "dout *"\n',
        "from_output two inputs": 'name = "r"\nsummary = "s"\nformula = "x + y"\nderivative_from_output = "1"\n[inputs.x]\nshape = ["N"]\n[inputs.y]\nshape = ["N"]\n',
        "name clash": 'name = "r"\nsummary = "s"\nformula = "x"\n[inputs.x]\nshape = ["x"]\n',
    }
    formulas = {
        "syntax": "x +", "import": "__import__('os').system('true')", "attribute": "x.__class__", "dunder": "__builtins__",
        "lambda": "(lambda: x)()", "string": "'text'", "bytes": "b'x'", "subscript": "x[0]", "walrus": "(y := x)",
        "comprehension": "[v for v in x]", "unknown function": "gamma(x)", "method call": "x.sum()", "keyword splat": "sum(**x)",
        "star args": "sum(*x)", "undefined": "x + y", "function as value": "exp + x", "huge power": "x * 2 ** 10 ** 10",
        "power tower": "x * 9 ** 9 ** 9 ** 9", "bad axis": "sum(x, axis=5)", "bad kwarg": "sum(x, axes=0)", "chained compare": "0 < x < 1",
        "matmul scalar": "x @ 2", "reshape bad": "reshape(x, [7, 7])", "boolean op": "x and x", "if expression": "x if x else x",
        "deep nesting": "(" * 300 + "x" + ")" * 300, "long sum": " + ".join(["x"] * 3000), "complex": "x * 1j", "ellipsis": "x * ...",
        "fstring": "f'{x}'", "set": "{x}", "dict": "{1: x}", "assign last": "y = x", "await": "await x", "yield": "(yield x)",
        "not": "not x", "bitwise": "x | x", "floordiv": "x // 2", "modulo": "x % 2", "shift": "x << 1", "big literal": "x * 1" + "0" * 5000,
    }
    cases = []
    for label, body in bodies.items():
        name = "r" if label not in ("name mismatch", "name uppercase") else "r"
        cases.append(Case(f"rule: {label}", ["--rules", "rules", "derive", name], files={f"rules/{name}.toml": body}))
    for label, formula in formulas.items():
        text = f'name = "f"\nsummary = "s"\nformula = """{formula}"""\n[inputs.x]\nshape = ["N", "D"]\n'
        cases.append(Case(f"formula: {label}", ["--rules", "rules", "derive", "f"], files={"rules/f.toml": text}))
    cases.append(Case("rule: a folder named like a rule", ["--rules", "rules", "rules"], files={"rules/dir.toml/x": ""}))
    cases.append(Case("rule: missing folder", ["--rules", "nope", "rules"]))
    cases.append(Case("rule: file as folder", ["--rules", "file", "rules"], files={"file": ""}))
    cases.append(Case("rule: choice code", ["--rules", "rules", "derive", "c"], files={"rules/c.toml": (
        'name = "c"\nsummary = "s"\nformula = "where(x > 0, x, onehot(p))"\noutput = ["N", "D"]\n[inputs.x]\nshape = ["N", "D"]\n'
        '[hyper.p]\ntype = "choice"\nchoices = ["__import__(\'os\')"]\ndefault = "__import__(\'os\')"\n')}))
    if hasattr(os, "mkfifo"):
        cases.append(Case("rule: fifo", ["--rules", "rules", "rules"], before=lambda d: (d / "rules").mkdir() or os.mkfifo(d / "rules/x.toml")))
    return cases


LAYER = "import numpy as np\nclass Exp:\n    def forward(self, x):\n        self.out = np.exp(x)\n        return self.out\n    def backward(self, dout):\n        return dout * self.out\n"


def target_cases() -> list[Case]:
    bad_specs = ["", ":", "a:", ":b", "layers.py", "nope.py:Exp", "layers.py:Nope", "layers.py:1bad", "no.such.module:X",
                 "os:path", "layers.py:Exp:extra", "./:Exp", "/:Exp", "layers.py:exp_forward", "sub:Exp"]
    cases = [Case(f"target: {s!r}", ["verify", s, "--rule", "exp"], exits=(2,), files={"layers.py": LAYER}) for s in bad_specs]
    broken_files = {
        "syntax error": "def broken(:\n",
        "raises at import": "raise RuntimeError('boom')\n",
        "imports a missing module": "import no_such_module_xyz\n",
        "binary": b"\x00\x01\x02",
        "not a class": "Exp = 3\n",
        "class without methods": "class Exp:\n    pass\n",
        "init needs args": "class Exp:\n    def __init__(self, a, b, c):\n        pass\n    def forward(self, x):\n        return x\n    def backward(self, d):\n        return d\n",
        "forward wrong arity": "class Exp:\n    def forward(self):\n        return 1\n    def backward(self, d):\n        return d\n",
        "returns None": "class Exp:\n    def forward(self, x):\n        return None\n    def backward(self, d):\n        return None\n",
        "returns text": "class Exp:\n    def forward(self, x):\n        return 'x'\n    def backward(self, d):\n        return 'd'\n",
        "returns wrong shape": "import numpy as np\nclass Exp:\n    def forward(self, x):\n        return np.exp(x).ravel()\n    def backward(self, d):\n        return d\n",
        "returns nan": "import numpy as np\nclass Exp:\n    def forward(self, x):\n        return x * np.nan\n    def backward(self, d):\n        return d * np.nan\n",
        "raises in backward": "import numpy as np\nclass Exp:\n    def forward(self, x):\n        return np.exp(x)\n    def backward(self, d):\n        raise ValueError('no')\n",
        "recursion": "import numpy as np\nclass Exp:\n    def forward(self, x):\n        return self.forward(x)\n    def backward(self, d):\n        return d\n",
        "exit at import": "import sys\n_ = sys.exit(0)\n" + LAYER,
        "exit in forward": "class Exp:\n    def forward(self, x):\n        raise SystemExit(0)\n    def backward(self, d):\n        return d\n",
        "os exit in backward": "import numpy as np, os\nclass Exp:\n    def forward(self, x):\n        return np.exp(x)\n    def backward(self, d):\n        os._exit(0)\n",
        "keyboard interrupt in layer": "import numpy as np\nclass Exp:\n    def forward(self, x):\n        raise MemoryError()\n    def backward(self, d):\n        return d\n",
        "seterr raise": "import numpy as np\nnp.seterr(all='raise')\nclass Exp:\n    def forward(self, x):\n        self.out = np.exp(x)\n        return self.out\n    def backward(self, d):\n        return d * self.out\n",
        "prints a lot": "import numpy as np\n_ = print('x' * 100000)\nclass Exp:\n    def forward(self, x):\n        print('{')\n        self.out = np.exp(x)\n        return self.out\n    def backward(self, d):\n        return d * self.out\n",
        "hangs": "import numpy as np\nclass Exp:\n    def forward(self, x):\n        while True:\n            pass\n    def backward(self, d):\n        return d\n",
    }
    # a forward returning None is exit 2: no output to judge, derivcheck could not read the layer as its convention says
    verdict_due = {"returns text", "returns wrong shape", "returns nan", "raises in backward", "recursion",
                   "exit at import", "exit in forward", "os exit in backward", "keyboard interrupt in layer", "hangs"}
    passes = {"seterr raise", "prints a lot"}
    for label, body in broken_files.items():
        exits = (1,) if label in verdict_due else (0,) if label in passes else (2,)
        # the endless loop burns its whole limit: 3 s (set by hand) is ten times what exp's reference, made first, needs
        limit = "3" if label == "hangs" else "5"
        args = ["verify", "layers.py:Exp", "--rule", "exp", "--trials", "2", "--timeout", limit]
        if label == "prints a lot":
            args += ["--format", "json"]
        cases.append(Case(f"layer: {label}", args, exits=exits, files={"layers.py": body},
                          want=f"did not finish within {limit} s" if label == "hangs" else None))
    return cases


def option_cases() -> list[Case]:
    base = ["verify", f"{EXAMPLES}/dlfs1/layers.py:Affine"]
    bad = [
        ["--shape", "N"], ["--shape", "N="], ["--shape", "N=0"], ["--shape", "N=-1"], ["--shape", "N=a"], ["--shape", "N=1e9"],
        ["--shape", "Q=2"], ["--shape", "=2"], ["--shape", ",,,"], ["--hyper", "axis"], ["--hyper", "=1"], ["--hyper", "nope=1"],
        ["--dtype", "float16"], ["--seed", "-1"], ["--seed", "x"], ["--trials", "0"], ["--steps", "0"], ["--timeout", "0"],
        ["--timeout", "-1"], ["--timeout", "x"], ["--style", "keras"], ["--format", "xml"], ["--rule", "nope"],
        ["--rule", "../../etc/passwd"], ["--rule", "/no/such/rule.toml"], ["--rule", ""], ["--trials", "-5"],
        ["--shape", "N=2,N=3"], ["--rule", "sum", "--hyper", "axis=x"], ["--rule", "sum", "--hyper", "keepdims=maybe"],
        ["--rule", "transpose", "--hyper", "axes=0,0,1"], ["--rule", "reshape", "--hyper", "shape=7,7"],
        ["--rule", "softmax_with_loss", "--hyper", "labels=bogus"],
    ]
    cases = [Case(f"option: {' '.join(b)}", base + b) for b in bad]
    cases += [Case(f"command: {' '.join(a)}", a) for a in (
        ["derive"], ["derive", "affine", "--shape", "N=2"], ["derive", "affine", "--wrt", "q"], ["explain"], ["explain", "nope"],
        ["explain", "affine", "--shape", "N=0,D=1,H=1"], ["nosuchcommand"], ["check", "--group", "nope", str(EXAMPLES)],
        ["check", "/no/such/folder"], ["--config", "/no/such.toml", "rules"], ["verify"], ["check", "-j", "0", str(EXAMPLES)],
    )]
    return cases


def config_cases() -> list[Case]:
    layer = '[[layers]]\ntarget = "layers.py:Exp"\nrule = "exp"\n'
    texts = {
        "not toml": "[[layers]\n", "unknown key": "colour = 1\n" + layer, "layers not list": "layers = 3\n",
        "no target": '[[layers]]\nrule = "exp"\n', "target not string": "[[layers]]\ntarget = 3\n",
        "missing file": '[[layers]]\ntarget = "missing.py:Exp"\n', "missing name": '[[layers]]\ntarget = "layers.py:Nope"\nrule = "exp"\n',
        "bad rule": '[[layers]]\ntarget = "layers.py:Exp"\nrule = "nope"\n', "rule not string": '[[layers]]\ntarget = "layers.py:Exp"\nrule = 1\n',
        "hyper not table": layer + "hyper = 3\n", "bad hyper": layer + "hyper = { axis = 1 }\n", "bad style": layer + 'style = "keras"\n',
        "bad expect": layer + 'expect = "maybe"\n', "bad dtype": layer + 'dtypes = ["float16"]\n', "dtypes empty": layer + "dtypes = []\n",
        "negative seed": "seed = -1\n" + layer, "zero trials": "trials = 0\n" + layer, "bool steps": "steps = true\n" + layer,
        "bad strict": 'strict = "yes"\n' + layer, "zero timeout": "timeout = 0\n" + layer, "text timeout": 'timeout = "1"\n' + layer,
        "rules missing folder": 'rules = ["nope"]\n' + layer, "rules not list": "rules = 3\n" + layer,
        "cache-dir not string": "cache-dir = 3\n" + layer, "no layers": "seed = 0\n", "group not string": layer + "group = 3\n",
        "duplicate ids": layer + layer, "layer unknown key": layer + "colour = 1\n", "binary": b"\x00\xff",
        "pyproject broken": None,
    }
    cases = []
    for label, text in texts.items():
        files = {"layers.py": LAYER}
        if label == "pyproject broken":
            files["pyproject.toml"] = "[tool.derivcheck]\n[[tool.derivcheck.layers]\n"
        else:
            files["derivcheck.toml"] = text
        cases.append(Case(f"config: {label}", ["check", "."], files=files))
    return cases


def cache_cases() -> list[Case]:
    def poison(payload: bytes, sign: bool):
        def before(folder: Path):
            import hashlib
            import hmac

            from derivcheck.engine import cache, reference
            from derivcheck.engine.rules import load_rule

            rule = load_rule("exp")
            key = cache.entry_key(reference.cache_key(rule, rule.resolve_hyper()))
            path = folder / "cache" / key[:2] / f"{key}.json"
            path.parent.mkdir(parents=True, mode=0o700)
            (folder / "cache").chmod(0o700)
            if sign:  # signed with the very key the run will use: only the decoder's own checks can refuse it
                home = folder / "home" / "derivcheck"
                home.mkdir(parents=True, mode=0o700)
                secret = os.urandom(32)
                (home / "secret.key").write_bytes(secret)
                (home / "secret.key").chmod(0o600)
                path.write_bytes(hmac.new(secret, payload, hashlib.sha256).hexdigest().encode() + b"\n" + payload)
            else:
                path.write_bytes(payload)
        return before

    def entry(**parts):
        return json.dumps({"format": 2, "key": "", "rule": "exp", **parts}).encode()

    payloads = {
        "null": b"null", "list": b"[]", "number": b"3", "garbage": b"\x00\xff", "empty": b"", "truncated": b'{"format":',
        "deep": b"[" * 100000 + b"]" * 100000, "huge int": b'{"x": ' + b"9" * 100000 + b"}",
        "wrong key": entry(out=["I", "1"]), "huge power": entry(out=["Pow", ["I", "3"], ["I", "10000000000"]]),
        "foreign node": entry(out=["eval", ["S", "x"]]), "q zero": entry(out=["Q", "1", "0"]),
    }
    target = f"{EXAMPLES}/dezero_style/functions.py:Exp"
    cases = []
    for label, payload in payloads.items():
        for sign in (False, True):
            cases.append(Case(f"cache: {label}{' (signed)' if sign else ''}", ["verify", target, "--rule", "exp", "--trials", "2"],
                              exits=(0,), before=poison(payload, sign), want="verdict: PASS"))
    cases.append(Case("cache: folder writable by others", ["verify", target, "--rule", "exp"],
                      before=lambda d: (d / "cache").mkdir() or (d / "cache").chmod(0o777), want="can be written by other users"))
    cases.append(Case("cache: folder is a file", ["verify", target, "--rule", "exp", "--trials", "2"],
                      exits=(0,), before=lambda d: (d / "cache").write_text("")))
    return cases


def all_cases() -> list[Case]:
    return rule_cases() + target_cases() + option_cases() + config_cases() + cache_cases()


class Hang(Exception):
    pass


def run_case(case: Case, folder: Path) -> str | None:
    """None when the case ends as it should, else what went wrong (run in this process, as click's tests do)."""
    from click.testing import CliRunner

    from derivcheck.engine import cache
    from derivcheck.run.cli import main

    for rel, body in case.files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
    if case.before:
        case.before(folder)
    env = {"DERIVCHECK_CACHE_DIR": str(folder / "cache"), "XDG_CACHE_HOME": str(folder / "home"), "DERIVCHECK_RULES": None}
    here = os.getcwd()

    def alarm(signum, frame):
        raise Hang

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    try:
        os.chdir(folder)
        cache.forget()  # this process's key and folder checks belong to the previous case's environment
        result = CliRunner().invoke(main, [str(a) for a in case.args], env=env, catch_exceptions=True)
    except Hang:
        return f"hang: no end within {CASE_SECONDS} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(here)
        cache.forget()
    out, err = result.stdout, result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"uncaught {type(result.exception).__name__}: {result.exception}"
    if "Traceback" in out + err:
        return f"traceback (exit {result.exit_code})"
    if "internal error" in err:
        return f"internal error: {err.strip()}"
    if result.exit_code not in case.exits:
        return f"exit {result.exit_code}, expected {case.exits}: {err.strip()[:300] or out[-300:]}"
    if result.exit_code == 2 and (len(err.strip().splitlines()) != 1 or not err.strip()):
        return f"exit 2 without one line of reason: {err!r}"
    if case.want and case.want not in out + err:
        return f"missing {case.want!r}: {err.strip()[:300] or out[-300:]}"
    if "--format" in case.args and "json" in case.args and result.exit_code in (0, 1):
        try:
            json.loads(out)
        except ValueError:
            return "the JSON output does not parse"
    return None


def run_all(cases=None) -> tuple[int, list[tuple[str, str]]]:
    cases = all_cases() if cases is None else cases
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, case in enumerate(cases):
            folder = Path(scratch) / f"case{i}"
            folder.mkdir()
            problem = run_case(case, folder)
            if problem is not None:
                problems.append((case.name, problem))
    return len(cases), problems


def main() -> int:
    sys.path.insert(0, str(ROOT))
    t = time.monotonic()
    count, problems = run_all()
    for name, problem in problems:
        print(f"{name}: {problem}")
    print(f"fuzz: {count} malformed cases, {len(problems)} problems ({time.monotonic() - t:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
