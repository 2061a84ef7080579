"""The ``derivcheck`` command line."""
from __future__ import annotations

import sys
from pathlib import Path
import traceback

import click

from derivcheck import DISTRIBUTION
from derivcheck.check.conventions.registry import STYLES
from derivcheck.errors import DerivcheckError
from derivcheck.results import visible


class Context:
    def __init__(self, debug: bool, rule_dirs: tuple, config_path):
        from derivcheck.run.config import load_config
        from derivcheck.run.gate import use_config

        self.debug = debug
        self.config = load_config(config_path)
        self.rule_dirs = [*rule_dirs, *self.config.rules]
        use_config(self.config)


def parse_pairs(text: str | None, what: str) -> dict[str, str]:
    """``N=2,D=3`` -> {"N": "2", "D": "3"}."""
    pairs = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DerivcheckError(f"{what} must look like N=2,D=3 (got '{part.strip()}')")
        if key.strip() in pairs:
            raise DerivcheckError(f"{what} sets {key.strip()} twice")
        pairs[key.strip()] = value.strip()
    if text is not None and not pairs:
        raise DerivcheckError(f"{what} must name at least one size, as in N=2,D=3 (got '{text}')")
    return pairs


def parse_hypers(items) -> dict[str, str]:
    """Repeated ``--hyper K=V``; V may hold commas (``axes=1,0,2``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DerivcheckError(f"--hyper takes NAME=VALUE (got '{item}')")
        out[key.strip()] = value.strip()
    return out


INTERNAL_ERROR = 3  # a bug of derivcheck's own, apart from bad input (2)


class Group(click.Group):
    """Turns DerivcheckError and usage errors into one line on stderr and exit code 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"derivcheck: error: {exc.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"derivcheck: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("derivcheck: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # `derivcheck derive ... | head`: the reader has gone
            sys.stderr.close()
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("derivcheck: interrupted", err=True)
            sys.exit(130)
        except DerivcheckError as exc:
            if ctx.meta.get("derivcheck.debug"):
                traceback.print_exc()
            click.echo(f"derivcheck: error: {visible(exc)}", err=True)
            sys.exit(2)
        except Exception as exc:  # a bug of ours: still one line unless --debug
            from derivcheck.run.isolate import WorkerCrashed

            if ctx.meta.get("derivcheck.debug"):
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            if isinstance(exc, WorkerCrashed):
                if ctx.meta.get("derivcheck.debug"):
                    click.echo(str(exc), err=True)
                click.echo(f"derivcheck: internal error in the worker: {first} (rerun with --debug for the traceback; please report it)", err=True)
            else:
                click.echo(f"derivcheck: internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback; please report it)", err=True)
            sys.exit(INTERNAL_ERROR)


@click.group(cls=Group)
@click.option("--rules", "rule_dirs", multiple=True, type=click.Path(file_okay=False), help="Extra folder of rule files (repeatable); first wins over the built-in catalog.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True), help="Configuration file (default: derivcheck.toml or pyproject.toml found upwards).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name=DISTRIBUTION)
@click.pass_context
def main(ctx, rule_dirs, config_path, debug):
    """Verify NumPy layers against exact, symbolic derivatives."""

    ctx.meta["derivcheck.debug"] = debug
    ctx.obj = Context(debug, rule_dirs, Path(config_path) if config_path else None)


@main.command("rules")
@click.argument("name", required=False)
@click.pass_obj
def rules_cmd(obj, name):
    """List the rules with their summaries, inputs and hyperparameters.

    With NAME, print that rule's file: a start for a rule of your own
    (`derivcheck rules affine > myrules/dropout.toml`; docs/rules.md says what goes in it).
    """
    from derivcheck.engine.rules import list_rules, load_rule

    if name is not None:
        rule = load_rule(name, obj.rule_dirs)
        click.echo(Path(rule.path).read_text(encoding="utf-8"), nl=False)
        return
    errors: list = []
    for name, rule in sorted(list_rules(obj.rule_dirs, errors).items()):
        click.echo(f"{name}: {rule.summary}")
        ins = ", ".join(f"{n}[{','.join(map(str, i.shape))}]" for n, i in rule.inputs.items())
        labels = ", ".join(f"{n}[{','.join(map(str, l.shape))}] ({l.kind})" for n, l in rule.labels.items())
        click.echo(f"    inputs: {ins}" + (f"; labels: {labels}" if labels else ""))
        if rule.hyper:
            hs = ", ".join(
                f"{n}: {h.type}" + ("" if h.type == "dim" else f" = {h.default!r}".replace("None", "none"))
                for n, h in rule.hyper.items()
            )
            click.echo(f"    hyper: {hs}")
        if not rule.path.startswith(str(_builtin())):
            click.echo(f"    from: {rule.path}")
    if errors:  # the rest is listed; each file that could not be read is named once
        for exc in errors:
            click.echo(f"derivcheck: error: {visible(exc)}", err=True)
        sys.exit(2)


def _builtin():
    from derivcheck.engine.rules import builtin_rules_dir

    return builtin_rules_dir()


MAX_PRINTED = 20_000  # set by hand: the Jacobian entries derive computes element by element and prints


@main.command("derive")
@click.argument("rule_name", metavar="RULE")
@click.option("--shape", "shape", help="Sizes of the rule's dimensions, e.g. N=2,D=3,H=2 (default: small distinct sizes).")
@click.option("--hyper", "hypers", multiple=True, metavar="NAME=VALUE", help="Hyperparameter (repeatable); lists as 1,0,2, booleans as true/false.")
@click.option("--wrt", multiple=True, help="Differentiate with respect to this input only (repeatable; default: all).")
@click.option("--format", "fmt", type=click.Choice(["text", "latex", "json"]), default="text", show_default=True)
@click.option("--simplify", is_flag=True, help="Simplify each entry for reading (slower; the values are the same).")
@click.pass_obj
def derive_cmd(obj, rule_name, shape, hypers, wrt, fmt, simplify):
    """Print the exact Jacobian of RULE at a concrete shape."""
    from derivcheck.present import render
    from derivcheck.engine.rules import load_rule

    rule = load_rule(rule_name, obj.rule_dirs)
    sizes = parse_pairs(shape or rule.example_shape(), "--shape")
    hyper = parse_hypers(hypers)
    for d, n in rule.pinned_dims(hyper).items():  # repeat's N: a hyperparameter that is a size
        if shape and d in sizes and int(sizes[d]) != n:
            raise DerivcheckError(f"--shape sets {d}={sizes[d]}, but a hyperparameter sets {d}={n}")
        sizes[d] = n
    counts = rule.element_counts(rule.resolve_dims(sizes))
    entries = counts.get("output", 1) * sum(counts.get(n, 0) for n in rule.inputs)
    if entries > MAX_PRINTED:  # one symbolic entry each, derived and printed: beyond this, neither ends soon or reads
        raise DerivcheckError(f"the Jacobian at {', '.join(f'{k}={v}' for k, v in sizes.items())} has {entries:,} entries, "
                              f"more than derive prints ({MAX_PRINTED:,}): give smaller sizes (--shape); `derivcheck "
                              f"verify` checks layers at any size")
    d = rule.at(hyper=hyper, **sizes)
    for name in wrt:
        d.check_input(name)
    wrt = list(wrt) or list(rule.inputs)
    renderer = {"text": render.jacobians_text, "latex": render.jacobians_latex, "json": render.jacobians_json}[fmt]
    text = renderer(d, wrt, simplify=simplify)
    click.echo(text)


@main.command("verify")
@click.argument("target")
@click.option("--rule", "rule_name", help="The rule to check against (default: the target's name in snake_case).")
@click.option("--style", type=click.Choice(STYLES), help="Layer convention (default: detected).")
@click.option("--hyper", "hypers", multiple=True, metavar="NAME=VALUE", help="Hyperparameter for the rule and the layer (repeatable).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Trial k uses seed + k.")
@click.option("--trials", type=click.IntRange(min=1), default=5, show_default=True, help="Shapes to try.")
@click.option("--steps", type=click.IntRange(min=1), default=2, show_default=True, help="Forward/backward passes per trial on one layer instance.")
@click.option("--shape", help="Fix the sizes, e.g. N=3,D=3,H=3 (default: distinct, equal, size-1, then random).")
@click.option("--strict", is_flag=True, help="Warnings (side effects, dtypes) fail too.")
@click.option("--kinks", is_flag=True, help="Also report the layer's derivative at the rule's kinks (relu at 0).")
@click.option("--no-stress", is_flag=True, help="Skip the extreme-input (numerical stability) probe.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds the check may take (default: the config's timeout, else 120); past it the layer fails.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
def verify_cmd(obj, target, rule_name, style, hypers, dtype, seed, trials, steps, shape, strict, kinks, no_stress, timeout, fmt):
    """Verify a layer's forward and backward passes against a rule.

    TARGET is path/to/file.py:Name or package.module:Name. The layer runs in
    a worker process of its own, with a time limit. Exit 0 when verified, 1
    when the layer is wrong (an exit, crash or hang in it included), 2 when it
    could not run, 3 for an internal error, 130 when interrupted.
    """
    from derivcheck.present import report as render
    from derivcheck.check.loading import check_target, model_convention
    from derivcheck.run.isolate import verify_isolated
    from derivcheck.check.targets import rule_for, variants_for

    try:
        check_target(target)  # a typo in the target is the first thing to report
        if rule_name is None and model_convention(target):  # a whole network: each layer against its rule
            if hypers or style or kinks:
                raise DerivcheckError(f"{target} is a network: --hyper, --style and --kinks are for one layer")
            rep = verify_isolated(target, None, timeout=timeout or obj.config.raw.get("timeout"), dtype=dtype, seed=seed,
                                  trials=trials, steps=steps, shape=parse_pairs(shape, "--shape") if shape else None,
                                  strict=strict, rule_dirs=[str(d) for d in obj.rule_dirs])
            click.echo(render.as_json(rep) if fmt == "json" else render.text(rep))
            sys.exit(rep.exit_code)
        rule = rule_for(rule_name, target, obj.rule_dirs)
        rep = verify_isolated(target, rule, timeout=timeout or obj.config.raw.get("timeout"), hyper=parse_hypers(hypers),
                              style=style, dtype=dtype, seed=seed, trials=trials, steps=steps,
                              shape=parse_pairs(shape, "--shape") if shape else None, strict=strict,
                              kinks=kinks, stress=not no_stress, variants=variants_for(rule_name, rule, obj.rule_dirs))
    except DerivcheckError as exc:
        if fmt == "json":
            click.echo(render.error_json(target, rule_name, str(exc)))
        raise
    click.echo(render.as_json(rep) if fmt == "json" else render.text(rep))
    sys.exit(rep.exit_code)


@main.command("explain")
@click.argument("rule_name", metavar="RULE", required=False)
@click.option("--rule", "rule_opt", help="The rule (with --layer, when it cannot be guessed from the layer's name).")
@click.option("--shape", help="Sizes for the Jacobian section (default: tiny, 2 at most).")
@click.option("--hyper", "hypers", multiple=True, metavar="NAME=VALUE")
@click.option("--layer", "layer", metavar="FILE:Name", help="Put the formula at a failing layer's worst element next to its value.")
@click.option("--model", "model", metavar="FILE:Name", help="A network: its layers' rules as one chain, forward and backward.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "latex"]), default="text", show_default=True)
@click.pass_obj
def explain_cmd(obj, rule_name, rule_opt, shape, hypers, layer, model, fmt):
    """Show how RULE's derivatives come about: graph, Jacobian, closed forms (or a network's, with --model)."""
    from derivcheck.check.loading import check_target, KNOWN_NETWORKS, model_convention
    from derivcheck.present.explanation import explain, explain_layer, explain_model
    from derivcheck.run.isolate import verify_isolated
    from derivcheck.check.targets import rule_for

    if model:
        if rule_name or rule_opt or layer or shape or hypers or fmt != "text":
            raise DerivcheckError("--model takes no rule, --layer, --shape, --hyper or --format (its text is the chain of its layers)")
        check_target(model)
        if not model_convention(model):
            raise DerivcheckError(f"{model} is not a network derivcheck knows: {KNOWN_NETWORKS}")
        rep = verify_isolated(model, None, timeout=obj.config.raw.get("timeout"), trials=1, steps=1,  # learns its layers
                              rule_dirs=[str(d) for d in obj.rule_dirs])
        click.echo(explain_model(model, rep, obj.rule_dirs))
        return
    name = rule_name or rule_opt
    if name is None and not layer:
        raise DerivcheckError("name a rule (derivcheck explain affine) or a layer (--layer file.py:Name)")
    if layer:
        check_target(layer)  # a typo in the layer is the first thing to report (its code runs in the worker only)
    rule = rule_for(name, layer or "", obj.rule_dirs)
    hyper = parse_hypers(hypers)
    sizes = parse_pairs(shape, "--shape") if shape else None
    exp = explain(rule, shape=sizes, hyper=hyper)
    if layer:
        rep = verify_isolated(layer, rule, hyper=hyper, shape=sizes)  # the layer runs in a worker, as for verify
        explain_layer(exp, layer, rule, rep)
    click.echo(exp.render(fmt))


@main.command("check")
@click.argument("path", required=False, type=click.Path(exists=True))
@click.option("--group", "groups", multiple=True, help="Only the layers of this group (repeatable).")
@click.option("--seed", type=click.IntRange(min=0), help="Override every layer's seed.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Layer checks run at once, each in its own worker process (default: the number of CPUs).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds each layer check may take (default: the config's, else 120).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--junit-xml", "junit", type=click.Path(dir_okay=False), help="Also write JUnit XML here.")
@click.pass_obj
def check_cmd(obj, path, groups, seed, jobs, timeout, fmt, junit):
    """Verify every layer bound in a configuration (the CI gate).

    PATH is a derivcheck.toml, a pyproject.toml with [tool.derivcheck], or a
    folder to look in (default: found upwards from here). Exit 0 when every
    layer is as expected, 1 when any is not, 2 for bad configuration.
    """
    import json
    from pathlib import Path

    from derivcheck.run import gate
    from derivcheck.present import report as render
    from derivcheck.run.config import load_config

    if path:
        config = load_config(Path(path), require=True)
    elif obj.config.path is not None:  # --config FILE, or the one found from here
        config = obj.config
    else:
        config = load_config(None, require=True)
    gate.use_config(config)
    rule_dirs = [*obj.rule_dirs, *config.rules]
    bindings = gate.select(config, groups)
    if not bindings:
        raise DerivcheckError(f"{config.path} binds no layers: add [[layers]] tables with a target each")
    gate.validate(bindings, rule_dirs)
    import os

    jobs = jobs or os.cpu_count() or 1
    if sys.stderr.isatty():
        with click.progressbar(length=len(bindings), label="derivcheck", file=sys.stderr) as bar:
            results = gate.run_all(bindings, rule_dirs, seed, timeout, jobs, done=lambda r, i, n: bar.update(1))
    else:
        results = gate.run_all(bindings, rule_dirs, seed, timeout, jobs,
                               done=lambda r, i, n: click.echo(f"[{i}/{n}] {r.binding.id}: {r.verdict}", err=True))
    bad = [r for r in results if not r.ok]
    if fmt == "json":
        click.echo(json.dumps({
            "config": str(config.path),
            "results": [{"id": r.binding.id, "group": r.binding.group, "expect": r.binding.expect, "ok": r.ok,
                         **({"mismatch": r.mismatch} if r.mismatch else {}),
                         **(r.report.to_json() if r.report else {"verdict": "error", "error": r.error})} for r in results],
            "summary": {"total": len(results), "ok": len(results) - len(bad), "not_ok": len(bad),
                        "expected_failures": sum(1 for r in results if r.ok and r.binding.expect == "fail")},
        }, indent=2, default=str))
    else:
        click.echo(_summary_table(results))
        for r in results:
            if r.verdict != "pass":
                click.echo("")
                click.echo(f"--- {r.binding.id} ({r.binding.where})" + (" [expected to fail]" if r.ok else "")
                           + (f" [{r.mismatch}]" if r.mismatch else ""))
                click.echo(render.text(r.report) if r.report else r.error)
        expected = sum(1 for r in results if r.ok and r.binding.expect == "fail")
        click.echo(f"\n{len(results)} layer checks: {len(results) - len(bad) - expected} passed, "
                   f"{expected} failed as expected, {len(bad)} not as expected")
    could_not_run = [r for r in results if r.report is None]
    for r in could_not_run:  # the summary is written first: nothing is lost
        click.echo(f"derivcheck: error: {visible(r.error)}", err=True)
    if junit:  # after the summary: a path that cannot be written loses nothing the run found
        try:
            Path(junit).write_text(gate.junit_xml(results, config.path.stem), encoding="utf-8")
        except OSError as exc:
            raise DerivcheckError(f"--junit-xml {junit} could not be written ({exc.strerror or exc}); the results "
                                  f"are above") from None
    sys.exit(2 if could_not_run else 1 if bad else 0)


def _summary_table(results) -> str:
    rows = [("BINDING", "DTYPE", "VERDICT", "WORST ERR/TOL")]
    for r in results:
        verdict = r.verdict.upper() if not r.ok else r.verdict
        if r.binding.expect == "fail":
            verdict += " (expected fail)" if r.ok else " (not where expected!)" if r.mismatch else " (expected fail!)"
        elif r.report is not None and r.report.warnings:  # shown even when they do not fail (no --strict)
            n = len(r.report.warnings)
            verdict += f" ({n} warning{'s' if n > 1 else ''})"
        worst = "-" if r.worst is None else ("inf" if r.worst == float("inf") else f"{r.worst:.3g}")
        rows.append((r.binding.id, r.binding.dtype, verdict, worst))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def run() -> None:
    """The ``derivcheck`` command (``derivcheck/__main__.py``): a process of its own, which has
    imported none of the user's code, so its checks may fork their workers from it
    (:func:`derivcheck.run.isolate.fork_from_here`). Tests that call :data:`main` in their own process keep
    the worker server."""
    from derivcheck.run.isolate import fork_from_here

    fork_from_here()
    main()


if __name__ == "__main__":  # pragma: no cover
    run()
