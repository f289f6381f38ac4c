"""Scheduled retraining + compression with slimops: train -> export -> quantize -> validate (gate) -> register
-> promote, once a week.

The recipe ($SLIMOPS_SCHEDULE_RECIPE, else $SLIMOPS_RECIPE, else
examples/digits-pipeline.yaml) retrains the digits CNN from its seeded initialisation with its `train` step, compresses it, measures it against the freshly trained fp32 model in the
same run, and registers + promotes it only when the gate passes. A failed gate fails the run (the gate task
raises AirflowFailException, never retried) and leaves register / promote upstream_failed. A gate that could not
decide (inconclusive) is retried with the recipe's backoff and, if it stays so, fails the run the same way.

The gate runs in the one-slot pool `slimops_benchmark`; create it once, or the task is never scheduled:
`airflow pools set slimops_benchmark 1 "slimops validate: one benchmark at a time"`.

Where runs write: the Airflow Variable `slimops_runs_dir`, else $SLIMOPS_RUNS_DIR, else
$AIRFLOW_HOME/slimops/runs; each run in `<runs dir>/slimops_compress_schedule/<run_id>/steps/<task>`. The model
registry (MLflow, SQLite by default) is shared by all runs: Variable `slimops_registry_dir`, else
$SLIMOPS_REGISTRY_DIR, else `<runs dir>/registry`.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from slimops.adapters.airflow import build_dag

# The recipe: $SLIMOPS_SCHEDULE_RECIPE, else $SLIMOPS_RECIPE (both DAGs), else the example next to this repo's dags/.
RECIPE = os.environ.get("SLIMOPS_SCHEDULE_RECIPE") or os.environ.get("SLIMOPS_RECIPE") or str(
    Path(__file__).resolve().parents[1] / "examples" / "digits-pipeline.yaml")

dag = build_dag(
    RECIPE,
    dag_id="slimops_compress_schedule",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs share the registry; one promotion at a time
    tags=["slimops", "compression", "retraining"],
    # No task_kwargs retries: each step retries as the plan says (transforms after a lost worker, the gate on an
    # inconclusive verdict with backoff, register / promote never); a failed gate or bad input is never retried.
)
