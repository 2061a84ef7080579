"""pytest plugin: the layers bound in a derivcheck configuration become test items.

Registered through the ``pytest11`` entry point. pytest collects every
``derivcheck.toml``, and every ``pyproject.toml`` with ``[tool.derivcheck]``,
in the folders it walks (``pytest``, ``pytest derivcheck.toml``). Each binding
and dtype becomes an item with the binding's id (``Affine-affine-float64``)
and the ``derivcheck`` marker. A failing item shows the same report as
``derivcheck verify``. A layer marked ``expect = "fail"`` is an xfail; if it
passes, the run fails.

Loading the plugin is cheap: SymPy is imported only when an item runs.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("derivcheck")
    group.addoption("--derivcheck-seed", type=int, default=None, help="Override the seed of every derivcheck layer.")
    group.addoption("--derivcheck-group", action="append", default=[], metavar="NAME",
                    help="Only derivcheck layers of this group (repeatable).")
    group.addoption("--no-derivcheck", action="store_true", default=False,
                    help="Do not collect derivcheck configurations as tests.")


def pytest_configure(config):
    config.addinivalue_line("markers", "derivcheck: a layer verified by derivcheck against its rule")


def pytest_collect_file(file_path, parent):
    if parent.config.getoption("no_derivcheck") or file_path.name not in ("derivcheck.toml", "pyproject.toml"):
        return None
    from derivcheck.run.config import has_derivcheck_table

    if has_derivcheck_table(file_path):
        return DerivcheckFile.from_parent(parent, path=file_path)
    return None


class LayerFailed(Exception):
    """A layer's verification failed; carries the report."""

    def __init__(self, report):
        super().__init__(report.verdict)
        self.report = report


class ConfigProblem(Exception):
    """derivcheck could not run the layer (bad target, rule, hyperparameter)."""


class DerivcheckFile(pytest.File):
    def collect(self):
        from derivcheck.run.config import load_config
        from derivcheck.errors import DerivcheckError
        from derivcheck.run.gate import select

        try:
            cfg = load_config(self.path)
            bindings = select(cfg, self.config.getoption("derivcheck_group"))
        except DerivcheckError as exc:
            raise self.CollectError(str(exc)) from None
        for b in bindings:
            yield DerivcheckItem.from_parent(self, name=b.id, binding=b, cfg=cfg)


class DerivcheckItem(pytest.Item):
    def __init__(self, *, binding, cfg, **kwargs):
        super().__init__(**kwargs)
        self.binding, self.cfg = binding, cfg
        self.add_marker("derivcheck")
        if binding.expect == "fail":
            self.add_marker(pytest.mark.xfail(strict=True, raises=LayerFailed, reason="expect = \"fail\""))

    def runtest(self):
        from derivcheck.run.gate import run_binding, use_config

        use_config(self.cfg)
        result = run_binding(self.binding, self.cfg.rules, self.config.getoption("derivcheck_seed"))
        if result.report is None:
            raise ConfigProblem(result.error)
        if result.mismatch:  # an expected failure caught elsewhere than the catalogue says: a real failure
            raise ConfigProblem(f"{self.binding.id} fails as expected, but {result.mismatch}")
        if result.report.verdict != "pass":
            raise LayerFailed(result.report)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, LayerFailed):
            from derivcheck.present.report import text

            return text(excinfo.value.report)
        if isinstance(excinfo.value, ConfigProblem):
            return f"derivcheck could not run this layer: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"derivcheck {self.binding.id} ({self.binding.where})"
