"""A recipe as the step commands every orchestrator runs: the one thing all adapters share.

The local runner, KFP, Airflow, SageMaker and Azure ML adapters hold no compression logic. Each asks
``plan_recipe`` for the recipe's steps and either runs ``StepCall.argv(...)`` (the container entrypoint) or
calls ``run_call`` (the same core function, in-process). Both give the same manifest and the same gate
decision, so the recipe decides the same way under every runner.

A plan splits at its gate: the steps up to and including the gating ``validate`` are the compression chain;
the steps after it (register, promote, deploy) are the promotion branch, which an orchestrator puts under
its condition (``dsl.If``, a ConditionStep, an ``if_else`` node) and which never runs on a failed gate.
Recipe errors surface here, when a pipeline is built or compiled, not later on a cluster.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from slimops.errors import BadInput, GateFailed
from slimops.recipe import DATA_FIELDS, Recipe, load_recipe

IMAGE_ENV = "SLIMOPS_IMAGE"
# Written by infra/container/build.sh after a build: {"image": "localhost/slimops:0.1.0", "digest": "sha256:..."}.
IMAGE_LOCK = Path(__file__).parent / "image.json"
GATE_STEP = "validate"


@dataclass(frozen=True)
class StepCall:
    """One step of a recipe, as any runner issues it."""

    id: str
    step: str
    input: str  # id of the step whose output is this step's model ("source" = the recipe's model)
    baseline: str | None  # validate: id of the model it compares against
    config: dict  # the step's config; data paths relative to the recipe directory
    after_gate: bool  # part of the promotion branch: runs only when the gate passed
    placement: dict | None = None  # accelerator / node selector / tolerations on an orchestrator (the step's or the recipe's)
    allow_factories: tuple[str, ...] = ()  # the recipe's allow_factories, passed on to the step process

    @property
    def gated(self) -> bool:
        return self.step == GATE_STEP

    def resolved_config(self, recipe_dir: str | Path) -> dict:
        """The config with relative data paths placed under ``recipe_dir`` (where the recipe lives on the runner)."""
        return _place_data(self.config, str(recipe_dir))

    def argv(self, model: str, out: str, baseline: str | None = None, recipe_dir: str | Path = ".",
             threads: int | None = None, gate_output: str | None = None,
             metrics_output: str | None = None) -> list[str]:
        """``slimops step ...``: the container entrypoint command. Options go as ``--set key=<json>``.

        With ``gate_output`` the gating step writes ``true``/``false`` there and exits 0 on a failed gate, so a
        pipeline branches on the value instead of failing the task.
        """
        argv = ["slimops", "step", self.step, "--model", model, "--out", out]
        if self.baseline is not None:
            if baseline is None:
                raise BadInput(f"step {self.id} compares against {self.baseline!r}; pass its model directory as baseline")
            argv += ["--baseline", baseline]
        for key, value in sorted(self.resolved_config(recipe_dir).items()):
            argv += ["--set", f"{key}={json.dumps(value, sort_keys=True)}"]
        if threads:
            argv += ["--threads", str(threads)]
        for entry in self.allow_factories:
            argv += ["--allow-factory", entry]
        if gate_output is not None and self.gated:
            argv += ["--on-gate-fail", "continue", "--gate-output", gate_output]
        if metrics_output is not None:
            argv += ["--metrics-output", metrics_output]
        return argv


@dataclass(frozen=True)
class Plan:
    name: str
    recipe_path: Path
    model: dict  # the recipe's model section (ModelSource fields)
    threads: int | None
    calls: list[StepCall] = field(default_factory=list)
    allow_factories: tuple[str, ...] = ()

    @property
    def recipe_dir(self) -> Path:
        return self.recipe_path.parent

    @property
    def gate(self) -> StepCall | None:
        return next((c for c in self.calls if c.gated and not c.after_gate), None) if self.calls else None

    @property
    def chain(self) -> list[StepCall]:
        return [c for c in self.calls if not c.after_gate]

    @property
    def promotion(self) -> list[StepCall]:
        return [c for c in self.calls if c.after_gate]

    def source_argv(self, out: str, recipe_dir: str | Path = ".") -> list[str]:
        """``slimops source``: materialise the recipe's model (a package's files, or a seeded factory module).
        A ``path`` model is placed under ``recipe_dir``, as data paths are."""
        argv = ["slimops", "source", "--out", out]
        model = dict(self.model)
        if "path" in model and not os.path.isabs(model["path"]):
            model["path"] = os.path.normpath(os.path.join(str(recipe_dir), model["path"]))
        for key, value in sorted(model.items()):
            argv += ["--set", f"{key}={json.dumps(value, sort_keys=True)}"]
        for entry in self.allow_factories:
            argv += ["--allow-factory", entry]
        return argv


def plan_recipe(recipe: Recipe | str | Path, require_gate: bool = True) -> Plan:
    """The recipe's steps as calls, checked for what a pipeline needs. Raises BadInput with the reason."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    where = recipe.path
    gate_index = max((i for i, s in enumerate(recipe.steps) if s.step == GATE_STEP), default=None)
    if require_gate and gate_index is None:
        raise BadInput(f"{where}: a pipeline branches on a gate, and no step produces one; add a validate step "
                       "with a gate (see examples/minilm-sts.yaml)")
    if require_gate and gate_index is not None and not _gate_checks(recipe.steps[gate_index].config):
        raise BadInput(f"{where}: steps[{gate_index}] validate has a gate that checks nothing; set at least one of "
                       "max_metric_drop, min_speedup, max_size_ratio, max_p95_latency_ms, min_fidelity")
    base = recipe.path.parent
    calls = [StepCall(id=s.id, step=s.step, input=s.input, baseline=s.baseline,
                      config=_relative_data(s.config, base),
                      after_gate=gate_index is not None and i > gate_index,
                      placement=_placement(s.placement or recipe.placement),
                      allow_factories=tuple(recipe.allow_factories))
             for i, s in enumerate(recipe.steps)]
    model = recipe.model.model_dump(exclude_none=True, exclude_defaults=True)
    if "path" in model:
        model["path"] = os.path.relpath((base / model["path"]).resolve(), base)
    return Plan(name=recipe.name, recipe_path=recipe.path, model=model, threads=recipe.threads, calls=calls,
                allow_factories=tuple(recipe.allow_factories))


def _placement(placement) -> dict | None:
    return None if placement is None else placement.model_dump(exclude_none=True, exclude_defaults=True) or None


def _gate_checks(config: dict) -> bool:
    from slimops.gate import GatePolicy

    policy = GatePolicy.model_validate(config.get("gate", {}))
    return any(value is not None for value in policy.model_dump().values())


def _relative_data(value, base: Path):
    """Data paths the recipe made absolute, back to relative: the plan must not hold this machine's paths."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in DATA_FIELDS and isinstance(item, dict) and item.get("path"):
                item = {**item, "path": os.path.relpath(item["path"], base)}
            out[key] = _relative_data(item, base)
        return out
    if isinstance(value, list):
        return [_relative_data(v, base) for v in value]
    return value


def _place_data(value, recipe_dir: str):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in DATA_FIELDS and isinstance(item, dict) and item.get("path") and not os.path.isabs(item["path"]):
                item = {**item, "path": os.path.normpath(os.path.join(recipe_dir, item["path"]))}
            out[key] = _place_data(item, recipe_dir)
        return out
    if isinstance(value, list):
        return [_place_data(v, recipe_dir) for v in value]
    return value


def run_call(call: StepCall, model: str | Path, out: str | Path, baseline: str | Path | None = None,
             recipe_dir: str | Path = ".", threads: int | None = None) -> dict:
    """Run one call in-process, as ``argv`` would in a container. A failed gate is a result, not an exception.

    Returns ``{"manifest": ..., "gate_passed": bool | None, "reasons": [...]}``; bad input still raises BadInput.
    """
    from slimops import factories
    from slimops.core import run_step
    from slimops.manifest import read_manifest

    factories.allow(call.allow_factories)
    inputs = {"baseline": Path(baseline)} if call.baseline is not None and baseline is not None else {}
    if call.baseline is not None and baseline is None:
        raise BadInput(f"step {call.id} compares against {call.baseline!r}; pass its model directory as baseline")
    try:
        manifest = run_step(call.step, Path(model), Path(out), call.resolved_config(recipe_dir), inputs,
                            threads=threads)
    except GateFailed:
        manifest = read_manifest(Path(out))
        if manifest is None:  # nothing written: a refusal (e.g. promote without a passing gate), not a verdict
            raise
    gate = manifest.get("gate")
    return {"manifest": manifest, "gate_passed": None if gate is None else gate["passed"],
            "reasons": [] if gate is None else gate["reasons"]}


def image_reference(image: str | None = None) -> str:
    """The component image for compiled specs, from one setting: the argument, $SLIMOPS_IMAGE, or the lock
    file the container build writes (by digest when the build recorded one)."""
    if image:
        return image
    if os.environ.get(IMAGE_ENV):
        return os.environ[IMAGE_ENV]
    if IMAGE_LOCK.is_file():
        lock = json.loads(IMAGE_LOCK.read_text())
        name = lock["image"].rsplit(":", 1)[0] if ":" in lock["image"].rsplit("/", 1)[-1] else lock["image"]
        return f"{name}@{lock['digest']}" if lock.get("digest") else lock["image"]
    raise BadInput(f"no component image: set ${IMAGE_ENV} (e.g. registry.example.com/slimops:0.1.0), pass image=..., "
                   "or build one with infra/container/build.sh")
