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

from slimops.errors import BadInput
from slimops.recipe import Recipe, load_recipe
from slimops.steps import get_step, map_data

IMAGE_ENV = "SLIMOPS_IMAGE"
# Written by infra/container/build.sh after a build: {"image": "localhost/slimops:0.1.0", "digest": "sha256:..."}.
IMAGE_LOCK = Path(__file__).parent / "image.json"


@dataclass(frozen=True)
class Retry:
    """Retries with exponential backoff: wait ``backoff_s``, then ``backoff_s * factor``, ..."""

    retries: int
    backoff_s: float
    factor: float = 2.0

    def waits(self) -> list[float]:
        return [self.backoff_s * self.factor ** i for i in range(self.retries)]


@dataclass(frozen=True)
class StepCall:
    """One step of a recipe, as any runner issues it."""

    id: str
    step: str
    input: str  # id of the step whose output is this step's model ("source" = the recipe's model)
    baseline: str | None  # validate: id of the model it compares against (with config.champion: the fallback)
    config: dict  # the step's config; data paths relative to the recipe directory
    after_gate: bool  # part of the promotion branch: runs only when the gate passed
    placement: dict | None = None  # accelerator / node selector / tolerations on an orchestrator (the step's or the recipe's)
    allow_factories: tuple[str, ...] = ()  # the recipe's allow_factories, passed on to the step process
    inconclusive: Retry = Retry(3, 60.0)  # the recipe's retry_inconclusive (used by the gate step)

    @property
    def role(self) -> str:
        return get_step(self.step).role

    @property
    def gated(self) -> bool:
        return self.role == "gate"

    @property
    def against_champion(self) -> bool:
        """A gate comparing against the registry's current champion (``baseline: champion``)."""
        return bool(self.config.get("champion"))

    @property
    def cacheable(self) -> bool:
        """Orchestrator caching (KFP, SageMaker, Azure ML ``is_deterministic``): never for a step with side effects
        (a cached register or deploy would silently skip the registration or the rollout), nor for a gate against
        the champion (the champion can change between runs with the same inputs: a promotion, a rollback)."""
        return not get_step(self.step).side_effects and not self.against_champion

    @property
    def retry(self) -> Retry | None:
        """How an orchestrator retries this step when it exits non-zero.

        - The gate: on exit 4 (inconclusive: it could not time the models honestly), after a backoff, as the
          recipe's ``retry_inconclusive`` says. A failed verdict is not retried: a gating step in a pipeline runs
          with ``--on-gate-fail continue`` and exits 0 on it.
        - A transform: twice, on an infrastructure failure (a killed pod, a lost node). Orchestrators that retry
          cannot tell exit 2 from a crash, so bad input costs two quick extra attempts.
        - A step with side effects: never (a blind retry could register or deploy twice).
        """
        step = get_step(self.step)
        if step.role == "gate":
            return self.inconclusive if self.inconclusive.retries else None
        return None if step.side_effects else Retry(2, 30.0)

    @property
    def retries(self) -> int:
        return self.retry.retries if self.retry else 0

    def resolved_config(self, recipe_dir: str | Path) -> dict:
        """The config with relative data paths placed under ``recipe_dir`` (where the recipe lives on the runner)."""
        return _place_data(self.step, self.config, str(recipe_dir))

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


def plan_recipe(recipe: Recipe | str | Path, require_gate: bool = True, source_format: str | None = "detect") -> Plan:
    """The recipe's steps as calls, checked for what a pipeline needs. Raises BadInput with the reason.

    ``source_format``: the recipe model's format ("detect": from its factory, or by describing its path or
    package when it is on this machine; None: unknown, e.g. a pipeline input), for the chain check.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    where = recipe.path
    check_chain(recipe, _source_format(recipe) if source_format == "detect" else source_format)
    gate_index = max((i for i, s in enumerate(recipe.steps) if get_step(s.step).role == "gate"), default=None)
    if require_gate and gate_index is None:
        raise BadInput(f"{where}: a pipeline branches on a gate, and no step produces one; add a validate step "
                       "with a gate (see examples/minilm-sts.yaml)")
    if require_gate and gate_index is not None and not _gate_checks(recipe.steps[gate_index].config):
        raise BadInput(f"{where}: steps[{gate_index}] validate has a gate that checks nothing; set at least one of "
                       "max_metric_drop, min_speedup, max_size_ratio, max_p95_latency_ms, min_fidelity")
    base = recipe.path.parent
    calls = [StepCall(id=s.id, step=s.step, input=s.input, baseline=s.baseline,
                      config=_relative_data(s.step, s.config, base),
                      after_gate=gate_index is not None and i > gate_index,
                      placement=_placement(s.placement or recipe.placement),
                      allow_factories=tuple(recipe.allow_factories),
                      inconclusive=Retry(**recipe.retry_inconclusive.model_dump()))
             for i, s in enumerate(recipe.steps)]
    model = recipe.model.model_dump(exclude_none=True, exclude_defaults=True)
    if "path" in model:
        model["path"] = os.path.relpath((base / model["path"]).resolve(), base)
    return Plan(name=recipe.name, recipe_path=recipe.path, model=model, threads=recipe.threads, calls=calls,
                allow_factories=tuple(recipe.allow_factories))


def _placement(placement) -> dict | None:
    return None if placement is None else placement.model_dump(exclude_none=True, exclude_defaults=True) or None


def _gate_checks(config: dict) -> bool:
    from slimops.gate import RULES, GatePolicy

    policy = GatePolicy.model_validate(config.get("gate", {}))
    return any(getattr(policy, rule) is not None for rule in RULES)


def _relative_data(step: str, config: dict, base: Path) -> dict:
    """Data paths the recipe made absolute, back to relative: the plan must not hold this machine's paths."""
    def relative(spec, _):
        return {**spec, "path": os.path.relpath(spec["path"], base)} if isinstance(spec, dict) and spec.get("path") else spec
    return map_data(step, config, relative)


def _place_data(step: str, config: dict, recipe_dir: str) -> dict:
    def place(spec, _):
        if isinstance(spec, dict) and spec.get("path") and not os.path.isabs(spec["path"]):
            return {**spec, "path": os.path.normpath(os.path.join(recipe_dir, spec["path"]))}
        return spec
    return map_data(step, config, place)


def _source_format(recipe: Recipe) -> str | None:
    """The recipe model's format when this machine can tell (a factory is a PyTorch module), else None."""
    source = recipe.model
    if source.factory:
        return "torch"
    try:
        if source.path:
            path = (recipe.path.parent / source.path).resolve()
        else:
            import importlib

            path = Path(importlib.import_module(source.package).get_model_path())
        from slimops.handlers.info import describe

        return describe(path).format if path.is_dir() else None
    except Exception:  # noqa: BLE001 - not on this machine (a cluster path) or not installed: checked when it runs
        return None


FORMAT_HINTS = {"onnx": "put an export step before it", "hf": "it takes the model before export",
                "torch": "it takes the model before export"}


def check_chain(recipe: Recipe, source_format: str | None) -> None:
    from slimops.core import parse_config

    """Refuse, when the plan is built, a chain that cannot run: a step given a format it does not take, a step
    without the baseline it needs, a registry or deploy step with no passing gate before it."""
    formats: dict[str, str | None] = {"source": source_format}
    gated: dict[str, bool] = {"source": False}  # whether a step's output carries a gate's evidence
    for index, spec in enumerate(recipe.steps):
        step = get_step(spec.step)
        where = f"{recipe.path}: steps[{index}] {spec.id}"
        given = formats[spec.input]
        if given is not None and given not in step.accepts:
            hint = FORMAT_HINTS.get(step.accepts[0], "")
            raise BadInput(f"{where}: {spec.step} takes {' or '.join(step.accepts)} models, and {spec.input} gives "
                           f"{given}{'; ' + hint if hint else ''}")
        config = parse_config(spec.step, spec.config)
        for name in step.required_inputs(config):
            if getattr(spec, name, None) is None:
                raise BadInput(f"{where}: {spec.step} needs a {name} ({name}: the id of an earlier step, or source)")
        if step.requires_gate() and not gated[spec.input]:
            raise BadInput(f"{where}: {spec.step} acts only on a model a gate passed, and {spec.input} is not the "
                           "output of a validate step (or of register/promote after one); put it after validate")
        formats[spec.id] = step.output_format(config, given)
        gated[spec.id] = step.role == "gate" or (step.requires_gate() and gated[spec.input])


def run_call(call: StepCall, model: str | Path, out: str | Path, baseline: str | Path | None = None,
             recipe_dir: str | Path = ".", threads: int | None = None):
    """Run one call in-process, as ``argv`` would in a container: the step's ``core.Outcome`` (ok, gate_failed or
    refused); bad input raises BadInput."""
    from slimops import factories
    from slimops.core import run_step

    factories.allow(call.allow_factories)
    inputs = {"baseline": Path(baseline)} if call.baseline is not None and baseline is not None else {}
    if call.baseline is not None and baseline is None:
        raise BadInput(f"step {call.id} compares against {call.baseline!r}; pass its model directory as baseline")
    return run_step(call.step, Path(model), Path(out), call.resolved_config(recipe_dir), inputs, threads=threads)


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
