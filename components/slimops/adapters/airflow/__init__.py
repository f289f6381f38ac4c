"""The slimops Airflow 3 provider: a hook over the core, one operator per step, a recipe -> DAG / TaskGroup factory.

Installed with ``pip install slimops[airflow]``; Airflow finds it through the ``apache_airflow_provider`` entry
point of the slimops distribution (``get_provider_info`` below). Like Airflow's Amazon provider, the operators
stay thin over the hook, and the hook is the only code that calls the slimops core.

    from slimops.adapters.airflow import SlimopsHook, SlimopsStepOperator, slimops_task_group, build_dag
    from slimops.adapters.airflow import SlimopsQuantizeOperator   # one per step: Slimops<Step>Operator
    from slimops.adapters.airflow import step_operator             # step_operator("quantize", runner="kubernetes")

Runners: a step runs in the worker process (``runner="local"``, the default) or, with
apache-airflow-providers-cncf-kubernetes, in the component image as a pod (``runner="kubernetes"``:
``Slimops<Step>PodOperator``, a KubernetesPodOperator running the same ``slimops step`` command, deferrable).
The registry lives in an Airflow connection of type ``slimops`` (``slimops_default``; see ``hooks``). The
shipped DAGs take their recipe from the Variable ``slimops_recipe`` (else the recipe installed with slimops) and
each run's ``recipe`` / ``gate`` from its conf or params (see ``per_run``).

Retries follow the plan: a gate that could not decide (inconclusive) is retried with the recipe's backoff and
never promotes; a failed gate is final. Every gate (validate) task runs in the pool ``slimops_benchmark``
(``BENCHMARK_POOL``), one slot, so two benchmarks never run at once. Airflow does not create pools, providers
cannot declare one (``provider_info`` has no such field), and a task whose pool does not exist is never scheduled.
Create it once per deployment, before the first run::

    airflow pools set slimops_benchmark 1 "slimops validate: one benchmark at a time"

This module itself imports no Airflow: ``get_provider_info`` runs in every ``airflow providers`` command and
must stay cheap. The names above load on first use.
"""

from __future__ import annotations

import importlib

# The one-slot pool every gate task runs in (create it: see above).
BENCHMARK_POOL = "slimops_benchmark"
CONN_TYPE = "slimops"
DEFAULT_CONN_ID = "slimops_default"

# What the Airflow UI shows for a slimops connection (read from provider info, without importing the hook).
CONNECTION_TYPE = {
    "connection-type": CONN_TYPE,
    "hook-class-name": "slimops.adapters.airflow.hooks.SlimopsHook",
    "hook-name": "slimops",
    "ui-field-behaviour": {
        "hidden-fields": ["schema", "port"],
        "relabeling": {"host": "Tracking URI", "login": "Username", "password": "Password"},
        "placeholders": {"host": "http://mlflow.internal:5000 (empty: SQLite in the registry directory)",
                         "login": "MLflow username (optional)", "password": "MLflow password (optional)"},
    },
    "conn-fields": {
        "registry_dir": {"label": "Registry directory", "description": "where registry.json and the promotion "
                         "audit log live; default <runs dir>/registry", "schema": {"type": ["string", "null"]}},
        "token": {"label": "Token", "description": "MLflow bearer token (instead of username/password)",
                  "schema": {"type": ["string", "null"], "format": "password"}},
    },
}

_LAZY = {
    "SlimopsHook": "slimops.adapters.airflow.hooks",
    "SlimopsStepOperator": "slimops.adapters.airflow.operators",
    "SlimopsSourceOperator": "slimops.adapters.airflow.operators",
    "SlimopsIncomingModelOperator": "slimops.adapters.airflow.operators",
    "step_operator": "slimops.adapters.airflow.operators",
    "slimops_task_group": "slimops.adapters.airflow.factory",
    "build_dag": "slimops.adapters.airflow.factory",
    "SlimopsStepPodOperator": "slimops.adapters.airflow.pod",
    "SlimopsSourcePodOperator": "slimops.adapters.airflow.pod",
    "dag_recipe": "slimops.adapters.airflow.per_run",
    "run_params": "slimops.adapters.airflow.per_run",
}

__all__ = ["BENCHMARK_POOL", "CONN_TYPE", "DEFAULT_CONN_ID", "get_provider_info", *_LAZY]


def get_provider_info() -> dict:
    """What ``airflow providers list`` shows. package-name must equal the distribution name, or Airflow refuses
    every provider command (it compares it with the installed distribution's metadata)."""
    from slimops import __version__

    return {
        "package-name": "slimops",
        "name": "slimops",
        "description": "Model compression as pipeline steps (export, quantize, prune, compile, validate) with a gate "
                       "that blocks promotion; one operator per step and a recipe -> DAG / TaskGroup factory.",
        "versions": [__version__],
        "integrations": [{"integration-name": "slimops", "tags": ["software"]}],
        "hooks": [{"integration-name": "slimops", "python-modules": ["slimops.adapters.airflow.hooks"]}],
        "operators": [{"integration-name": "slimops", "python-modules": ["slimops.adapters.airflow.operators",
                                                                         "slimops.adapters.airflow.pod"]}],
        "connection-types": [CONNECTION_TYPE],
    }


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name.startswith("Slimops") and name.endswith("Operator"):  # the per-step classes, e.g. SlimopsQuantizeOperator
        where = "pod" if name.endswith("PodOperator") else "operators"
        module = importlib.import_module(f"slimops.adapters.airflow.{where}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
