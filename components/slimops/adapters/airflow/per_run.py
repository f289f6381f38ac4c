"""What a run may change without a new DAG file or a scheduler restart: the recipe and the gate.

A DAG's tasks (their ids and order) come from the recipe it was parsed with: for the shipped DAGs the Airflow
Variable ``slimops_recipe``, else the recipe installed with slimops (``dag_recipe``). DAG files are parsed again
by the DAG processor (every 30 s by default) and by the worker when a task starts, so a changed Variable applies to
the next run without a restart. Each run may also give, in its conf or the trigger form (DAG params):

- ``recipe``: another recipe with the same steps (e.g. other data, other step options, another gate);
- ``gate``: rules that replace the gating step's (``{"min_speedup": 1.5}``; ``null`` turns a rule off).

Every task of a run reads the same values, so the run is consistent; a recipe whose steps do not match the
DAG's fails the task with a message saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimops.errors import BadInput

RECIPE_VARIABLE = "slimops_recipe"
RECIPE_PARAM = "recipe"
GATE_PARAM = "gate"
# The shipped DAGs' recipe when the Variable is not set: installed with the package (a copy of
# examples/digits-pipeline.yaml), so a DAG file copied into any dags folder still finds it.
PACKAGED_RECIPE = "digits-pipeline.yaml"


def packaged_recipe() -> str:
    from importlib.resources import files

    return str(files("slimops.adapters.airflow") / "recipes" / PACKAGED_RECIPE)


def dag_recipe() -> str:
    """The recipe a DAG file is parsed with: the Variable ``slimops_recipe`` (re-read at every parse, so setting
    it needs no restart), else the recipe installed with slimops."""
    from slimops.adapters.airflow.hooks import variable_or_none

    return variable_or_none(RECIPE_VARIABLE) or packaged_recipe()


def run_params() -> dict:
    """The DAG params a run may set (the trigger form shows them; ``--conf`` overrides them)."""
    from airflow.sdk import Param

    return {
        RECIPE_PARAM: Param(None, type=["null", "string"], description="a recipe YAML the workers can read, with "
                            "the same steps as the DAG's (default: the DAG's own)"),
        GATE_PARAM: Param(None, type=["null", "object"], description='gate rules replacing the recipe\'s for this '
                          'run, e.g. {"min_speedup": 1.5}; null turns a rule off'),
    }


@dataclass(frozen=True)
class RunSettings:
    config: dict
    recipe_dir: str | None
    threads: int | None
    recipe: str | None = None  # the recipe this run took its settings from, when not the DAG's own
    where: str | None = None  # where that recipe (or the gate) came from: dag_run.conf or params


def run_value(context, key: str):
    """``dag_run.conf[key]``, else ``params[key]`` (the trigger form's value, or the DAG's default)."""
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    if conf.get(key) is not None:
        return conf[key], "dag_run.conf"
    params = context.get("params") or {}
    value = params.get(key) if hasattr(params, "get") else None
    return (value, "params") if value is not None else (None, None)


def run_recipe(context) -> tuple[str | None, str | None]:
    """The recipe this run takes its settings from, and where it was named; (None, None): the DAG's own."""
    recipe, where = run_value(context, RECIPE_PARAM)
    return (str(recipe), where) if recipe else (None, None)


def source_for_run(context, model_spec: dict, recipe_dir: str | None) -> tuple[dict, str | None]:
    """The ``source`` task's model section and recipe directory in this run."""
    from slimops.plan import plan_recipe

    recipe, _ = run_recipe(context)
    if recipe is None:
        return model_spec, recipe_dir
    plan = plan_recipe(recipe, source_format=None)
    return plan.model, str(plan.recipe_dir)


def settings_for_run(context, *, task_id: str, step: str, step_id: str, config: dict, recipe_dir: str | None,
                     threads: int | None, gated: bool) -> RunSettings:
    """The config, recipe directory and threads this task runs with in this run (see the module docstring)."""
    from slimops.core import parse_config
    from slimops.plan import StepCall, _gate_checks, plan_recipe

    recipe, where = run_recipe(context)
    settings = RunSettings(dict(config), recipe_dir, threads)
    if recipe:
        plan = plan_recipe(recipe, source_format=None)
        call = next((c for c in plan.calls if c.id == step_id), None)
        if call is None or call.step != step or (call is plan.gate) != gated:
            raise BadInput(f"task {task_id}: recipe {recipe} (from {where}) has no step {step_id!r} running {step}"
                           f"{' as its gate' if gated else ''}; this DAG's tasks come from the recipe it was parsed "
                           "with: give a recipe with the same steps, or set the Variable slimops_recipe (the shipped "
                           "DAGs are parsed with it)")
        settings = RunSettings(dict(call.config), str(plan.recipe_dir), plan.threads or threads, recipe, where)
    gate, gate_where = run_value(context, GATE_PARAM)
    if gate is not None and gated:
        if not isinstance(gate, dict):
            raise BadInput(f"task {task_id}: the run's gate (from {gate_where}) must be a mapping of rule: value, "
                           f'e.g. {{"min_speedup": 1.5, "max_metric_drop": 1.0}}; got {gate!r}')
        config = {**settings.config, "gate": {**(settings.config.get("gate") or {}), **gate}}
        placed = StepCall(step_id, step, "", None, config, False).resolved_config(settings.recipe_dir or ".")
        parse_config(step, placed, where=f"task {task_id}: the run's gate (from {gate_where})")
        if not _gate_checks(config):
            raise BadInput(f"task {task_id}: the run's gate (from {gate_where}) leaves a gate that checks nothing; "
                           "keep at least one of max_metric_drop, min_speedup, max_size_ratio, max_p95_latency_ms, "
                           "min_fidelity")
        settings = RunSettings(config, settings.recipe_dir, settings.threads, settings.recipe,
                               ", ".join(filter(None, (settings.where, f"gate from {gate_where}"))))
    return settings
