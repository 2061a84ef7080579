"""The layer's process is shut in where Linux lets an ordinary user do it (run/sandbox.py): it cannot read
the cache key or the cache, write derivcheck's own files, or see and signal derivcheck's processes."""
import json
import os
import sys
import textwrap

import pytest
from runner import process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")

PROBE = textwrap.dedent('''
    import json, os, signal
    from pathlib import Path
    import numpy as np

    def probe():
        import derivcheck
        found = {}
        key = Path(os.environ["XDG_CACHE_HOME"]) / "derivcheck" / "secret.key"
        try:
            key.read_bytes()
            found["key"] = "read"
        except OSError as exc:
            found["key"] = type(exc).__name__
        found["cache"] = sorted(os.listdir(os.environ["DERIVCHECK_CACHE_DIR"]))
        try:
            Path(derivcheck.__file__).with_name(f"written-by-{Path.cwd().name}.txt").write_text("x")
            found["package"] = "written"
        except OSError as exc:
            found["package"] = type(exc).__name__
        found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        found["parent"] = os.getppid()
        return json.dumps(found)

    class Relu:
        def forward(self, x):
            raise RuntimeError("FOUND" + probe() + "END")

        def backward(self, dout):
            return dout
''')


def _available() -> bool:
    """Whether this machine lets a process shut itself in (a fork tries)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from derivcheck.run import sandbox

            sandbox.shut_in([], [], pids=False)
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _found(tmp_path, *options, env=None):
    (tmp_path / "layers.py").write_text(PROBE)
    home = tmp_path / "home"
    (home / "derivcheck").mkdir(parents=True, mode=0o700)
    (home / "derivcheck" / "secret.key").write_bytes(b"k" * 32)
    (home / "derivcheck" / "secret.key").chmod(0o600)  # as derivcheck makes it
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "entry.json").write_text("{}")
    old = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "DERIVCHECK_SANDBOX")}
    os.environ["XDG_CACHE_HOME"] = str(home)
    os.environ.update(env or {})
    try:
        p = process("verify", "layers.py:Relu", "--rule", "relu", "--trials", "1", *options, cwd=tmp_path, cache=cache)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if "FOUND" not in p.stdout:
        return p, None
    return p, json.loads(p.stdout.split("FOUND", 1)[1].split("END", 1)[0])


def test_the_layer_s_process_sees_no_key_no_cache_and_no_process_of_derivcheck(tmp_path):
    if not _available():
        pytest.skip("this machine does not allow unprivileged user namespaces")
    import derivcheck

    p, found = _found(tmp_path)
    assert p.returncode == 1 and found is not None, (p.stdout[-2000:], p.stderr[-2000:])
    assert found["key"] == "FileNotFoundError" and found["cache"] == [], found
    written = os.path.join(os.path.dirname(derivcheck.__file__), f"written-by-{tmp_path.name}.txt")
    assert found["package"] == "OSError" and not os.path.exists(written), found
    assert found["pids"] == [1, 2] and found["parent"] == 1, found  # only its namespace's first process and itself


def test_sandbox_off_leaves_the_layer_as_it_was(tmp_path):
    """DERIVCHECK_SANDBOX=0 turns it off: the same probe reads the key (what the sandbox prevents)."""
    import derivcheck

    try:
        p, found = _found(tmp_path, env={"DERIVCHECK_SANDBOX": "0"})
    finally:
        written = os.path.join(os.path.dirname(derivcheck.__file__), f"written-by-{tmp_path.name}.txt")
        if os.path.exists(written):
            os.unlink(written)
    assert found is not None and found["key"] == "read" and "entry.json" in found["cache"], (found, p.stdout[-2000:])


def test_a_cache_folder_not_made_yet_is_hidden_too(tmp_path):
    """On a fresh machine the key's folder does not exist yet: the layer must not be able to make it, and a key in
    it, that the next run would trust. It is made before the layer's process shuts itself in, and hidden."""
    if not _available():
        pytest.skip("this machine does not allow unprivileged user namespaces")
    (tmp_path / "layers.py").write_text(PROBE.replace('found["cache"] = sorted(os.listdir(os.environ["DERIVCHECK_CACHE_DIR"]))',
                                                      'key.parent.mkdir(parents=True, exist_ok=True); key.write_bytes(b"x" * 32)'))
    home = tmp_path / "fresh-home"
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    try:
        p = process("verify", "layers.py:Relu", "--rule", "relu", "--trials", "1", cwd=tmp_path, cache=tmp_path / "cache")
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
    assert p.returncode == 1 and "FOUND" in p.stdout, (p.stdout[-2000:], p.stderr[-2000:])
    key = home / "derivcheck" / "secret.key"
    assert not key.exists() or key.read_bytes() != b"x" * 32, "the layer planted the key a later run would trust"


def test_the_gate_s_layers_are_shut_in_too(tmp_path):
    """`check` forks the layers' processes of one module from a process that imported it once (a zygote):
    that import and each layer's process are shut in as well."""
    if not _available():
        pytest.skip("this machine does not allow unprivileged user namespaces")
    probe = PROBE.replace("import numpy as np", "import numpy as np\nAT_IMPORT = None")
    probe = probe.replace("class Relu:", "try:\n    AT_IMPORT = probe()\nexcept Exception as exc:\n    AT_IMPORT = repr(exc)\n\n\nclass Relu:")
    probe = probe.replace('raise RuntimeError("FOUND" + probe() + "END")',
                          'raise RuntimeError("FOUND" + probe() + "END IMPORT" + AT_IMPORT + "DONE")')
    (tmp_path / "layers.py").write_text(probe + "\n\nclass Relu2(Relu):\n    pass\n")
    (tmp_path / "derivcheck.toml").write_text(textwrap.dedent("""
        dtypes = ["float64"]
        trials = 1
        [[layers]]
        target = "layers.py:Relu"
        rule = "relu"
        [[layers]]
        target = "layers.py:Relu2"
        rule = "relu"
    """))
    home = tmp_path / "home"
    (home / "derivcheck").mkdir(parents=True, mode=0o700)
    (home / "derivcheck" / "secret.key").write_bytes(b"k" * 32)
    (home / "derivcheck" / "secret.key").chmod(0o600)
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    import derivcheck

    try:
        p = process("check", str(tmp_path / "derivcheck.toml"), "--format", "json", "-j", "2", cwd=tmp_path,
                    cache=tmp_path / "cache")
    finally:
        written = os.path.join(os.path.dirname(derivcheck.__file__), f"written-by-{tmp_path.name}.txt")
        if os.path.exists(written):  # only where the sandbox failed: the assertions below say so
            os.unlink(written)
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
    messages = [c["message"] for r in json.loads(p.stdout)["results"] for c in r["checks"] if "FOUND" in c.get("message", "")]
    assert len(messages) == 2, p.stdout[-3000:]
    for m in messages:
        found = json.loads(m.split("FOUND", 1)[1].split("END", 1)[0])
        at_import = json.loads(m.split("END IMPORT", 1)[1].split("DONE", 1)[0])
        assert found["key"] == "FileNotFoundError" and found["pids"] == [1, 2], found
        assert at_import["key"] == "FileNotFoundError" and at_import["package"] == "OSError", at_import
