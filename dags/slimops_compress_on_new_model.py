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

The recipe ($SLIMOPS_NEW_MODEL_RECIPE, else $SLIMOPS_RECIPE, else
examples/digits-pipeline.yaml) is a train-then-compress recipe; here
the incoming model stands for the output of its `train` step, so the train step does not run and the gate
compares the compressed model against the incoming one. Runs write where slimops_compress_schedule's do, and the
gate runs in the pool `slimops_benchmark` as there (`airflow pools set slimops_benchmark 1 "..."`).
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import DAG, Asset, Param

from slimops.adapters.airflow import SlimopsIncomingModelOperator, slimops_task_group

# The recipe: $SLIMOPS_NEW_MODEL_RECIPE, else $SLIMOPS_RECIPE (both DAGs), else the example next to this repo's dags/.
RECIPE = os.environ.get("SLIMOPS_NEW_MODEL_RECIPE") or os.environ.get("SLIMOPS_RECIPE") or str(
    Path(__file__).resolve().parents[1] / "examples" / "digits-pipeline.yaml")
NEW_MODEL = Asset("slimops_new_model")

with DAG(
    dag_id="slimops_compress_on_new_model",
    schedule=[NEW_MODEL],
    catchup=False,
    tags=["slimops", "compression"],
    params={"model": Param(None, type=["null", "string"],
                           description="model directory to compress (else the triggering asset event's extra.model)")},
    doc_md=__doc__,
) as dag:
    incoming = SlimopsIncomingModelOperator(task_id="incoming_model")
    # Each step retries as the plan says: transforms after a lost worker, the gate on an inconclusive verdict with
    # backoff (in the one-slot pool slimops_benchmark), register / promote never.
    compress = slimops_task_group(RECIPE, model=incoming, start_after="train", group_id="compress")
