"""A real Airflow runs the shipped new-model DAG: scheduler + DAG processor + API server (its execution API, which
task processes talk to) with the LocalExecutor on SQLite, as `airflow standalone` starts them, in an AIRFLOW_HOME
under tmp, bounded in time and always stopped at the end.

The DAG files are copied into a dags folder of their own (as a deployment would). The README's commands run as
copied: the gate's pool, then the `slimops` connection (the registry) and `airflow dags trigger
slimops_compress_on_new_model --conf ...` with the model and a small recipe for this run. The test then reads
what Airflow and the registry recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from conftest import REPO
from test_airflow import small_recipe

try:
    AIRFLOW_VERSION = version("apache-airflow-core")
except PackageNotFoundError:
    AIRFLOW_VERSION = None
if AIRFLOW_VERSION is None or int(AIRFLOW_VERSION.split(".")[0]) < 3:
    pytest.skip(reason="apache-airflow 3 is not installed (pip install slimops[airflow])", allow_module_level=True)

DAG_ID = "slimops_compress_on_new_model"
DEADLINE_S = 420  # the whole Airflow life: migrate, start, parse, run, stop (measured: 76 s on 2 busy cores)
TASKS = ["incoming_model", "compress.export", "compress.quantize", "compress.validate", "compress.register",
         "compress.promote"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"airflow {' '.join(args)}: " + done.stdout[-2000:] + done.stderr[-3000:]
    return done


class Airflow:
    """The three long-running Airflow processes, each in a session of its own so stopping one stops its
    children (the API server's worker, the executor's task processes) too."""

    def __init__(self, env: dict, home: Path):
        self.env, self.home, self.processes = env, home, {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "wb")
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=self.env, cwd=self.home,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {process.returncode}: " + self.log(name)[-3000:])

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Their children (the API server's worker, the executor's task processes) go with them.
        for process in self.processes.values():
            while not self.session_gone(process) and time.monotonic() < deadline + 10:
                time.sleep(0.2)
            if not self.session_gone(process):
                os.killpg(process.pid, signal.SIGKILL)

    @staticmethod
    def session_gone(process: subprocess.Popen) -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        return False


def readme_block(containing: str) -> str:
    """The README's ```bash block holding ``containing``."""
    readme = (REPO / "README.md").read_text()
    blocks = [part.split("```", 1)[0] for part in readme.split("```bash\n")[1:]]
    [block] = [b for b in blocks if containing in b]
    return block


def query(db: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql, args).fetchall()


def wait_for(what: str, check, airflow_processes: Airflow, deadline: float, every: float = 1.0):
    while time.monotonic() < deadline:
        airflow_processes.check_alive()
        try:
            value = check()
        except sqlite3.OperationalError:  # the table does not exist yet, or a writer holds the lock
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory, digits_trained) -> dict:
    tmp = tmp_path_factory.mktemp("airflow-scheduler")
    home, dags, runs, slimops_home = tmp / "home", tmp / "dags", tmp / "runs", tmp / "slimops"
    for folder in (home, dags, slimops_home):
        folder.mkdir()
    for dag_file in (REPO / "dags").glob("*.py"):  # copied, as into any deployment's dags folder
        shutil.copy(dag_file, dags)
    recipe = small_recipe(tmp / "recipe.yaml", {"max_metric_drop": 10.0, "max_size_ratio": 0.5, "min_speedup": None})
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SLIMOPS_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),  # the scheduler signs, the API server checks
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
        "AIRFLOW_VAR_SLIMOPS_RUNS_DIR": str(runs),  # the Variable slimops_runs_dir, from the environment backend
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    started = time.monotonic()
    deadline = started + DEADLINE_S
    airflow(env, "db", "migrate", timeout=300)
    shell_env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    pools = subprocess.run(["bash", "-ec", readme_block("airflow pools set slimops_benchmark")], env=shell_env,
                           capture_output=True, text=True, timeout=180)
    assert pools.returncode == 0, pools.stderr[-3000:]

    processes = Airflow(env, home)
    db = home / "airflow.db"
    try:
        processes.start("api-server", "api-server", "--apps", "execution", "--workers", "1", "--host", "127.0.0.1",
                        "--port", str(port))
        processes.start("scheduler", "scheduler")
        processes.start("dag-processor", "dag-processor")
        # Both shipped DAG files, copied, parse (the scheduled one stays paused, as new DAGs start).
        wait_for("the DAGs to be parsed", lambda: len(query(db, "SELECT DISTINCT dag_id FROM serialized_dag")) == 2
                 or _import_errors(db), processes, deadline)
        errors = _import_errors(db)
        assert not errors, errors
        # The README's connection and trigger commands, as copied, with its three settings.
        trigger = subprocess.run(["bash", "-ec", readme_block("airflow dags trigger " + DAG_ID)], timeout=180,
                                 env={**shell_env, "MODEL_DIR": str(digits_trained), "RECIPE": str(recipe),
                                      "SLIMOPS_HOME": str(slimops_home)}, capture_output=True, text=True)
        assert trigger.returncode == 0, trigger.stdout[-2000:] + trigger.stderr[-3000:]
        triggered = time.monotonic()
        [(run_id,)] = query(db, "SELECT run_id FROM dag_run WHERE dag_id = ?", DAG_ID)
        state = wait_for("the run to finish", lambda: next(
            (s for (s,) in query(db, "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
             if s in ("success", "failed")), None), processes, deadline, every=2.0)
        finished = time.monotonic()
        tasks = {task: (state, tries) for task, state, tries in query(
            db, "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)}
    finally:
        processes.stop()
    stopped = all(p.poll() is not None and processes.session_gone(p) for p in processes.processes.values())
    return {"state": state, "tasks": tasks, "run_id": run_id, "home": home, "runs": runs, "slimops_home": slimops_home,
            "stopped": stopped, "run_s": finished - triggered, "total_s": time.monotonic() - started,
            "scheduler_log": processes.log("scheduler")}


def _import_errors(db: Path) -> list:
    try:
        return query(db, "SELECT filename, stacktrace FROM import_error")
    except sqlite3.OperationalError:
        return []


def task_log(home: Path, run_id: str, task_id: str) -> list[dict]:
    [log] = (home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}").glob("attempt=1.log")
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_the_scheduler_runs_the_new_model_dag_to_promotion(scheduled_run):
    tasks = scheduled_run["tasks"]
    assert scheduled_run["state"] == "success", (tasks, scheduled_run["scheduler_log"][-4000:])
    assert tasks == {task: ("success", 1) for task in TASKS}, tasks
    assert scheduled_run["stopped"]  # every Airflow process is gone


def test_the_registered_version_is_in_the_connections_registry_and_the_run_promoted_it(scheduled_run):
    from slimops.registry import Registry

    run_id = scheduled_run["run_id"]
    [run_dir] = (scheduled_run["runs"] / DAG_ID).iterdir()  # one run, in a directory named after its run id
    runs = run_dir / "steps"
    registration = json.loads((runs / "compress.register" / "manifest.json").read_text())["details"]["registration"]
    registry = Registry.open(scheduled_run["slimops_home"] / "registry", create=False)
    # The connection's registry (its extra registry_dir and tracking URI), not one under the runs directory.
    assert registry.tracking_uri == f"sqlite:///{scheduled_run['slimops_home']}/registry/mlflow.db"
    assert not (scheduled_run["runs"] / "registry").exists()
    assert (registration["name"], registration["version"]) == ("digits-cnn", "1")
    assert registry.alias("digits-cnn", "champion") == "1"
    [promotion] = [e for e in registry.audit_entries() if e["action"] == "promote"]
    assert promotion["to"] == "1" and promotion["who"] == f"{DAG_ID}/{run_id}"


def test_validate_logs_its_progress_at_info_in_the_task_log(scheduled_run):
    events = task_log(scheduled_run["home"], scheduled_run["run_id"], "compress.validate")
    progress = [e for e in events if str(e.get("event", "")).startswith(("evaluating", "timing throughput"))]
    assert progress and {e["level"] for e in progress} == {"info"}, progress
    assert not [e for e in events if e.get("level") in ("error", "critical")], events
