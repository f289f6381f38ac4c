"""``slimops``: step, run, steps, report. Exit codes: 0 ok, 1 internal error, 2 bad input, 3 gate failed,
4 gate inconclusive (retry later)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from slimops.errors import EXIT_INTERNAL, EXIT_OK, BadInput, GateFailed, GateInconclusive, SlimopsError


def _parse_sets(pairs: list[str]) -> dict:
    """``--set a.b=1 --set mode=static`` -> {"a": {"b": 1}, "mode": "static"}; values parsed as YAML (bounded,
    no tags). A key set both as a value and as a table (``--set a=1 --set a.b=2``) is refused, in either order."""
    from slimops.formats import quoted
    from slimops.yamlsafe import load_yaml

    config: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--set {quoted(pair)} is not key=value; write e.g. --set mode=static")
        parts = key.split(".")
        if not all(part.strip() for part in parts):
            raise BadInput(f"--set {quoted(key)}: empty part in the dotted key; write e.g. --set gate.min_speedup=2")
        value = load_yaml(raw, f"--set {key}", "value of") if raw else ""
        node, path = config, ()
        for part in parts[:-1]:
            path += (part,)
            if part not in node:
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise BadInput(f"--set {quoted(key)} conflicts with --set {'.'.join(path)}={quoted(node[part], 40)}: "
                               f"{'.'.join(path)} cannot be both a value and a table; give one of them")
            node = node[part]
        leaf = parts[-1]
        if leaf in node and (isinstance(node[leaf], dict) or isinstance(value, dict)):
            raise BadInput(f"--set {quoted(key)} conflicts with an earlier --set {key}.* or {key}=: {key} cannot be "
                           "both a value and a table; give one of them")
        node[leaf] = value
    return config


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


def _load_config_file(path: str | None) -> dict:
    if not path:
        return {}
    from slimops.yamlsafe import load_yaml_file

    file = Path(path)
    if not file.is_file():
        raise BadInput(f"config file not found: {file}")
    data = load_yaml_file(file, "config file") or {}
    if not isinstance(data, dict):
        raise BadInput(f"config file {file} must hold a mapping of option: value")
    return data


MAX_THREADS = 1024  # a thread pool this large is a typo, and ONNX Runtime would try to start it


def _positive_int(text: str) -> int:
    try:
        value = int(text) if len(text) < 20 else 0
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number from 1 to {MAX_THREADS}")
    return value


def cmd_step(args) -> int:
    from slimops.core import run_step
    from slimops.retry import run_retrying

    config = _merge(_load_config_file(args.config), _parse_sets(args.set))
    inputs = {"baseline": Path(args.baseline)} if args.baseline else {}
    outcome, _ = run_retrying(
        lambda: run_step(args.name, Path(args.model), Path(args.out), config, inputs, threads=args.threads),
        _inconclusive_waits(args), lambda text: print(_one_line("slimops: ", text), file=sys.stderr))
    if outcome.status == "refused":
        raise GateFailed(outcome.reasons[0])
    if outcome.passed is not None:
        _write_gate_output(args.gate_output, outcome.passed)
    _write_metrics_output(args.metrics_output, outcome.manifest)
    if outcome.status == "inconclusive":
        # Not a verdict, so never "continue": the task fails with exit 4 and the orchestrator retries it later.
        raise GateInconclusive("gate inconclusive: " + "; ".join(outcome.reasons) + "; run it again when the "
                               "machine is quiet (runners retry it with backoff)", report_path=outcome.report)
    if outcome.status == "gate_failed":
        # A pipeline that branches on the gate (--on-gate-fail continue) reads --gate-output instead of the
        # exit code; the manifest and gate_report.json are written either way.
        if args.on_gate_fail == "continue":
            print(f"slimops: gate failed; continuing (--on-gate-fail continue): {outcome.report}", file=sys.stderr)
            return EXIT_OK
        raise GateFailed("gate failed: " + "; ".join(outcome.reasons), report_path=outcome.report)
    print(json.dumps({"step": args.name, "out": str(Path(args.out).absolute()), "metrics": outcome["metrics"]},
                     indent=2, default=str))
    return EXIT_OK


RETRY_FLAGS = {"retries": "--retry-inconclusive", "backoff_s": "--retry-backoff", "factor": "--retry-factor"}


def _inconclusive_waits(args) -> list[float]:
    """The waits before each rerun of an inconclusive gate, within the bounds of a recipe's retry_inconclusive."""
    from pydantic import ValidationError

    from slimops.plan import Retry
    from slimops.recipe import RetryInconclusive

    try:
        policy = RetryInconclusive(retries=args.retry_inconclusive, backoff_s=args.retry_backoff,
                                   factor=args.retry_factor)
    except ValidationError as err:
        first = err.errors()[0]
        raise BadInput(f"{RETRY_FLAGS[first['loc'][0]]} {first['input']}: {first['msg']}") from None
    return Retry(**policy.model_dump()).waits()


def _write_metrics_output(path: str | None, manifest: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(manifest.get("metrics", {}), sort_keys=True, default=str))


def _write_gate_output(path: str | None, passed: bool) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("true" if passed else "false")


def cmd_source(args) -> int:
    from slimops.runner import materialize_source

    out = materialize_source(_parse_sets(args.set), Path(args.out))
    print(json.dumps({"step": "source", "out": str(out.absolute())}))
    return EXIT_OK


def cmd_run(args) -> int:
    from slimops.progress import console
    from slimops.runner import run_recipe

    result = run_recipe(args.recipe, args.out, use_cache=not args.no_cache)
    gate = result.summary.get("gate")
    if gate is None:
        console.print("[yellow]no gate in this recipe[/yellow]")
    elif gate["passed"]:
        console.print(f"[bold green]gate PASSED[/bold green] ({gate['step']})")
    elif gate.get("verdict") == "inconclusive":
        console.print(f"[bold yellow]gate INCONCLUSIVE[/bold yellow] ({gate['step']}): " + "; ".join(gate["reasons"])
                      + "; nothing was promoted, run it again when the machine is quiet")
    else:
        console.print(f"[bold red]gate FAILED[/bold red] ({gate['step']}): " + "; ".join(gate["reasons"]))
    console.print(f"report: {result.run_dir / 'report.html'}  (and report.md)")
    return result.exit_code


def cmd_steps(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from slimops.steps import get_step, step_names

    console = Console()
    names = [args.name] if args.name else step_names()
    for name in names:
        step = get_step(name)
        table = Table(title=f"{name}: {step.summary}", title_justify="left", show_lines=False,
                      caption=contract_line(step), caption_justify="left")
        for column in ("option", "type", "default", "meaning"):
            table.add_column(column)
        for field_name, field in step.Config.model_fields.items():
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            kind = _type_name(field.annotation)
            table.add_row(field_name, kind, default, field.description or "")
        console.print(table)
    return EXIT_OK


def contract_line(step) -> str:
    """What a step declares, on one line: the formats it takes and writes, its inputs, role, side effects, extra."""
    writes = step.writes()
    inputs = [f"{n} (required)" for n in step.extra_inputs] + [f"{n} (optional)" for n in step.optional_inputs]
    return (f"takes {', '.join(step.accepts)}; writes {writes}; inputs: model{', ' + ', '.join(inputs) if inputs else ''}; "
            f"role: {step.role}; side effects: {'yes' if step.side_effects else 'no'}; "
            f"data: {', '.join(step.data_fields()) or 'none'}; extra: {step.extra or 'none'}")


def _type_name(annotation) -> str:
    """``Literal['a', 'b'] | None`` -> ``a|b|None``; ``slimops.data.DataSpec`` -> ``DataSpec``."""
    import re
    import types
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(str(choice) for choice in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return "|".join(_type_name(arg) for arg in typing.get_args(annotation)).replace("NoneType", "None")
    name = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    return name or re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(annotation)).replace("typing.", "")


def cmd_report(args) -> int:
    from slimops.report import write_report

    page, md = write_report(Path(args.run_dir))
    print(f"report: {page}  (and {md.name})")
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """Usage errors follow the same contract as every other bad input: one line, exit 2."""

    def error(self, message):
        raise BadInput(f"{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slimops", description="Model compression as pipeline steps.")
    sub = parser.add_subparsers(dest="command", required=True)

    step = sub.add_parser("step", help="run one step: a model directory in, a new model directory out")
    step.add_argument("name", help="step name (see `slimops steps`)")
    step.add_argument("--model", required=True, help="input model directory")
    step.add_argument("--out", required=True, help="output directory (written atomically)")
    step.add_argument("--config", help="YAML/JSON file with the step's options")
    step.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an option (dotted keys nest)")
    step.add_argument("--baseline", help="validate: the model to compare against; distill (student.from_input): the teacher")
    step.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: all)")
    step.add_argument("--on-gate-fail", choices=("exit", "continue"), default="exit",
                      help="exit: a failed gate exits 3 (default); continue: exit 0, the pipeline branches on --gate-output")
    step.add_argument("--gate-output", metavar="FILE", help="write the gate verdict there as true/false")
    step.add_argument("--metrics-output", metavar="FILE", help="write the step's metrics there as JSON")
    step.add_argument("--allow-factory", action="append", default=[], metavar="MODULE",
                      help="trust model factories from this module (or module:callable); see README 'Threat model'")
    # For orchestrators whose retry policies cannot see exit 4 (SageMaker, Azure ML): the step retries itself.
    step.add_argument("--retry-inconclusive", type=int, default=0, metavar="N",
                      help="a gate that cannot decide (exit 4): run it again up to N times, after a backoff (default 0)")
    step.add_argument("--retry-backoff", type=float, default=60.0, metavar="SECONDS",
                      help="wait before the first rerun (default 60)")
    step.add_argument("--retry-factor", type=float, default=2.0, metavar="F",
                      help="each later wait is F times the one before (default 2)")
    step.set_defaults(func=cmd_step)

    source = sub.add_parser("source", help="materialise a recipe's model section as a model directory")
    source.add_argument("--out", required=True, help="output directory (written atomically)")
    source.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model fields: package=..., or factory=... kwargs=... input_shape=... num_labels=...")
    source.add_argument("--allow-factory", action="append", default=[], metavar="MODULE",
                        help="trust model factories from this module (or module:callable)")
    source.set_defaults(func=cmd_source)

    run = sub.add_parser("run", help="run a recipe locally")
    run.add_argument("recipe")
    run.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    run.add_argument("--no-cache", action="store_true", help="rerun every step even when its inputs are unchanged")
    run.set_defaults(func=cmd_run)

    steps = sub.add_parser("steps", help="list the steps and their options")
    steps.add_argument("name", nargs="?")
    steps.set_defaults(func=cmd_steps)

    report = sub.add_parser("report", help="re-render a run's report.html / report.md")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    from slimops.serving.commands import add_commands  # serve, promote, rollback

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from packages or disk, never a hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Nothing slimops runs may read stdin (a library's "trust this code? [y/N]" prompt must never be answered).
    sys.stdin = open(os.devnull)
    from slimops.progress import configure_logging

    configure_logging(os.environ.get("SLIMOPS_LOG_LEVEL"))
    args = None
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "allow_factory", None):
            from slimops import factories

            factories.allow(args.allow_factory)
        return args.func(args)
    except (GateFailed, GateInconclusive) as err:
        print(_one_line("slimops: ", err), file=sys.stderr)
        if err.report_path:
            print(f"slimops: gate report: {err.report_path}", file=sys.stderr)
        return err.exit_code
    except SlimopsError as err:
        print(_one_line("slimops: error: ", err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("slimops: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: say so, keep the traceback for a bug report
        refused = _input_error(err)
        if refused is not None:
            print(_one_line("slimops: error: ", refused), file=sys.stderr)
            return BadInput.exit_code
        full = _no_space(err)
        if full is not None:  # a full disk is not a bug: the output was removed, say where space ran out
            print(_one_line("slimops: error: ", full + f", writing {getattr(args, 'out', None) or 'the output'}; "
                            "nothing was kept: free space there or write --out to another file system"),
                  file=sys.stderr)
            return BadInput.exit_code
        traceback.print_exc()
        print(f"slimops: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_INTERNAL


MAX_MESSAGE = 1000


def _one_line(prefix: str, err) -> str:
    """The contract's last line of defence: one line, at most MAX_MESSAGE characters, whatever the message."""
    text = prefix + " ".join(str(err).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _input_error(err: BaseException) -> str | None:
    """Errors that say the user's input cannot be used, not that slimops has a bug: a path the OS refuses (too
    long, not permitted, read-only, not a directory) and the model registry refusing a URI, name or version."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS,
                                                  errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
        where = str(err.filename)[:120] + ("..." if len(str(err.filename)) > 120 else "")
        return f"cannot use {where}: {err.strerror}; give a path slimops may write (or read)"
    if type(err).__module__.split(".")[0] in ("mlflow", "sqlalchemy"):
        return (f"the model registry refused ({type(err).__name__}: {' '.join(str(err).split())[:200]}); check "
                "--registry and its tracking URI, --model and --version")
    return None


def _no_space(err: BaseException) -> str | None:
    """'no space left on device (<path>)' when ``err`` (or what caused it) is a full disk or an exhausted quota.
    Libraries that write in C/C++/Rust (torch, onnx, safetensors) raise their own types with the OS message."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            # not err.filename: a copy that fails names its source, which would point at the wrong disk
            return "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
        text = str(err)
        if any(sign in text for sign in ("No space left on device", "os error 28", "StorageFull")):
            return "no space left on device"
        if any(sign in text for sign in ("Disk quota exceeded", "os error 122")):
            return "disk quota exceeded"
        err = err.__cause__ or err.__context__
    return None
