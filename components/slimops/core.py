"""One step, run the same way by every runner: the CLI, the local recipe runner and every adapter."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from slimops.errors import BadInput, GateFailed
from slimops.handlers.info import describe
from slimops.manifest import (MANIFEST, atomic_dir, check_out, digest_of, hash_tree, library_versions,
                              read_manifest, scratch_dir, write_json_atomic)
from slimops.steps import StepConfig, StepContext, get_step

GATE_REPORT = "gate_report.json"


def validation_message(err: ValidationError, where: str) -> str:
    """First pydantic error as one line: ``where.path.to.key: what``."""
    from slimops.formats import quoted

    first = err.errors()[0]
    # Both the key path and the value come from the user: quote them capped, never whole.
    loc = ".".join(str(part) if len(str(part)) <= 80 else str(part)[:77] + "..." for part in first["loc"])
    what = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return f"{where}{'.' + loc if loc else ''}: {what}" + (f" (got {quoted(first['input'])})" if first["type"] != "extra_forbidden" and not isinstance(first.get("input"), dict) else "")


def parse_config(step_name: str, config: dict, where: str | None = None) -> StepConfig:
    step = get_step(step_name)
    try:
        return step().resolve(step.Config.model_validate(config))
    except ValidationError as err:
        raise BadInput(validation_message(err, where or f"{step_name} config") +
                       f"; see `slimops steps {step_name}` for the options") from None


def lineage_of(model_dir: Path) -> dict:
    """The manifest of ``model_dir``, or a 'source' record for a model that came from outside slimops."""
    manifest = read_manifest(model_dir)
    if manifest:
        return manifest
    path = Path(model_dir).absolute()
    stamp = max((p.stat().st_mtime_ns for p in path.rglob("*")), default=0)
    return _source_record(str(path), stamp)


@functools.lru_cache(maxsize=16)
def _source_record(path: str, stamp: int) -> dict:
    # Hashing a 90 MB model takes a while; a run asks for the same source several times.
    return {"step": "source", "path": path, "model": describe(Path(path)).model_dump(),
            "outputs": hash_tree(Path(path))}


def cache_key(step_name: str, config: StepConfig, inputs: dict[str, Path]) -> str:
    """Hash of what determines a step's output: code version, config, input content, data content."""
    from slimops import __version__

    resolved = config.model_dump(mode="json")
    return digest_of({
        "step": step_name,
        "slimops": __version__,
        "config": _without_paths(resolved),
        "data": _data_hashes(step_name, config),
        "inputs": {name: lineage_of(path).get("outputs") for name, path in sorted(inputs.items())},
    })


@dataclass(frozen=True)
class Outcome(Mapping):
    """What a step came to. ``ok``: OUT written; ``gate_failed``: OUT written with its gate report, the verdict is
    no; ``inconclusive``: OUT written with its gate report, the gate could not decide (a runner retries it later);
    ``refused``: a registry or deploy step refused its input's evidence, nothing written. Reads as the
    manifest (``outcome["metrics"]``). Bad input is not an outcome: it raises BadInput. Only the CLI turns an
    outcome into an exit code."""

    status: Literal["ok", "gate_failed", "inconclusive", "refused"]
    manifest: dict = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    report: Path | None = None

    @property
    def passed(self) -> bool | None:
        """The gate's verdict (None for a step that is not a gate)."""
        gate = self.manifest.get("gate")
        return None if gate is None else bool(gate["passed"])

    def __getitem__(self, key):
        return self.manifest[key]

    def __iter__(self):
        return iter(self.manifest)

    def __len__(self):
        return len(self.manifest)


def run_step(step_name: str, model: Path, out: Path, config: dict | StepConfig,
             inputs: dict[str, Path] | None = None, threads: int | None = None) -> Outcome:
    """Run one step; write ``out`` atomically with its manifest. Raises BadInput for bad input."""
    try:
        return _run_step(step_name, model, out, config, inputs, threads)
    except GateFailed as refusal:  # the evidence a registry or deploy step needs does not hold: nothing written
        return Outcome("refused", reasons=(str(refusal),))


def _run_step(step_name, model, out, config, inputs, threads) -> Outcome:
    step_cls = get_step(step_name)
    cfg = step_cls().resolve(config) if isinstance(config, StepConfig) else parse_config(step_name, config)
    model = Path(model)
    inputs = {k: Path(v) for k, v in (inputs or {}).items()}
    # Inputs every config needs; one a config needs (distill's teacher) is named by the step, with its purpose.
    missing = [name for name in step_cls.extra_inputs if name not in inputs]
    if missing:
        raise BadInput(f"step {step_name} needs --{missing[0]} DIR (the model to compare against)")
    if step_cls.requires_gate() and model.is_dir():
        # Evidence first: a model whose files changed after validation is refused as such (exit 3), whatever
        # the changed files now hold. Links out of the directory are refused before anything is hashed.
        from slimops.gate import require_passing_gate
        from slimops.handlers.info import check_tree

        check_tree(model)
        require_passing_gate(model)
    task = getattr(cfg, "task", None)  # a step that takes a task (export, validate): it overrides config.json's
    info = describe(model, task)
    for path in inputs.values():
        describe(path, task)
    out = Path(out)
    data_files = [Path(spec.path) for spec in _data_specs(step_name, cfg).values() if spec.path]
    check_out(out, {"model": model, **inputs}, data_files)

    parent = lineage_of(model)
    started = time.perf_counter()
    with atomic_dir(out) as tmp, scratch_dir(out) as work:
        ctx = StepContext(model_dir=model, model_info=info, out_dir=tmp, inputs=inputs, threads=threads,
                          final_out=out.absolute(), work_dir=work)
        result = step_cls().run(ctx, cfg)
        manifest = {
            "step": step_name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.model_dump(mode="json"),
            "data": _data_fingerprints(step_name, cfg),
            "cache_key": cache_key(step_name, cfg, {"model": model, **inputs}),
            "model": result.model_info.model_dump(),
            "inputs": {"model": {"path": str(model.absolute()), "files": parent.get("outputs", {})},
                       **{name: {"path": str(p.absolute()), "files": lineage_of(p).get("outputs", {})}
                          for name, p in inputs.items()}},
            "outputs": hash_tree(tmp),
            "metrics": result.metrics,
            "details": result.details,
            "gate": None if result.gate_passed is None else {
                "passed": result.gate_passed, "reasons": result.gate_reasons,
                "verdict": result.gate_verdict or ("pass" if result.gate_passed else "fail")},
            "seconds": round(time.perf_counter() - started, 2),
            "versions": library_versions(),
            "parent": parent,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    if result.gate_verdict == "inconclusive":
        return Outcome("inconclusive", manifest, tuple(result.gate_reasons), out / GATE_REPORT)
    if result.gate_passed is False:
        return Outcome("gate_failed", manifest, tuple(result.gate_reasons), out / GATE_REPORT)
    return Outcome("ok", manifest, report=out / GATE_REPORT if result.gate_passed else None)


def _data_specs(step_name: str, config: StepConfig) -> dict:
    """The DataSpecs of a parsed config, by the dotted paths the step declares (``accuracy.data``)."""
    specs = {}
    for path in get_step(step_name).data_fields():
        value = config
        for part in path.split("."):
            value = getattr(value, part, None)
        if value is not None:
            specs[path] = value
    return specs


def _data_fingerprints(step_name: str, config: StepConfig) -> dict:
    return {name: spec.fingerprint() for name, spec in _data_specs(step_name, config).items()}


def _data_hashes(step_name: str, config: StepConfig) -> dict:
    return {name: {k: v for k, v in fp.items() if k != "path"}
            for name, fp in _data_fingerprints(step_name, config).items()}


def _without_paths(config):
    """Data paths differ between machines; their content hashes go into the key instead."""
    if isinstance(config, dict):
        return {k: _without_paths(v) for k, v in config.items() if k != "path"}
    return config
