"""Operators: one per slimops step, thin over SlimopsHook.

``SlimopsStepOperator(step="quantize", ...)`` runs any step; ``SlimopsQuantizeOperator(...)`` and its siblings
(one per step in the registry, generated below) fix the step. Every operator:

- takes ``model`` (a model directory: a path, a Jinja template, or an upstream ``.output["out"]``), ``out``
  (default: ``<runs dir>/<dag_id>/<run_id>/steps/<task_id>``), ``config`` (the step's options, as in a recipe;
  templated) and, for validate, ``baseline``;
- pushes XComs ``out``, ``metrics``, ``gate_passed``, ``status`` and, as its return value, all of them with the
  reasons;
- raises ``AirflowFailException`` (no retries) on a failed gate or bad input: neither gets better by retrying;
- raises a retryable ``AirflowException`` on an inconclusive gate (it could not time the models honestly): Airflow
  runs it again after its backoff, and once the retries run out the task fails and promotion never runs;
- retries as the plan says (``slimops.plan.StepCall.retry``, see ``task_policy``): a gate on inconclusive with the
  recipe's ``retry_inconclusive`` backoff, a transform twice after 30 s, a step with side effects never. A gate
  runs in the one-slot pool ``slimops_benchmark`` (``BENCHMARK_POOL``): it times two models, and a second
  benchmark running beside it would skew both.
  Arguments you pass (``retries``, ``pool``, ...) win; DAG ``default_args`` do not override the plan's policy (a
  blanket ``retries`` would retry a registration blindly).

Airflow does not create pools, and a task whose pool does not exist is never scheduled (the scheduler logs
"Tasks using non-existent pool"). Create it once per deployment::

    airflow pools set slimops_benchmark 1 "slimops validate: one benchmark at a time"

The config is checked when the DAG is parsed (unless it holds templates), so a typo fails the DAG import, not
the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, XComArg
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from slimops.adapters.airflow import BENCHMARK_POOL
from slimops.adapters.airflow.hooks import SlimopsHook
from slimops.errors import BadInput, GateFailed
from slimops.plan import Retry, StepCall
from slimops.retry import SOURCE_RETRY
from slimops.steps import get_step, step_names


def retry_arguments(retry: Retry | None) -> dict:
    """A plan's retry policy as BaseOperator arguments. Airflow's exponential backoff takes the factor as its
    multiplier (``retry_exponential_backoff``; True would mean 2) and waits 1 to 2 times ``retry_delay * factor**n``
    (a per-task jitter); ``max_retry_delay`` keeps every wait within the plan's longest."""
    if retry is None:
        return {"retries": 0}
    return {"retries": retry.retries, "retry_delay": timedelta(seconds=retry.backoff_s),
            "retry_exponential_backoff": retry.factor, "max_retry_delay": timedelta(seconds=max(retry.waits()))}


def task_policy(step: str, inconclusive: Retry | None = None) -> dict:
    """How the plan runs ``step`` on Airflow: its retries and, for a gate, the one-slot benchmark pool.
    ``inconclusive``: the recipe's ``retry_inconclusive`` (default: the recipe default)."""
    call = StepCall(step, step, "", None, {}, False, **({"inconclusive": inconclusive} if inconclusive else {}))
    policy = retry_arguments(call.retry)
    if call.gated:
        policy.update(pool=BENCHMARK_POOL, pool_slots=1)
    return policy


def _is_templated(value: Any) -> bool:
    """True when a value is only known at run time (a Jinja string or an XCom reference)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_is_templated(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_is_templated(v) for v in value)
    return isinstance(value, XComArg)


class _SlimopsOperator(BaseOperator):
    """Shared by the slimops operators: where outputs go, and turning slimops errors into task failures."""

    ui_color = "#d7f0e3"

    def __init__(self, *, out: str | None = None, runs_dir: str | None = None, registry_dir: str | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.out = out
        self.runs_dir = runs_dir
        self.registry_dir = registry_dir

    def hook(self) -> SlimopsHook:
        return SlimopsHook(runs_dir=self.runs_dir, registry_dir=self.registry_dir)

    def output_dir(self, hook: SlimopsHook, context) -> Path:
        if self.out:
            return Path(self.out)
        return hook.step_out(context["dag"].dag_id, context["run_id"], self.task_id)

    def push(self, context, result: dict) -> dict:
        ti = context["ti"]
        for key in ("out", "metrics", "gate_passed", "status"):
            if key in result:
                ti.xcom_push(key=key, value=result[key])
        return result


class SlimopsStepOperator(_SlimopsOperator):
    """Run one slimops step (``slimops step <step>``) on a model directory.

    :param step: the step name (``slimops steps`` lists them); fixed by the per-step subclasses.
    :param model: the input model directory (templated; an upstream ``task.output["out"]`` works).
    :param config: the step's options as in a recipe (templated); data paths relative to ``recipe_dir``.
    :param baseline: validate only: the model directory to compare against (templated).
    :param out: the output directory (templated); default one per run under the runs dir.
    :param recipe_dir: where relative data paths in ``config`` live (default: the worker's working directory).
    :param threads: CPU threads for the models (default: all cores).
    :param step_id: the recipe's id for this step, for logs and the manifest.
    :param inconclusive: a gate: how to retry an inconclusive verdict (the recipe's ``retry_inconclusive``;
        default 3 retries after 60 s, doubling). ``retries`` / ``retry_delay`` / ``retry_exponential_backoff``
        given here win over it.
    """

    template_fields: Sequence[str] = ("model", "out", "baseline", "config")
    template_fields_renderers = {"config": "json"}
    step_name: str | None = None  # set by the per-step subclasses

    def __init__(self, *, model: Any, config: dict | None = None, baseline: Any = None, step: str | None = None,
                 recipe_dir: str | None = None, threads: int | None = None, step_id: str | None = None,
                 model_format: str | None = None, inconclusive: Retry | None = None, **kwargs):
        if (step or self.step_name) in step_names():  # an unknown step is reported below, with the task id
            kwargs = {**task_policy(step or self.step_name, inconclusive), **kwargs}
        super().__init__(**kwargs)
        self.step = step or self.step_name
        if not self.step:
            raise BadInput(f"task {self.task_id}: SlimopsStepOperator needs step=NAME (one of {', '.join(step_names())})")
        if self.step_name and step and step != self.step_name:
            raise BadInput(f"task {self.task_id}: {type(self).__name__} runs {self.step_name}, not {step}")
        self.model = model
        self.config = dict(config or {})
        self.baseline = baseline
        self.recipe_dir = recipe_dir
        self.threads = threads
        self.step_id = step_id or self.step
        parsed = self._check_config()
        self.model_format = model_format or _format_of(model)
        self._check_format()
        # What this task hands downstream, so the next slimops task is checked at parse time too.
        self.output_format = get_step(self.step).output_format(parsed, self.model_format) if parsed else None

    def _check_config(self) -> None:
        # Parse time, not run time: an unknown step or option fails the DAG import with slimops' own message.
        from slimops.core import parse_config
        from slimops.plan import StepCall

        if self.step not in step_names():
            raise BadInput(f"task {self.task_id}: unknown step {self.step!r}; known steps: {', '.join(step_names())}")
        if "baseline" in get_step(self.step).extra_inputs and self.baseline is None:
            raise BadInput(f"task {self.task_id}: {self.step} compares against a baseline; pass baseline=<model dir "
                           "or upstream task.output['out']>")
        if _is_templated(self.config):
            return None
        placed = StepCall(self.step_id, self.step, "", None, self.config, False).resolved_config(self.recipe_dir or ".")
        return parse_config(self.step, placed, where=f"task {self.task_id} config")

    def _check_format(self) -> None:
        """Parse time: a model whose format is known here (an upstream slimops task's output, a literal directory,
        or ``model_format=``) must be one the step takes, or the DAG fails to import."""
        step = get_step(self.step)
        if self.model_format and self.model_format not in step.accepts:
            hint = "; put SlimopsExportOperator before it" if step.accepts == ("onnx",) else ""
            raise BadInput(f"task {self.task_id}: {self.step} takes {' or '.join(step.accepts)} models, and its model "
                           f"is {self.model_format}{hint}")

    def execute(self, context):
        hook = self.hook()
        out = self.output_dir(hook, context)
        try:
            result = hook.run_step(self.step, self.model, out, self.config, step_id=self.step_id,
                                   baseline=self.baseline, recipe_dir=self.recipe_dir or Path.cwd(),
                                   threads=self.threads)
        except BadInput as err:
            raise AirflowFailException(f"slimops: error: {err}") from None
        except GateFailed as err:  # register / promote refusing a model without a passing gate: final too
            raise AirflowFailException(str(err)) from None
        self.push(context, result)
        report = Path(result["out"]) / "gate_report.json"
        if result["status"] == "inconclusive":
            # Not a verdict: retryable, so Airflow runs the gate again after its backoff (on a quieter machine,
            # one hopes); when the retries run out the task fails and promotion never runs.
            raise AirflowException(f"gate inconclusive ({self.step_id}): " + "; ".join(result["reasons"]) +
                                   f"; report: {report}")
        if result["status"] == "gate_failed":
            # Never retried: the same model measured again does not become better; promotion tasks downstream
            # end up upstream_failed and never run.
            raise AirflowFailException(f"gate failed ({self.step_id}): " + "; ".join(result["reasons"]) +
                                       f"; report: {report}")
        return result


class SlimopsSourceOperator(_SlimopsOperator):
    """``slimops source``: materialise a recipe's model section (a seeded factory module, a package's model, a
    path) as the run's first model directory.

    :param model_spec: the recipe's ``model:`` mapping (e.g. ``plan_recipe(path).model``).
    :param recipe_dir: what a relative ``path`` in it is relative to.
    """

    template_fields: Sequence[str] = ("out",)

    def __init__(self, *, model_spec: dict, recipe_dir: str | None = None, **kwargs):
        super().__init__(**{**retry_arguments(SOURCE_RETRY), **kwargs})
        self.model_spec = dict(model_spec)
        self.recipe_dir = recipe_dir
        self.output_format = "torch" if self.model_spec.get("factory") else None  # for the next task's check

    def execute(self, context):
        hook = self.hook()
        out = self.output_dir(hook, context)
        try:
            path = hook.materialize_source(self.model_spec, out, self.recipe_dir or Path.cwd())
        except BadInput as err:
            raise AirflowFailException(f"slimops: error: {err}") from None
        return self.push(context, {"out": str(Path(path).absolute()), "step": "source"})


class SlimopsIncomingModelOperator(_SlimopsOperator):
    """The model a run was started for: ``dag_run.conf["model"]`` (or the ``model`` param), else the ``model``
    in the extra of the asset event that triggered the run. Fails (no retry) when there is none, or it is not a
    directory.

    A producer announces a model with ``outlet_events[asset].extra = {"model": "/path/to/model_dir"}``.
    """

    template_fields: Sequence[str] = ()

    def __init__(self, *, key: str = "model", **kwargs):
        super().__init__(**kwargs)
        self.key = key

    def execute(self, context):
        try:
            path, where = self.hook().incoming_model(context["dag_run"].conf, context.get("params"),
                                                     context.get("triggering_asset_events"), key=self.key)
        except BadInput as err:
            raise AirflowFailException(f"slimops: error: {err}") from None
        self.log.info("incoming model %s (from %s)", path, where)
        return self.push(context, {"out": str(path), "step": "incoming", "from": where})


def _format_of(model: Any) -> str | None:
    """The format of a model known at parse time: an upstream slimops task's output, or a literal directory."""
    if isinstance(model, XComArg):
        upstream = getattr(model, "operator", None)
        return getattr(upstream, "output_format", None)
    if isinstance(model, (str, Path)) and not _is_templated(str(model)) and Path(model).is_dir():
        from slimops.handlers.info import describe

        try:
            return describe(Path(model)).format
        except BadInput:
            return None  # checked again, and reported, when the task runs
    return None


def _class_name(step: str) -> str:
    return "Slimops" + "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", step)) + "Operator"


def step_operator(step: str) -> type[SlimopsStepOperator]:
    """The operator class of one step, e.g. ``step_operator("quantize") is SlimopsQuantizeOperator``."""
    if step not in step_names():
        raise BadInput(f"unknown step {step!r}; known steps: {', '.join(step_names())}")
    return globals()[_class_name(step)]


# One operator class per registered step, generated so a new step gets its operator without touching this file.
for _step in step_names():
    _cls = type(SlimopsStepOperator)(_class_name(_step), (SlimopsStepOperator,), {
        "__module__": __name__,
        "__doc__": f"Run the slimops ``{_step}`` step (``slimops steps {_step}`` lists its options). "
                   "See SlimopsStepOperator for the parameters.",
        "step_name": _step,
    })
    globals()[_cls.__name__] = _cls
del _step, _cls
