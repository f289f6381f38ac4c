"""The local runner: ``slimops run recipe.yaml`` with no orchestrator, with step caching.

A step is skipped when its output directory holds a manifest whose cache key (code version,
resolved config, input content, data content) equals the key computed now.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from slimops.core import GATE_REPORT, cache_key, parse_config, run_step
from slimops.errors import BadInput, GateFailed, GateInconclusive
from slimops.manifest import atomic_dir, clean_stale_temps, hash_tree, out_lock, read_manifest, write_json_atomic
from slimops.plan import StepCall, plan_recipe
from slimops import progress
from slimops.recipe import Recipe, load_recipe
from slimops.retry import run_retrying
from slimops.report import RUN_SUMMARY, write_report



@dataclass
class RunResult:
    run_dir: Path
    exit_code: int
    summary: dict = field(default_factory=dict)


def resolve_source(recipe: Recipe, run_dir: Path) -> Path:
    source = recipe.model
    if source.package:
        try:
            module = importlib.import_module(source.package)
        except ImportError:
            raise BadInput(f"model package {source.package!r} is not installed; pip install it (or give model.path)") from None
        if not hasattr(module, "get_model_path"):
            raise BadInput(f"package {source.package!r} has no get_model_path(); give model.path instead")
        return Path(module.get_model_path())
    if source.path:
        return (recipe.path.parent / source.path).resolve()
    return init_factory_model(source, run_dir / "source")


def materialize_source(spec: dict, out: Path, base: Path | None = None) -> Path:
    """``slimops source``: the recipe's model as a directory of its own at ``out`` (what a pipeline's first task
    hands to the next). A package's model files are linked or copied; a factory model is initialised (seeded)."""
    from pydantic import ValidationError

    from slimops.core import lineage_of, validation_message
    from slimops.recipe import ModelSource
    from slimops.steps.context import link_or_copy

    try:
        source = ModelSource.model_validate(spec)
    except ValidationError as err:
        raise BadInput(validation_message(err, "model")) from None
    if source.factory:
        return init_factory_model(source, out)
    origin = resolve_source(Recipe.model_construct(model=source, path=(base or Path.cwd()) / "recipe.yaml"), out.parent)
    if not origin.is_dir():
        raise BadInput(f"model directory not found: {origin}; give model.path or model.package")
    from slimops.handlers.info import check_tree

    check_tree(origin)  # no link out of the directory is followed into the copy
    record = lineage_of(origin)
    with atomic_dir(out) as tmp:
        for path in origin.rglob("*"):
            if path.is_file():
                target = tmp / path.relative_to(origin)
                target.parent.mkdir(parents=True, exist_ok=True)
                link_or_copy(path, target)
        if record.get("step") == "source":
            write_json_atomic(tmp / "manifest.json", {**record, "spec": source.model_dump(mode="json", exclude_none=True)})
    return out


def init_factory_model(source, out: Path) -> Path:
    """A freshly initialised (seeded) torch module directory: the start of a train-then-compress recipe.

    Reused only while the recipe's model section is unchanged (recorded in ``source.json``).
    """
    spec = source.model_dump(mode="json")
    recorded = out / "source.json"
    if recorded.is_file() and json.loads(recorded.read_text()) == spec and (out / "model.safetensors").is_file():
        return out
    import torch
    from safetensors.torch import save_file

    from slimops.handlers.info import ModelInfo
    from slimops.handlers.runtime import dump_architecture, import_factory

    info = ModelInfo(format="torch", task="tensor-classification", file="model.safetensors", factory=source.factory,
                     kwargs=source.kwargs, input_shape=source.input_shape, num_labels=source.num_labels,
                     normalize=False)
    torch.manual_seed(source.seed)
    build = import_factory(source.factory, "recipe model.factory")
    try:
        module = build(**source.kwargs)
    except Exception as err:  # noqa: BLE001 - a wrong keyword or value: the factory's own error, on one line
        raise BadInput(f"model.factory {source.factory}(**{str(source.kwargs)[:80]}) failed ({type(err).__name__}: "
                       f"{' '.join(str(err).split())[:120]}); fix model.kwargs") from None
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / "model.safetensors"))
        dump_architecture(tmp / "architecture.json", info)
        write_json_atomic(tmp / "source.json", spec)
        # The directory is slimops's own (a later run may replace it), and its lineage starts here.
        write_json_atomic(tmp / "manifest.json", {"step": "source", "path": str(out.absolute()), "spec": spec,
                                                  "model": info.model_dump(), "outputs": hash_tree(tmp)})
    return out


def step_calls(recipe: Recipe) -> list[tuple[StepCall, dict]]:
    """The calls this runner makes, in order, each with its config as given to the step (data paths under the
    recipe's directory): the plan's calls, the same every orchestrator adapter issues (tests/test_equivalence.py)."""
    plan = plan_recipe(recipe, require_gate=False)
    return [(call, call.resolved_config(plan.recipe_dir)) for call in plan.calls]


RUN_MARKER = ".slimops-run"  # written first: the run directory is slimops's, even before run.json exists


def run_recipe(recipe_path: Path | str, run_dir: Path | str | None = None, use_cache: bool = True) -> RunResult:
    recipe = load_recipe(recipe_path)
    calls = step_calls(recipe)  # a chain that cannot run is refused before anything is written
    run_dir = Path(run_dir or Path("runs") / recipe.name).absolute()
    with out_lock(run_dir):
        _claim_run_dir(run_dir, recipe)
        return _run(recipe, calls, run_dir, use_cache)


def _claim_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """A run writes into a new or empty directory, or one an earlier run wrote; never among user files."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise BadInput(f"--out {run_dir} is not a directory; give a new run directory")
    recipe_dir = os.path.realpath(recipe.path.parent)
    if recipe_dir == os.path.realpath(run_dir) or recipe_dir.startswith(os.path.realpath(run_dir) + os.sep):
        raise BadInput(f"--out {run_dir} contains the recipe; give a run directory of its own (default runs/<name>)")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / RUN_MARKER).is_file():
        raise BadInput(f"--out {run_dir} holds files slimops did not write; give a new or empty run directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text(recipe.name + "\n")
    for leftover in run_dir.glob(".*.tmp*"):  # run.json / report files a killed run was writing (we hold the lock)
        if leftover.is_file():
            leftover.unlink()


def _run_retrying(call, model, out, config, inputs, threads):
    """run_step, retried after a backoff while its gate is inconclusive (as an orchestrator's retry policy would)."""
    return run_retrying(lambda: run_step(call.step, model, out, config, inputs, threads=threads),
                        call.inconclusive.waits() if call.gated else [],
                        lambda text: progress.note(f"{call.id}: {text}", "yellow"))


def _run(recipe: Recipe, calls: list, run_dir: Path, use_cache: bool) -> RunResult:
    started = time.perf_counter()
    outputs = {"source": resolve_source(recipe, run_dir)}
    records, exit_code, gate = [], 0, None
    for spec, resolved in calls:
        out = run_dir / "steps" / spec.id
        # validate compares against its baseline; distill (student.from_input) learns from it as the teacher
        inputs = {"baseline": outputs[spec.baseline]} if spec.baseline else {}
        config = parse_config(spec.step, resolved)
        record = {"id": spec.id, "step": spec.step, "input": spec.input, "out": str(out)}
        t0 = time.perf_counter()
        key = cache_key(spec.step, config, {"model": outputs[spec.input], **inputs})
        manifest = read_manifest(out) if use_cache and out.is_dir() else None
        stale = _stale(out, manifest, key) if manifest else "no earlier output"
        if manifest and not stale and spec.against_champion:
            stale = "it compares against the registry's champion, which may have changed (never cached)"
        if not stale:
            with out_lock(out):  # a killed earlier run may have left temporary folders beside it
                clean_stale_temps(out)
            record["status"] = "cached"
            progress.note(f"{spec.id}: cached ({out})")
        else:
            if manifest and stale != "inputs or config changed":
                progress.note(f"{spec.id}: not reusing {out}: {stale}", "yellow")
            progress.note(f"{spec.id}: running {spec.step}", "bold")
            outcome, record["attempts"] = _run_retrying(spec, outputs[spec.input], out, config, inputs,
                                                        recipe.threads)
            record["status"] = "refused" if outcome.status == "refused" else "ran"
            # refused: nothing written (promote/deploy without a matching passing gate); the chain stops there
            manifest = outcome.manifest or {"gate": {"passed": False, "reasons": list(outcome.reasons)}, "metrics": {}}
        record["seconds"] = round(time.perf_counter() - t0, 2)
        record["metrics"] = manifest.get("metrics", {})
        records.append(record)
        outputs[spec.id] = out
        verdict = manifest.get("gate")
        if verdict is not None:
            gate = {"step": spec.id, **verdict, "report": str(out / GATE_REPORT)}
            if (manifest.get("details") or {}).get("baseline"):  # what it compared against (the champion?)
                gate["baseline"] = manifest["details"]["baseline"]
            if not verdict["passed"]:
                exit_code = GateInconclusive.exit_code if verdict.get("verdict") == "inconclusive" else GateFailed.exit_code
                break  # a failed gate stops the chain; later steps never see a rejected model
    summary = {
        "recipe": str(recipe.path),
        "name": recipe.name,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 2),
        "source": str(outputs["source"]),
        "steps": records,
        "gate": gate,
        "exit_code": exit_code,
    }
    write_json_atomic(run_dir / RUN_SUMMARY, summary)
    write_report(run_dir)
    return RunResult(run_dir=run_dir, exit_code=exit_code, summary=summary)


def _stale(out: Path, manifest: dict, key: str) -> str | None:
    """Why an earlier output cannot be reused, or None. The files are hashed again: an output edited after it
    was written is rerun, never passed on with the old hashes in its lineage."""
    if manifest.get("cache_key") != key:
        return "inputs or config changed"
    expected = manifest.get("outputs") or {}
    actual = hash_tree(out)
    if actual != expected:
        changed = sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))
        return f"its files changed since it was written ({', '.join(changed[:3])})"
    return None
