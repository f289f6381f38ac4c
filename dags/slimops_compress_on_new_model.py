"""Compress a model as soon as it arrives: export -> quantize -> validate (gate) -> register -> promote.

Triggered two ways:
- by the asset `slimops_new_model`: a training DAG declares it as an outlet and names the model directory in
  the event, e.g.

      from slimops_compress_on_new_model import NEW_MODEL   # or Asset("slimops_new_model")

      @task(outlets=[NEW_MODEL])
      def train(*, outlet_events):
          ...
          outlet_events[NEW_MODEL].extra = {"model": "/models/digits/2026-11-28"}

- by hand or API with `dag_run.conf` {"model": "/path/to/model_dir"} (`airflow dags trigger
  slimops_compress_on_new_model --conf '{"model": "/path"}'`, or the trigger form).

The recipe is the Airflow Variable `slimops_recipe` (`airflow variables set slimops_recipe /opt/recipes/x.yaml`;
picked up at the next parse, no restart), else the digits recipe installed with slimops, so this file works
copied into any dags folder. A run may give its own `recipe` (same steps) and `gate` (rules replacing the
recipe's, e.g. {"min_speedup": 1.5}) in its conf or the trigger form. When the recipe has a `train` step, the
incoming model stands for its output: train does not run and the gate compares the compressed model against the
incoming one. Runs write where slimops_compress_schedule's do; the registry is the `slimops` connection's
(`slimops_default`); the gate runs in the pool `slimops_benchmark` (`airflow pools set slimops_benchmark 1 "..."`).
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset, Param

from slimops.adapters.airflow import SlimopsIncomingModelOperator, dag_recipe, run_params, slimops_task_group
from slimops.plan import plan_recipe

PLAN = plan_recipe(dag_recipe())
NEW_MODEL = Asset("slimops_new_model")

with DAG(
    dag_id="slimops_compress_on_new_model",
    schedule=[NEW_MODEL],
    catchup=False,
    tags=["slimops", "compression"],
    params={"model": Param(None, type=["null", "string"],
                           description="model directory to compress (else the triggering asset event's extra.model)"),
            **run_params()},
    doc_md=__doc__,
) as dag:
    incoming = SlimopsIncomingModelOperator(task_id="incoming_model")
    # Each step retries as the plan says: transforms after a lost worker, the gate on an inconclusive verdict with
    # backoff (in the one-slot pool slimops_benchmark), register / promote never.
    compress = slimops_task_group(PLAN, model=incoming, group_id="compress",
                                  start_after="train" if any(c.id == "train" for c in PLAN.chain) else None)
