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

Every task has an ``execution_timeout`` (``STEP_TIMEOUTS``, by the step's role: a hung benchmark or a stuck
registry call fails the task instead of holding its slot forever; pass ``execution_timeout=`` to change it).
The step's progress lines go to the task log at INFO. The registry steps record ``<dag_id>/<run_id>`` as who
acted in the promotion audit log, and find the registry through the ``slimops`` connection (see ``hooks``).

These operators run the step in the worker process. To run it in the component image instead, use
``step_operator(step, runner="kubernetes")`` (``slimops.adapters.airflow.pod``): the same step command, in a pod.

The config is checked when the DAG is parsed (unless it holds templates), so a typo fails the DAG import, not
the run. A task built from a recipe (``per_run=True``, as the factory builds them) takes the run's ``recipe`` and
``gate`` (conf or params) when it runs: see ``per_run``.
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
from slimops.adapters.airflow.hooks import DEFAULT_CONN_ID, SlimopsHook
from slimops.adapters.airflow.per_run import RunSettings, settings_for_run, source_for_run
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


# How long one try of a step may run, by the step's role. A transform includes train and distill (hours on a
# CPU for a real model); a gate times two models for a bounded number of rounds; a registry call is seconds.
STEP_TIMEOUTS = {"source": timedelta(minutes=30), "transform": timedelta(hours=6), "gate": timedelta(hours=1),
                 "registry": timedelta(minutes=15), "deploy": timedelta(hours=1)}
DEFAULT_TIMEOUT = timedelta(hours=2)


def step_timeout(step: str) -> timedelta:
    return STEP_TIMEOUTS.get(get_step(step).role, DEFAULT_TIMEOUT) if step != "source" else STEP_TIMEOUTS["source"]


def task_policy(step: str, inconclusive: Retry | None = None) -> dict:
    """How the plan runs ``step`` on Airflow: its retries, its execution timeout and, for a gate, the one-slot
    benchmark pool. ``inconclusive``: the recipe's ``retry_inconclusive`` (default: the recipe default)."""
    call = StepCall(step, step, "", None, {}, False, **({"inconclusive": inconclusive} if inconclusive else {}))
    policy = retry_arguments(call.retry)
    policy["execution_timeout"] = step_timeout(step)
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
    slimops_task = True  # hands its model directory downstream as XCom "out"

    def __init__(self, *, out: str | None = None, runs_dir: str | None = None, registry_dir: str | None = None,
                 slimops_conn_id: str | None = DEFAULT_CONN_ID, **kwargs):
        super().__init__(**kwargs)
        self.out = out
        self.runs_dir = runs_dir
        self.registry_dir = registry_dir
        self.slimops_conn_id = slimops_conn_id

    def hook(self) -> SlimopsHook:
        return SlimopsHook(slimops_conn_id=self.slimops_conn_id, runs_dir=self.runs_dir,
                           registry_dir=self.registry_dir)

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
    """Run one slimops step (``slimops step <step>``) on a model directory, in the worker process.

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
    :param per_run: take the run's ``recipe`` / ``gate`` (conf or params) when the task runs (see ``slimops.adapters.airflow.per_run``); the factory sets it.
    :param is_gate: this task is the recipe's gate (the one a run's ``gate`` applies to); default: a validate step.
    :param slimops_conn_id: the ``slimops`` connection with the registry (see ``SlimopsHook``).
    """

    template_fields: Sequence[str] = ("model", "out", "baseline", "config")
    template_fields_renderers = {"config": "json"}
    step_name: str | None = None  # set by the per-step subclasses

    def __init__(self, *, model: Any, config: dict | None = None, baseline: Any = None, step: str | None = None,
                 recipe_dir: str | None = None, threads: int | None = None, step_id: str | None = None,
                 model_format: str | None = None, inconclusive: Retry | None = None, per_run: bool = False,
                 is_gate: bool | None = None, **kwargs):
        if (step or self.step_name) in step_names():  # an unknown step is reported below, with the task id
            kwargs = {**task_policy(step or self.step_name, inconclusive), **kwargs}
        super().__init__(**kwargs)
        self.step = step or self.step_name
        if self.step_name and step and step != self.step_name:
            raise BadInput(f"task {self.task_id}: {type(self).__name__} runs {self.step_name}, not {step}")
        self.model = model
        self.config = dict(config or {})
        self.baseline = baseline
        self.recipe_dir = recipe_dir
        self.threads = threads
        self.step_id = step_id or self.step
        self.per_run = per_run
        self.is_gate = get_step(self.step).role == "gate" if is_gate is None and self.step in step_names() else is_gate
        self.model_format, self.output_format = check_step(self.task_id, self.step, self.step_id, self.config,
                                                          self.baseline, self.recipe_dir, model, model_format)

    def settings(self, context) -> RunSettings:
        """The config, recipe directory and threads of this run (the run's recipe / gate when ``per_run``)."""
        if not self.per_run:
            return RunSettings(self.config, self.recipe_dir, self.threads)
        return settings_for_run(context, task_id=self.task_id, step=self.step, step_id=self.step_id,
                                config=self.config, recipe_dir=self.recipe_dir, threads=self.threads,
                                gated=bool(self.is_gate))

    def execute(self, context):
        hook = self.hook()
        out = self.output_dir(hook, context)
        try:
            run = self.settings(context)
            if run.where:
                self.log.info("this run's settings: recipe %s (%s)", run.recipe or "of the DAG", run.where)
            result = hook.run_step(self.step, self.model, out, run.config, step_id=self.step_id,
                                   baseline=self.baseline, recipe_dir=run.recipe_dir or Path.cwd(),
                                   threads=run.threads, actor=run_actor(context), log=self.log)
        except BadInput as err:
            raise AirflowFailException(f"slimops: error: {err}") from None
        except GateFailed as err:  # register / promote refusing a model without a passing gate: final too
            raise AirflowFailException(str(err)) from None
        self.push(context, result)
        return verdict(self.step_id, result, Path(result["out"]) / "gate_report.json")


def verdict(step_id: str, result: dict, report) -> dict:
    """A step's result as the task's end: returned when it passed or was not a gate; an inconclusive gate raises
    a retryable AirflowException, a failed one AirflowFailException (final)."""
    if result.get("status") == "inconclusive":
        # Not a verdict: retryable, so Airflow runs the gate again after its backoff (on a quieter machine,
        # one hopes); when the retries run out the task fails and promotion never runs.
        raise AirflowException(f"gate inconclusive ({step_id}): " + _reasons(result) + f"report: {report}")
    if result.get("status") == "gate_failed":
        # Never retried: the same model measured again does not become better; promotion tasks downstream
        # end up upstream_failed and never run.
        raise AirflowFailException(f"gate failed ({step_id}): " + _reasons(result) + f"report: {report}")
    return result


def _reasons(result: dict) -> str:
    return "".join(f"{reason}; " for reason in result.get("reasons") or [])


def run_actor(context) -> str:
    """Who acts, for the registry's audit log: the DAG run."""
    return f"{context['dag'].dag_id}/{context['run_id']}"


def check_step(task_id: str, step: str | None, step_id: str, config: dict, baseline: Any, recipe_dir: str | None,
               model: Any, model_format: str | None) -> tuple[str | None, str | None]:
    """Parse time, not run time: an unknown step or option, a missing baseline, or a model format the step does
    not take fails the DAG import with slimops' own message. Returns the model's format (when known here) and the
    format the step hands downstream, so the next slimops task is checked too."""
    from slimops.core import parse_config

    if not step:
        raise BadInput(f"task {task_id}: SlimopsStepOperator needs step=NAME (one of {', '.join(step_names())})")
    if step not in step_names():
        raise BadInput(f"task {task_id}: unknown step {step!r}; known steps: {', '.join(step_names())}")
    if "baseline" in get_step(step).extra_inputs and baseline is None:
        raise BadInput(f"task {task_id}: {step} compares against a baseline; pass baseline=<model dir "
                       "or upstream task.output['out']>")
    parsed = None
    if not _is_templated(config):
        placed = StepCall(step_id, step, "", None, config, False).resolved_config(recipe_dir or ".")
        parsed = parse_config(step, placed, where=f"task {task_id} config")
    model_format = model_format or _format_of(model)
    accepts = get_step(step).accepts
    if model_format and model_format not in accepts:
        hint = "; put SlimopsExportOperator before it" if accepts == ("onnx",) else ""
        raise BadInput(f"task {task_id}: {step} takes {' or '.join(accepts)} models, and its model "
                       f"is {model_format}{hint}")
    return model_format, get_step(step).output_format(parsed, model_format) if parsed else None


class SlimopsSourceOperator(_SlimopsOperator):
    """``slimops source``: materialise a recipe's model section (a seeded factory module, a package's model, a
    path) as the run's first model directory.

    :param model_spec: the recipe's ``model:`` mapping (e.g. ``plan_recipe(path).model``).
    :param recipe_dir: what a relative ``path`` in it is relative to.
    """

    template_fields: Sequence[str] = ("out",)

    def __init__(self, *, model_spec: dict, recipe_dir: str | None = None, per_run: bool = False, **kwargs):
        super().__init__(**{**retry_arguments(SOURCE_RETRY), "execution_timeout": STEP_TIMEOUTS["source"], **kwargs})
        self.model_spec = dict(model_spec)
        self.recipe_dir = recipe_dir
        self.per_run = per_run
        self.output_format = "torch" if self.model_spec.get("factory") else None  # for the next task's check

    def execute(self, context):
        hook = self.hook()
        out = self.output_dir(hook, context)
        try:
            spec, recipe_dir = source_for_run(context, self.model_spec, self.recipe_dir) if self.per_run else \
                (self.model_spec, self.recipe_dir)
            path = hook.materialize_source(spec, out, recipe_dir or Path.cwd())
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

    def __init__(self, *, key: str = "model", must_exist: bool = True, **kwargs):
        super().__init__(**{"execution_timeout": timedelta(minutes=5), **kwargs})
        self.key = key
        self.must_exist = must_exist  # False when the steps run in pods and this worker need not see the model

    def execute(self, context):
        try:
            path, where = self.hook().incoming_model(context["dag_run"].conf, context.get("params"),
                                                     context.get("triggering_asset_events"), key=self.key,
                                                     must_exist=self.must_exist)
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


RUNNERS = ("local", "kubernetes")


def step_operator(step: str, runner: str = "local") -> type[BaseOperator]:
    """The operator class of one step on a runner: ``step_operator("quantize") is SlimopsQuantizeOperator`` (in
    the worker process); ``step_operator("quantize", runner="kubernetes")`` runs ``slimops step quantize`` in the
    component image, in a pod (``slimops.adapters.airflow.pod``; needs apache-airflow-providers-cncf-kubernetes)."""
    if step not in step_names():
        raise BadInput(f"unknown step {step!r}; known steps: {', '.join(step_names())}")
    check_runner(runner)
    if runner == "kubernetes":
        from slimops.adapters.airflow.pod import pod_operator

        return pod_operator(step)
    return globals()[_class_name(step)]


def check_runner(runner: str) -> None:
    if runner not in RUNNERS:
        raise BadInput(f"runner={runner!r}: choose local (the worker process) or kubernetes (a pod running the "
                       "component image)")


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
