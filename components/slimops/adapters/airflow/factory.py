"""A recipe as Airflow tasks: ``slimops_task_group`` (into a DAG you already have) and ``build_dag``.

The recipe is planned with ``slimops.plan.plan_recipe`` when the DAG file is parsed, so a recipe error (no gate,
a gate that checks nothing, an unknown step or option) is a DAG import error with slimops' message, not a
failure hours later on a worker. Tasks pass model directories to each other through XCom (``output["out"]``);
the promotion steps (after the gating validate) sit downstream of the gate task, so a failed gate leaves them
``upstream_failed``: they never run.

Each task retries as the plan says (``slimops.plan.StepCall.retry``): the gate on an inconclusive verdict with the
recipe's ``retry_inconclusive`` backoff (a gate that stays inconclusive fails, and promotion never runs), a
transform twice after 30 s, register / promote / deploy never. The gate runs in the one-slot pool
``slimops_benchmark``, which must exist (``airflow pools set slimops_benchmark 1 "..."``; see
``slimops.adapters.airflow.operators``). Every task has an ``execution_timeout`` by its step's role. ``task_kwargs``
you pass win over all of these.

``runner="local"`` (default) runs each step in the worker process; ``runner="kubernetes"`` runs the same step
command in the component image, one pod per step (``slimops.adapters.airflow.pod``; ``pod_kwargs`` go to every
pod: volumes, namespace, ...). The tasks take the run's ``recipe`` and ``gate`` (conf or params) when they run (``per_run``; see
``slimops.adapters.airflow.per_run``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, BaseOperator, TaskGroup, XComArg

from slimops.adapters.airflow.operators import SlimopsSourceOperator, check_runner, step_operator
from slimops.errors import BadInput
from slimops.plan import Plan, plan_recipe

ModelRef = str | XComArg | BaseOperator | None


def slimops_task_group(recipe: str | Path | Plan, *, model: ModelRef = None, start_after: str | None = None,
                       group_id: str | None = None, runs_dir: str | None = None, registry_dir: str | None = None,
                       threads: int | None = None, dag: DAG | None = None, runner: str = "local",
                       pod_kwargs: dict | None = None, per_run: bool = True, **task_kwargs: Any) -> TaskGroup:
    """Add a recipe's steps to the current DAG as one TaskGroup, and return it (``upstream >> group >> ...``).

    :param recipe: the recipe YAML (or a Plan from ``plan_recipe``).
    :param model: the model to start from: a directory path (templated, e.g. ``"{{ params.model }}"``), an
        upstream task's XCom (``train_task.output`` or a slimops operator's ``output["out"]``), or a slimops
        operator. Default: a ``source`` task materialises the recipe's ``model:`` section.
    :param start_after: the id of the recipe step whose output ``model`` is; steps up to it do not run. E.g.
        ``start_after="train"`` compresses a model trained elsewhere with a train-then-compress recipe.
    :param runs_dir, registry_dir: see ``SlimopsHook``.
    :param threads: CPU threads for the models (default: the recipe's ``threads``).
    :param runner: ``local`` (the worker process) or ``kubernetes`` (the component image, one pod per step).
    :param pod_kwargs: with ``runner="kubernetes"``: passed to every pod operator (``image``, ``namespace``,
        ``volumes``, ``volume_mounts``, ``pod_template_file``, ...).
    :param per_run: the tasks take the run's ``recipe`` / ``gate`` (conf or params) when they run.
    :param task_kwargs: passed to every task (``queue``, ``executor_config``, ``slimops_conn_id``, ...);
        ``retries``, ``retry_delay``, ``pool`` or ``execution_timeout`` here replace the plan's per-step policy
        for every task, the gate and register included.
    """
    plan = recipe if isinstance(recipe, Plan) else plan_recipe(recipe)
    group_id = group_id or re.sub(r"[^\w-]", "_", plan.name)
    # dag=None would override TaskGroup's default (the DAG being defined), so pass it only when given.
    where = {"dag": dag} if dag is not None else {}
    with TaskGroup(group_id=group_id, tooltip=f"slimops recipe {plan.name}", **where) as group:
        add_recipe_tasks(plan, model=model, start_after=start_after, runs_dir=runs_dir, registry_dir=registry_dir,
                         threads=threads, runner=runner, pod_kwargs=pod_kwargs, per_run=per_run, **task_kwargs)
    return group


def build_dag(recipe: str | Path | Plan, *, dag_id: str | None = None, model: ModelRef = None,
              start_after: str | None = None, runs_dir: str | None = None, registry_dir: str | None = None,
              threads: int | None = None, task_kwargs: dict | None = None, runner: str = "local",
              pod_kwargs: dict | None = None, per_run: bool = True, **dag_kwargs: Any) -> DAG:
    """A DAG that runs a recipe: ``source -> steps ... -> validate (gate) -> promotion steps``.

    ``dag_kwargs`` go to ``DAG`` (``schedule``, ``start_date``, ``catchup``, ``params``, ``tags``, ...); the
    other parameters are those of ``slimops_task_group``.
    """
    plan = recipe if isinstance(recipe, Plan) else plan_recipe(recipe)
    dag_kwargs.setdefault("catchup", False)
    dag_kwargs.setdefault("tags", ["slimops"])
    dag_kwargs.setdefault("doc_md", f"slimops recipe `{plan.recipe_path}`: " +
                          " -> ".join(c.id for c in plan.chain) + " (gate)" +
                          "".join(f" -> {c.id}" for c in plan.promotion))
    with DAG(dag_id=dag_id or re.sub(r"[^\w.-]", "_", plan.name), **dag_kwargs) as dag:
        add_recipe_tasks(plan, model=model, start_after=start_after, runs_dir=runs_dir, registry_dir=registry_dir,
                         threads=threads, runner=runner, pod_kwargs=pod_kwargs, per_run=per_run,
                         **(task_kwargs or {}))
    return dag


def add_recipe_tasks(plan: Plan, *, model: ModelRef = None, start_after: str | None = None,
                     runs_dir: str | None = None, registry_dir: str | None = None, threads: int | None = None,
                     runner: str = "local", pod_kwargs: dict | None = None, per_run: bool = True,
                     **task_kwargs: Any) -> dict[str, BaseOperator]:
    """Create the recipe's tasks in the current DAG / TaskGroup context; returns them by step id."""
    check_runner(runner)
    if pod_kwargs and runner != "kubernetes":
        raise BadInput("pod_kwargs apply to runner='kubernetes' only; pass runner='kubernetes' or drop pod_kwargs")
    if plan.gate is None:  # a Plan made with require_gate=False
        raise BadInput(f"{plan.recipe_path}: a DAG branches on a gate, and no step produces one; add a validate step "
                       "with a gate")
    common = {"runs_dir": runs_dir, "registry_dir": registry_dir, **task_kwargs}
    pod = {**(pod_kwargs or {}), "allow_factories": plan.allow_factories} if runner == "kubernetes" else {}
    recipe_dir = str(plan.recipe_dir)
    tasks: dict[str, BaseOperator] = {}
    outputs: dict[str, Any] = {}  # step id -> its model directory (an XCom reference or a path)
    skipped = _skipped_ids(plan, start_after, model)
    if model is None:
        source_class = SlimopsSourceOperator
        if runner == "kubernetes":
            from slimops.adapters.airflow.pod import SlimopsSourcePodOperator as source_class
        source = source_class(task_id="source", model_spec=plan.model, recipe_dir=recipe_dir, per_run=per_run, **pod,
                              **common)
        tasks["source"] = source
        outputs["source"] = source.output["out"]
    else:
        outputs[start_after or "source"] = _model_reference(model)

    for call in plan.calls:
        if call.id in skipped:
            continue
        for role, ref in (("input", call.input), ("baseline", call.baseline)):
            if ref is not None and ref not in outputs:
                raise BadInput(f"{plan.recipe_path}: step {call.id} takes the output of {ref!r} as its {role}, and "
                               f"with start_after={start_after!r} that step does not run here; start after a later "
                               "step or point the recipe's input/baseline at the given model's step")
        placement = {"placement": call.placement} if runner == "kubernetes" else {}
        task = step_operator(call.step, runner)(
            task_id=call.id, step_id=call.id, model=outputs[call.input],
            baseline=None if call.baseline is None else outputs[call.baseline],
            config=call.config, recipe_dir=recipe_dir, threads=threads or plan.threads,
            inconclusive=call.inconclusive, per_run=per_run, is_gate=call is plan.gate, **placement, **pod,
            **common)
        tasks[call.id] = task
        outputs[call.id] = task.output["out"]

    # Promotion waits on the gate even when a promotion step reads an earlier step's model.
    gate = tasks[plan.gate.id]
    for call in plan.promotion:
        gate >> tasks[call.id]
    return tasks


def _skipped_ids(plan: Plan, start_after: str | None, model: ModelRef) -> set[str]:
    if start_after is None:
        return set()
    chain_ids = [c.id for c in plan.chain]
    if model is None:
        raise BadInput(f"start_after={start_after!r} replaces that step's output with a model you give; pass model=...")
    if start_after not in chain_ids or start_after == plan.gate.id:
        raise BadInput(f"{plan.recipe_path}: start_after={start_after!r} is not a step before the gate; "
                       f"choose one of {', '.join(chain_ids[:-1]) or '(none)'}")
    return {"source", *chain_ids[:chain_ids.index(start_after) + 1]}


def _model_reference(model: ModelRef):
    if isinstance(model, BaseOperator):
        # A slimops operator's model directory; any other operator's return value must be the path itself.
        return model.output["out"] if getattr(model, "slimops_task", False) else model.output
    return model
