"""SlimopsHook: the only code in the Airflow provider that calls the slimops core, and the ``slimops`` connection.

Operators hand it a step (name, recipe config, model directories) and get back what the step command would
have produced: the output directory, its manifest's metrics and the gate verdict. It also decides where a run
writes: ``<runs dir>/<dag_id>/<run_id>/steps/<task_id>``, one directory per DAG run, so scheduled runs never
overwrite each other and every model traces back to the run that made it.

The registry a run registers into and promotes in comes from an Airflow connection of type ``slimops``
(default id ``slimops_default``; none is fine: a SQLite store under the runs dir):

- Tracking URI (the connection's host): any MLflow tracking URI, e.g. ``http://mlflow.internal:5000``;
- Username / Password, or the extra ``token``: MLflow's credentials, handed to the registry steps only in their
  environment (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` / ``_TOKEN``), never in a command line;
- the extra ``registry_dir``: where ``registry.json`` and the promotion audit log live.

    airflow connections add slimops_default --conn-type slimops --conn-host http://mlflow.internal:5000 \\
        --conn-login ci --conn-password ... --conn-extra '{"registry_dir": "/shared/slimops/registry"}'

Who acted, in that audit log, is ``<dag_id>/<run_id>``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from airflow.sdk import BaseHook

from slimops.adapters.airflow import CONN_TYPE, DEFAULT_CONN_ID
from slimops.errors import BadInput, GateFailed
from slimops.plan import StepCall, run_call
from slimops.steps import get_step

RUNS_DIR_VARIABLE = "slimops_runs_dir"
RUNS_DIR_ENV = "SLIMOPS_RUNS_DIR"
REGISTRY_DIR_VARIABLE = "slimops_registry_dir"
REGISTRY_DIR_ENV = "SLIMOPS_REGISTRY_DIR"
ACTOR_ENV = "SLIMOPS_ACTOR"  # read by slimops.registry.actor() for the audit log's "who"
# The connection's credentials, as MLflow reads them (only ever in a step's environment).
CREDENTIAL_ENV = {"login": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD",
                  "token": "MLFLOW_TRACKING_TOKEN"}

def _safe_name(text: str) -> str:
    # run ids look like "scheduled__2026-11-28T00:00:00+00:00": keep them readable, drop what shells and
    # object stores dislike.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _setting(variable: str, env: str) -> str | None:
    """An Airflow Variable (set in the UI or by `airflow variables set`), else an environment variable."""
    return variable_or_none(variable) or os.environ.get(env) or None


def variable_or_none(name: str) -> str | None:
    """An Airflow Variable, or None when it is not set (or there is no Airflow to ask, e.g. outside a task)."""
    from airflow.sdk import Variable

    try:
        return Variable.get(name, default=None)
    except Exception:  # noqa: BLE001 - no API server or metadata database to ask: not set, as far as we can tell
        return None


@dataclass(frozen=True)
class RegistrySettings:
    """Where the registry steps register and promote, from the ``slimops`` connection."""

    directory: Path
    tracking_uri: str | None = None  # None: the one registry.json records, else SQLite in the directory
    credentials: dict = field(default_factory=dict, repr=False)  # env name -> value, for the registry steps only


class SlimopsHook(BaseHook):
    """Runs slimops steps in the worker process, exactly as ``slimops step`` would in a container, and tells
    every runner where a run writes and which registry it uses.

    :param slimops_conn_id: the ``slimops`` connection holding the registry (default ``slimops_default``; when
        that one does not exist, the registry is SQLite under ``registry_dir``). A named connection that does not
        exist is an error.
    :param runs_dir: where runs write; default the Airflow Variable ``slimops_runs_dir``, else
        ``$SLIMOPS_RUNS_DIR``, else ``$AIRFLOW_HOME/slimops/runs``.
    :param registry_dir: the registry directory shared by every run (register / promote steps that configure no
        registry of their own); default the connection's extra ``registry_dir``, else the Variable
        ``slimops_registry_dir``, else ``$SLIMOPS_REGISTRY_DIR``, else ``<runs dir>/registry``.
    """

    conn_name_attr = "slimops_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "slimops"

    def __init__(self, slimops_conn_id: str | None = DEFAULT_CONN_ID, runs_dir: str | None = None,
                 registry_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.slimops_conn_id = slimops_conn_id
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

    # ------------------------------------------------------------------ the registry (the slimops connection)

    def connection(self):
        """The ``slimops`` connection, or None when the default one is not defined."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        if not self.slimops_conn_id:
            return None
        try:
            conn = self.get_connection(self.slimops_conn_id)
        except AirflowNotFoundException:
            if self.slimops_conn_id == DEFAULT_CONN_ID:
                return None
            raise BadInput(f"no Airflow connection {self.slimops_conn_id!r}; create one of type slimops (airflow "
                           f"connections add {self.slimops_conn_id} --conn-type slimops --conn-host "
                           "<tracking URI>) or leave slimops_conn_id at its default") from None
        if conn.conn_type and conn.conn_type != CONN_TYPE:
            raise BadInput(f"Airflow connection {conn.conn_id!r} is of type {conn.conn_type!r}, not slimops; give "
                           "the id of a slimops connection (Tracking URI, credentials, registry directory)")
        return conn

    def registry(self) -> RegistrySettings:
        """The registry every run of this deployment shares: the connection's, else the Variable / environment."""
        conn = self.connection()
        extra = _extra(conn)
        tracking_uri = extra.get("tracking_uri") or _tracking_uri(conn)
        # One registry across runs: a per-run registry (the core's default under `slimops run`) would give every
        # scheduled run its own champion and no history to roll back to.
        chosen = self._registry_dir or extra.get("registry_dir") or _setting(REGISTRY_DIR_VARIABLE, REGISTRY_DIR_ENV)
        directory = Path(chosen).expanduser().absolute() if chosen else self.runs_dir() / "registry"
        values = {"login": conn.login if conn else None, "password": conn.password if conn else None,
                  "token": extra.get("token")}
        credentials = {CREDENTIAL_ENV[key]: str(value) for key, value in values.items() if value}
        return RegistrySettings(directory, tracking_uri, credentials)

    def registry_dir(self) -> Path:
        return self.registry().directory

    def step_environment(self, step: str, actor: str | None = None,
                         registry: RegistrySettings | None = None) -> dict[str, str]:
        """What a step's process needs in its environment, beside its command: who acts (the audit log's "who",
        ``<dag_id>/<run_id>``) and, for the steps that touch the registry, where it is and its credentials."""
        env = {ACTOR_ENV: actor} if actor else {}
        if get_step(step).requires_gate():
            registry = registry or self.registry()
            env[REGISTRY_DIR_ENV] = str(registry.directory)
            env.update(registry.credentials)
        return env

    def step_config(self, step: str, config: dict, registry: RegistrySettings | None = None) -> dict:
        """The step's config, with the connection's tracking URI for a registry step whose recipe names no
        registry of its own (a recipe's own ``tracking_uri`` / ``registry_dir`` wins)."""
        config = dict(config or {})
        if get_step(step).role != "registry" or config.get("tracking_uri") or config.get("registry_dir"):
            return config
        registry = registry or self.registry()
        if registry.tracking_uri:
            config["tracking_uri"] = registry.tracking_uri
        return config

    def incoming_model(self, conf: dict | None, params: dict | None, asset_events=None,
                       key: str = "model", must_exist: bool = True) -> tuple[Path, str]:
        """The model directory a run was started for, and where it came from: ``conf[key]`` (a manual or API
        trigger), else ``params[key]`` (the trigger form), else the newest triggering asset event whose extra
        has ``key``. Raises BadInput when there is none or (``must_exist``) it is not a directory here."""
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
        if must_exist and not path.is_dir():
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
                 recipe_dir: str | Path = ".", threads: int | None = None, actor: str | None = None,
                 log: logging.Logger | None = None) -> dict:
        """Run one step through ``slimops.plan.run_call`` (the in-process twin of ``StepCall.argv``).

        The step sees the environment ``step_environment`` gives (restored afterwards: nothing stays in the
        worker), and its progress lines go to ``log`` (the task's logger) at their own level.

        Returns ``{"out", "step", "status", "metrics", "details", "gate_passed", "reasons"}``, JSON-safe for XCom.
        ``status`` is the core's outcome: ``ok``, ``gate_failed`` (``gate_passed: False``) or ``inconclusive`` (the
        gate could not decide: ``gate_passed: None``, no verdict either way). Bad input raises
        ``slimops.errors.BadInput``; a registry or deploy step refusing its model raises GateFailed.
        """
        registry = self.registry() if get_step(step).requires_gate() else None
        config = self.step_config(step, config, registry)
        call = StepCall(id=step_id or step, step=step, input="model",
                        baseline=None if baseline is None else "baseline", config=config, after_gate=False)
        log = log or self.log
        log.info("slimops step %s: %s -> %s", step, model, out)
        with step_environment(self.step_environment(step, actor, registry)), progress_to(log):
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


@contextlib.contextmanager
def step_environment(env: dict[str, str]):
    """The step's environment for the length of the step, then the worker's own again: one task's registry
    credentials or actor never leak into the next task a worker (or ``dag.test()``) runs in the same process."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _ToTaskLog(logging.Handler):
    def __init__(self, target: logging.Logger):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        # By method name: the task's logger is a structlog logger under Airflow 3, a stdlib one elsewhere.
        level = logging.getLevelName(record.levelno).lower()
        getattr(self.target, level if level in ("debug", "info", "warning", "error", "critical") else "info")(
            record.getMessage())


@contextlib.contextmanager
def progress_to(log: logging.Logger):
    """The ``slimops`` logger's records (progress lines: INFO) into the task log at their own level, for the
    length of the step. Without this they would reach the task log only by the root logger's settings, or as
    stderr, which Airflow logs at error level."""
    logger = logging.getLogger("slimops")
    handler = _ToTaskLog(log)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _extra(conn) -> dict:
    if conn is None:
        return {}
    extra = conn.extra_dejson or {}
    # The UI stores a provider's form fields either plainly or as extra__<conn type>__<field>.
    return {key.removeprefix(f"extra__{CONN_TYPE}__"): value for key, value in extra.items() if value not in (None, "")}


def _tracking_uri(conn) -> str | None:
    """The connection's host is the tracking URI (``http://...``, ``sqlite:///...``, ``databricks``); a bare host
    name (a URI-style connection string split it) is taken as http://host[:port]."""
    if conn is None or not conn.host:
        return None
    if "://" in conn.host or conn.host == "databricks":
        return conn.host
    return f"{conn.schema or 'http'}://{conn.host}" + (f":{conn.port}" if conn.port else "")


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _small_details(details: dict) -> dict:
    """The step details worth an XCom (the registration / promotion record); long lists stay in the manifest."""
    keep = ("registration", "action", "name", "version", "champion", "challenger", "previous_champion")
    return {key: details[key] for key in keep if key in details}
