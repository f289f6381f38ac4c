"""A recipe as a KFP pipeline: source -> the compression chain -> ``dsl.If(gate passed)`` promotion,
``dsl.Else`` a task that explains the rejection. Recipe errors (unknown step, no gate, a gate that checks
nothing, no image) raise BadInput here, when the pipeline is built, not later on a cluster.

Why If *and* Else: the KFP backends run a lone ``dsl.If`` fine, but kfp.local (2.17) does not. It evaluates a
condition against the scope the condition task sits in, and there it looks the channel
``pipelinechannel--validate-passed`` up as a pipeline input, never as validate's output; the lookup fails, the
condition counts as false, and the branch is skipped with only the warning "Could not resolve parent input:
validate-passed". ``dsl.If`` + ``dsl.Else`` compile to a ``condition-branches`` sub-DAG whose inputs carry the
verdict; inside it the value *is* an input, so both runners take the same branch.
"""

# No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
import json
from pathlib import Path

from kfp import dsl
from kfp.dsl import Input, Model

from slimops.adapters.kfp import components
from slimops.adapters.kfp.placement import apply_placement, helper_placement, placements
from slimops.errors import BadInput
from slimops.plan import Plan, Retry, StepCall, plan_recipe
from slimops.recipe import load_recipe
from slimops.retry import SOURCE_RETRY

KINDS = ("python", "container")


class _Tasks:
    """Makes one kind's tasks (Python or container components) for a plan."""

    def __init__(self, kind: str, image: str, plan: Plan, recipe_dir: str):
        self.kind, self.image, self.plan, self.recipe_dir = kind, image, plan, recipe_dir

    def source(self):
        if self.kind == "container":
            return components.container_source(self.plan, self.image)()
        return components.python_helper("source", self.image)(
            spec=json.dumps(self.plan.model, sort_keys=True), recipe_dir=self.recipe_dir)

    def step(self, call: StepCall, models: dict, gate: bool):
        inputs = {"model": models[call.input]}
        if self.kind == "container":
            if call.baseline is not None:
                inputs["baseline"] = models[call.baseline]
            make = components.container_component(call, self.image, self.recipe_dir, self.plan.threads, gate=gate)
            return make(**inputs).set_display_name(call.id)
        make = components.python_component(call.step, self.image)
        # Only validate and distill read a baseline; the core ignores one given to any other step, and so do we.
        if call.baseline is not None and "baseline" in make.component_spec.inputs:
            inputs["baseline"] = models[call.baseline]
        if call.gated:
            inputs["on_gate_fail"] = "continue" if gate else "exit"
        task = make(**inputs, config=json.dumps(call.config, sort_keys=True), recipe_dir=self.recipe_dir,
                    threads=self.plan.threads or 0)
        return task.set_display_name(call.id)

    def rejection(self, validated):
        make = components.container_rejection(self.image) if self.kind == "container" else \
            components.python_helper("gate_rejected", self.image)
        return make(validated=validated).set_display_name("gate-rejected")

    def gate_report(self, validated):
        """The container kind's report.html task (the Python kind's validate has the HTML output itself)."""
        if self.kind != "container":
            return None
        return components.container_gate_report(self.image)(validated=validated).set_display_name("gate-report")


def _policy(task, call: StepCall):
    """The plan's cache and retry policy: a step with side effects is never cached (a cached register would
    silently skip the registration) nor retried blindly."""
    task.set_caching_options(call.cacheable)
    return _retry(task, call.retry)


def _retry(task, retry: Retry | None):
    """KFP retries a task on any non-zero exit. The gate runs with ``--on-gate-fail continue`` (a failed verdict
    exits 0 and branches), so what it retries is exit 4, inconclusive, with the recipe's backoff."""
    if retry:
        task.set_retry(num_retries=retry.retries, backoff_duration=f"{retry.backoff_s:g}s", backoff_factor=retry.factor)
    return task


def build_pipeline(recipe_path: str | Path, image: str | None = None, kind: str = "python", *,
                   recipe_dir: str = ".", model_uri: str | None = None, model_input: bool = False):
    """The recipe as a KFP pipeline (compile it with ``kfp.compiler.Compiler``, or run it with ``kfp.local``).

    kind: ``python`` (Python components calling the core) or ``container`` (the ``slimops step`` command).
    recipe_dir: where the recipe's relative data paths are found inside the tasks.
    model_uri: start from an existing model artifact (``dsl.importer``) instead of the recipe's model section.
    model_input: the pipeline takes ``model: Input[Model]``, so it nests in an existing pipeline as a component:
    ``compress(model=train_task.outputs["model"])``.
    """
    if kind not in KINDS:
        raise BadInput(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if model_uri and model_input:
        raise BadInput("give model_uri or model_input, not both: the pipeline starts from one model")
    recipe = load_recipe(recipe_path)
    plan = plan_recipe(recipe)
    tasks = _Tasks(kind, components.kfp_image(image), plan, recipe_dir)
    where, helpers = placements(recipe), helper_placement(recipe)

    def wire(model):
        if model is None:
            model = (dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False).output if model_uri
                     else apply_placement(_retry(tasks.source(), SOURCE_RETRY).set_display_name("source"),
                                          helpers).outputs["output_model"])
        models = {"source": model}
        for call in plan.chain:
            task = _policy(apply_placement(tasks.step(call, models, gate=call is plan.gate), where[call.id]), call)
            models[call.id] = task.outputs["output_model"]
            if call is plan.gate:
                gate = task
        report = tasks.gate_report(gate.outputs["output_model"])
        if report is not None:
            apply_placement(report, helpers)
        # If *and* Else: the Else is what makes kfp.local resolve the condition (see the module docstring).
        with dsl.If(gate.outputs["passed"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
            for call in plan.promotion:
                task = _policy(apply_placement(tasks.step(call, models, gate=False), where[call.id]), call)
                models[call.id] = task.outputs["output_model"]
        with dsl.Else(name="gate-failed"):
            apply_placement(tasks.rejection(gate.outputs["output_model"]), helpers)

    if model_input:
        def pipeline(model: Input[Model]):
            wire(model)
    else:
        def pipeline():
            wire(None)
    pipeline.__doc__ = recipe.description or f"slimops recipe {plan.name}"
    return dsl.pipeline(pipeline, name=plan.name)
