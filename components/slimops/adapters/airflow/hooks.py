"""SlimopsHook: the only code in the Airflow provider that calls the slimops core.

Operators hand it a step (name, recipe config, model directories) and get back what the step command would
have produced: the output directory, its manifest's metrics and the gate verdict. It also decides where a run
writes: ``<runs dir>/<dag_id>/<run_id>/steps/<task_id>``, one directory per DAG run, so scheduled runs never
overwrite each other and every model traces back to the run that made it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from airflow.sdk import BaseHook

from slimops.errors import BadInput, GateFailed
from slimops.plan import StepCall, run_call
from slimops.steps import get_step

RUNS_DIR_VARIABLE = "slimops_runs_dir"
RUNS_DIR_ENV = "SLIMOPS_RUNS_DIR"
REGISTRY_DIR_VARIABLE = "slimops_registry_dir"
REGISTRY_DIR_ENV = "SLIMOPS_REGISTRY_DIR"


def _safe_name(text: str) -> str:
    # run ids look like "scheduled__2026-11-28T00:00:00+00:00": keep them readable, drop what shells and
    # object stores dislike.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _setting(variable: str, env: str) -> str | None:
    """An Airflow Variable (set in the UI or by `airflow variables set`), else an environment variable."""
    from airflow.sdk import Variable

    try:
        value = Variable.get(variable, default=None)
    except Exception:  # noqa: BLE001 - no API server to ask (e.g. outside a task): fall back to the environment
        value = None
    return value or os.environ.get(env) or None


class SlimopsHook(BaseHook):
    """Runs slimops steps in the worker process, exactly as ``slimops step`` would in a container.

    :param runs_dir: where runs write; default the Airflow Variable ``slimops_runs_dir``, else
        ``$SLIMOPS_RUNS_DIR``, else ``$AIRFLOW_HOME/slimops/runs``.
    :param registry_dir: the model registry shared by every run (register / promote steps that configure no
        registry of their own); default the Variable ``slimops_registry_dir``, else ``$SLIMOPS_REGISTRY_DIR``,
        else ``<runs dir>/registry``.
    """

    hook_name = "slimops"

    def __init__(self, runs_dir: str | None = None, registry_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self._runs_dir = runs_dir
        self._registry_dir = registry_dir

    # ------------------------------------------------------------------ where artifacts go

    def runs_dir(self) -> Path:
        chosen = self._runs_dir or _setting(RUNS_DIR_VARIABLE, RUNS_DIR_ENV)
        if not chosen:
            chosen = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "slimops" / "runs"
        return Path(chosen).expanduser().absolute()

    def run_dir(self, dag_id: str, run_id: str) -> Path:
        return self.runs_dir() / _safe_name(dag_id) / _safe_name(run_id)

    def step_out(self, dag_id: str, run_id: str, task_id: str) -> Path:
        return self.run_dir(dag_id, run_id) / "steps" / _safe_name(task_id)

    def registry_dir(self) -> Path:
        # One registry across runs: a per-run registry (the core's default under `slimops run`) would give every
        # scheduled run its own champion and no history to roll back to.
        chosen = self._registry_dir or _setting(REGISTRY_DIR_VARIABLE, REGISTRY_DIR_ENV)
        return Path(chosen).expanduser().absolute() if chosen else self.runs_dir() / "registry"

    def incoming_model(self, conf: dict | None, params: dict | None, asset_events=None,
                       key: str = "model") -> tuple[Path, str]:
        """The model directory a run was started for, and where it came from: ``conf[key]`` (a manual or API
        trigger), else ``params[key]`` (the trigger form), else the newest triggering asset event whose extra
        has ``key``. Raises BadInput when there is none or it is not a directory here."""
        model, where = None, None
        for source, mapping in (("dag_run.conf", conf), ("params", params)):
            if (mapping or {}).get(key):
                model, where = mapping[key], source
                break
        if not model and asset_events:
            named = [(event.timestamp, event.extra[key], f"asset event on {asset.name}")
                     for asset in asset_events for event in asset_events[asset] if (event.extra or {}).get(key)]
            if named:
                _, model, where = max(named, key=lambda item: item[0])
        if not model:
            raise BadInput(f"no model for this run; trigger it with conf {{\"{key}\": \"/path/to/model_dir\"}} or "
                           f"from an asset event whose extra has {key!r}")
        path = Path(str(model)).expanduser()
        if not path.is_dir():
            raise BadInput(f"model {model!r} (from {where}) is not a directory on this worker; give a model "
                           "directory the worker can read")
        return path.absolute(), where

    # ------------------------------------------------------------------ the core

    def materialize_source(self, model_spec: dict, out: str | Path, recipe_dir: str | Path) -> Path:
        """``slimops source``: the recipe's model section as a model directory (a seeded factory module, or a
        package's / path's files)."""
        from slimops.runner import materialize_source

        return materialize_source(model_spec, Path(out), base=Path(recipe_dir))

    def run_step(self, step: str, model: str | Path, out: str | Path, config: dict, *,
                 step_id: str | None = None, baseline: str | Path | None = None,
                 recipe_dir: str | Path = ".", threads: int | None = None) -> dict:
        """Run one step through ``slimops.plan.run_call`` (the in-process twin of ``StepCall.argv``).

        Returns ``{"out", "step", "status", "metrics", "details", "gate_passed", "reasons"}``, JSON-safe for XCom.
        ``status`` is the core's outcome: ``ok``, ``gate_failed`` (``gate_passed: False``) or ``inconclusive`` (the
        gate could not decide: ``gate_passed: None``, no verdict either way). Bad input raises
        ``slimops.errors.BadInput``; a registry or deploy step refusing its model raises GateFailed.
        """
        config = dict(config or {})
        if get_step(step).role == "registry":
            # Through the environment, not the config: the step command stays the one every runner issues.
            os.environ[REGISTRY_DIR_ENV] = str(self.registry_dir())
        call = StepCall(id=step_id or step, step=step, input="model",
                        baseline=None if baseline is None else "baseline", config=config, after_gate=False)
        self.log.info("slimops step %s: %s -> %s", step, model, out)
        outcome = run_call(call, model, out, baseline=baseline, recipe_dir=recipe_dir, threads=threads)
        if outcome.status == "refused":  # register / promote / deploy refusing a model without a passing gate
            raise GateFailed(outcome.reasons[0])
        manifest = outcome.manifest
        # Round-trip through JSON: XCom stores JSON, and metrics may hold numpy scalars.
        return json.loads(json.dumps({
            "out": str(Path(out).absolute()),
            "step": step,
            "status": outcome.status,
            "metrics": manifest.get("metrics") or {},
            "details": _small_details(manifest.get("details") or {}),
            # The manifest records an inconclusive gate as not passed; as XCom it is no verdict, not a rejection.
            "gate_passed": None if outcome.status == "inconclusive" else outcome.passed,
            "reasons": list(outcome.reasons),
        }, default=_jsonable))


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _small_details(details: dict) -> dict:
    """The step details worth an XCom (the registration / promotion record); long lists stay in the manifest."""
    keep = ("registration", "action", "name", "version", "champion", "challenger", "previous_champion")
    return {key: details[key] for key in keep if key in details}
