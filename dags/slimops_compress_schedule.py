"""Scheduled retraining + compression with slimops: train -> export -> quantize -> validate (gate) -> register
-> promote, once a week.

The recipe is the Airflow Variable `slimops_recipe` (`airflow variables set slimops_recipe /opt/recipes/x.yaml`;
picked up at the next parse, no restart), else the digits recipe installed with slimops (it retrains the digits
CNN from its seeded initialisation), so this file works copied into any dags folder. A run may give its own
`recipe` (same steps) and `gate` (rules replacing the recipe's) in its conf or the trigger form. The model is
measured against the freshly trained fp32 model in the same run, and registered + promoted only when the gate
passes. A failed gate fails the run (the gate task raises AirflowFailException, never retried) and leaves
register / promote upstream_failed. A gate that could not decide (inconclusive) is retried with the recipe's
backoff and, if it stays so, fails the run the same way.

The gate runs in the one-slot pool `slimops_benchmark`; create it once, or the task is never scheduled:
`airflow pools set slimops_benchmark 1 "slimops validate: one benchmark at a time"`.

Where runs write: the Airflow Variable `slimops_runs_dir`, else $SLIMOPS_RUNS_DIR, else
$AIRFLOW_HOME/slimops/runs; each run in `<runs dir>/slimops_compress_schedule/<run_id>/steps/<task>`. The model
registry is the `slimops` connection's (`slimops_default`: tracking URI, credentials, registry directory), else
MLflow on SQLite in `<runs dir>/registry`, shared by all runs.
"""

from __future__ import annotations

from datetime import datetime

from slimops.adapters.airflow import build_dag, dag_recipe, run_params

dag = build_dag(
    dag_recipe(),
    dag_id="slimops_compress_schedule",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs share the registry; one promotion at a time
    tags=["slimops", "compression", "retraining"],
    params=run_params(),
    # No task_kwargs retries: each step retries as the plan says (transforms after a lost worker, the gate on an
    # inconclusive verdict with backoff, register / promote never); a failed gate or bad input is never retried.
)
