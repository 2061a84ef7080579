"""Project configuration: ``[tool.derivcheck]`` in pyproject.toml, or derivcheck.toml.

Found by walking up from the current folder. Paths in it are relative to the
file. Unknown keys are refused with the file, the key and what is allowed.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DerivcheckError

KEYS = {
    "rules": "list of folders with rule files of your own",
    "cache-dir": "folder for the derivation cache",
}


@dataclass
class Config:
    path: Path | None = None
    rules: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    raw: dict = field(default_factory=dict)


def find_config(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        own = folder / "derivcheck.toml"
        if own.is_file():
            return own
        py = folder / "pyproject.toml"
        if py.is_file() and "tool" in _read(py) and "derivcheck" in _read(py)["tool"]:
            return py
    return None


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DerivcheckError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise DerivcheckError(f"{path}: cannot read: {exc.strerror}") from None


def load_config(path: Path | None = None, extra_keys: dict | None = None) -> Config:
    """The configuration at ``path`` (or found from the current folder); empty if none."""
    path = path or find_config()
    if path is None:
        return Config()
    data = _read(path)
    table = data.get("tool", {}).get("derivcheck", {}) if path.name == "pyproject.toml" else data
    prefix = "[tool.derivcheck]" if path.name == "pyproject.toml" else "derivcheck.toml"
    allowed = dict(KEYS, **(extra_keys or {}))
    for key in table:
        if key not in allowed:
            options = "; ".join(f"{k}: {v}" for k, v in allowed.items())
            raise DerivcheckError(f"{path}: unknown key '{key}' in {prefix} (allowed: {options})")
    base = path.parent
    rules = table.get("rules", [])
    if isinstance(rules, str):
        rules = [rules]
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise DerivcheckError(f"{path}: 'rules' in {prefix} must be a list of folder paths, as in rules = [\"my_rules\"]")
    cache_dir = table.get("cache-dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise DerivcheckError(f"{path}: 'cache-dir' in {prefix} must be a folder path string")
    return Config(
        path=path,
        rules=[(base / r) for r in rules],
        cache_dir=(base / cache_dir) if cache_dir else None,
        raw=table,
    )
