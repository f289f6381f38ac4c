"""The Airflow 3 provider: the DAGs in dags/ import cleanly, run end to end with `dag.test()` on SQLite (a
passing gate reaches promote, a failing gate stops before register, an inconclusive gate is retried with backoff
and never promotes), each task retries as the plan says (the gate in the one-slot pool slimops_benchmark), the
provider registers with Airflow, and recipe errors fail at DAG build time.

Everything that touches Airflow's configuration or database runs in a subprocess with its own AIRFLOW_HOME
(Airflow reads it once, at import), migrated with the real `airflow db migrate`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

from conftest import REPO

try:  # a version check, not an import: importing airflow here would set it up under ~/airflow
    AIRFLOW_VERSION = version("apache-airflow-core")
except PackageNotFoundError:
    AIRFLOW_VERSION = None
if AIRFLOW_VERSION is None or int(AIRFLOW_VERSION.split(".")[0]) < 3:
    pytest.skip(reason="apache-airflow 3 is not installed (pip install slimops[airflow])", allow_module_level=True)

DAGS = REPO / "dags"
EXAMPLE = REPO / "examples" / "digits-pipeline.yaml"


def small_recipe(path: Path, gate: dict) -> Path:
    """The example recipe, shrunk to seconds: fewer epochs, fewer timing rounds, and the given gate."""
    recipe = yaml.safe_load(EXAMPLE.read_text())
    recipe["threads"] = 1
    recipe["data"]["train"]["limit"] = 400
    steps = {s.get("id", s["step"]): s for s in recipe["steps"]}
    steps["train"]["config"]["epochs"] = 3
    steps["quantize"]["config"]["calibration_samples"] = 64
    steps["validate"]["config"].update({"throughput_samples": 64, "rounds": 4, "latency_runs": 5, "gate": gate})
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict:
    """An AIRFLOW_HOME with a migrated SQLite database, the repo's dags/ as DAG folder, runs under tmp."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SLIMOPS_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "SLIMOPS_RUNS_DIR": str(home / "runs"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return env


def in_airflow(env: dict, script: str, timeout: float = 600, **extra_env) -> dict:
    """Run ``script`` in a fresh interpreter under ``env``; it prints one JSON line last."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env={**env, **extra_env},
                          capture_output=True, text=True, timeout=timeout, cwd=env["AIRFLOW_HOME"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Both DAG runs in one interpreter: Airflow starts its in-process execution API once (the slow part of dag.test).
DAG_RUNS = """
    import json
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.providers_manager import ProvidersManager
    from airflow.utils.session import create_session

    def run(dag_id, conf):
        dag_run = bag.get_dag(dag_id).test(run_conf=conf)
        with create_session() as session:
            instances = dag_run.get_task_instances(session=session)
            states = {ti.task_id: getattr(ti.state, "value", ti.state) for ti in instances}
            tries = {ti.task_id: ti.try_number for ti in instances}
            xcoms = {f"{x.task_id}:{x.key}": x.value
                     for x in session.query(XComModel).filter_by(dag_id=dag_id, run_id=dag_run.run_id)}
        return {"state": getattr(dag_run.state, "value", dag_run.state), "tasks": states, "tries": tries,
                "xcom": xcoms}

    bag = DagBag(dag_folder=%r)
    provider = ProvidersManager().providers["slimops"]
    print(json.dumps({
        "errors": {k: str(v) for k, v in bag.import_errors.items()},
        "dags": {d: {t: sorted(task.upstream_task_ids) for t, task in bag.dags[d].task_dict.items()}
                 for d in bag.dag_ids},
        "schedules": {d: [type(bag.dags[d].timetable).__name__, str(bag.dags[d].schedule)] for d in bag.dag_ids},
        "retries": {t: task.retries for t, task in bag.dags["slimops_compress_on_new_model"].task_dict.items()},
        "provider": {"version": provider.version, "package-name": provider.data["package-name"]},
        "passing": run("slimops_compress_schedule", None),
        "failing": run("slimops_compress_on_new_model", {"model": %r}),
    }, default=str))
"""


@pytest.fixture(scope="module")
def dag_runs(airflow_env, tmp_path_factory, digits_trained) -> dict:
    """DagBag over dags/, then dag.test() of the scheduled DAG with a passing gate and of the new-model DAG (on
    an already trained digits model) with a gate no model can pass."""
    recipes = tmp_path_factory.mktemp("recipes")
    # Size and accuracy are deterministic here; a speedup measured on a busy 2-core CI machine is not, so the
    # passing gate leaves it out (GatePolicy's default would otherwise ask for >= 1.0).
    passing = small_recipe(recipes / "passing.yaml", {"max_metric_drop": 10.0, "max_size_ratio": 0.5,
                                                      "min_speedup": None})
    failing = small_recipe(recipes / "failing.yaml", {"min_speedup": 1000.0})
    return in_airflow(airflow_env, DAG_RUNS % (str(DAGS), str(digits_trained)), timeout=900,
                      SLIMOPS_SCHEDULE_RECIPE=str(passing), SLIMOPS_NEW_MODEL_RECIPE=str(failing))


def only_run_dir(runs: Path, dag_id: str) -> Path:
    [run] = [d for d in (runs / dag_id).iterdir() if d.is_dir()]
    return run


def test_dagbag_imports_both_dags_with_no_errors(dag_runs):
    assert dag_runs["errors"] == {}
    schedule = dag_runs["dags"]["slimops_compress_schedule"]
    assert schedule == {"source": [], "train": ["source"], "export": ["train"], "quantize": ["export"],
                        "validate": ["quantize", "train"], "register": ["validate"], "promote": ["register", "validate"]}
    assert dag_runs["schedules"]["slimops_compress_schedule"] == ["CronTriggerTimetable", "@weekly"]
    new_model = dag_runs["dags"]["slimops_compress_on_new_model"]
    # The incoming model stands in for the recipe's train step: it is the input of export and the baseline.
    assert new_model["compress.export"] == ["incoming_model"]
    assert new_model["compress.validate"] == ["compress.quantize", "incoming_model"]
    assert new_model["compress.promote"] == ["compress.register", "compress.validate"]
    assert "train" not in {t.split(".")[-1] for t in new_model}
    timetable, schedule = dag_runs["schedules"]["slimops_compress_on_new_model"]
    assert timetable == "AssetTriggeredTimetable" and "name='slimops_new_model'" in schedule, schedule


def test_scheduled_dag_retrains_compresses_and_promotes_on_a_passing_gate(dag_runs, airflow_env):
    result = dag_runs["passing"]
    assert result["state"] == "success", result["tasks"]
    assert set(result["tasks"].values()) == {"success"}, result["tasks"]
    assert set(result["tasks"]) == {"source", "train", "export", "quantize", "validate", "register", "promote"}
    assert result["xcom"]["validate:gate_passed"] is True
    runs = Path(airflow_env["SLIMOPS_RUNS_DIR"])
    run = only_run_dir(runs, "slimops_compress_schedule")
    assert result["xcom"]["quantize:out"] == str(run / "steps" / "quantize")
    # Real compression of the retrained model, measured against it: static INT8, about a quarter of the size.
    report = json.loads((run / "steps" / "validate" / "gate_report.json").read_text())
    assert report["passed"] is True and result["xcom"]["validate:metrics"]["size_ratio"] < 0.5
    quantized = json.loads((run / "steps" / "quantize" / "manifest.json").read_text())
    assert quantized["parent"]["step"] == "export" and quantized["parent"]["parent"]["step"] == "train"
    promoted = json.loads((run / "steps" / "promote" / "manifest.json").read_text())["details"]
    assert promoted["action"] == "promoted" and promoted["champion"] == promoted["version"]
    # One registry for every run of the DAG (under the runs dir), not one per run.
    assert Path(promoted["registry_dir"]) == runs / "registry"
    audit = [json.loads(line) for line in (runs / "registry" / "audit.jsonl").read_text().splitlines()]
    assert (audit[-1]["action"], audit[-1]["model"], audit[-1]["to"]) == ("promote", promoted["name"], promoted["version"])


def test_new_model_dag_stops_at_a_failing_gate_and_never_promotes(dag_runs, airflow_env, digits_trained):
    result = dag_runs["failing"]
    tasks = result["tasks"]
    assert result["state"] == "failed", tasks
    assert tasks["incoming_model"] == tasks["compress.export"] == tasks["compress.quantize"] == "success"
    # The gate task retries an inconclusive verdict, yet a failed verdict is final (AirflowFailException): failed
    # on its first try, not up_for_retry.
    assert dag_runs["retries"]["compress.validate"] == 3 and tasks["compress.validate"] == "failed"
    assert result["tries"]["compress.validate"] == 1
    assert result["xcom"]["compress.validate:status"] == "gate_failed"
    assert tasks["compress.register"] == tasks["compress.promote"] == "upstream_failed"
    assert result["xcom"]["incoming_model:out"] == str(digits_trained)
    assert result["xcom"]["compress.validate:gate_passed"] is False
    run = only_run_dir(Path(airflow_env["SLIMOPS_RUNS_DIR"]), "slimops_compress_on_new_model")
    report = json.loads((run / "steps" / "compress.validate" / "gate_report.json").read_text())
    assert report["passed"] is False and any("speedup" in reason for reason in report["reasons"])
    # The gate compared against the incoming model itself (the recipe's train step did not run).
    manifest = json.loads((run / "steps" / "compress.validate" / "manifest.json").read_text())
    assert manifest["inputs"]["baseline"]["path"] == str(digits_trained)
    assert not (run / "steps" / "compress.register").exists()


def test_provider_is_registered_under_the_distribution_name(airflow_env, dag_runs):
    listed = subprocess.run([sys.executable, "-m", "airflow", "providers", "list", "-o", "json"], env=airflow_env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    providers = {p["package_name"]: p for p in json.loads(listed.stdout[listed.stdout.index("[{"):])}  # after any warnings
    assert providers["slimops"]["version"] == version("slimops")
    # ProvidersManager (what the scheduler and the UI use) found it through the entry point, under the same name.
    assert dag_runs["provider"] == {"version": version("slimops"), "package-name": "slimops"}



def test_the_readme_command_creates_the_one_slot_benchmark_pool(airflow_env):
    """The README's `airflow pools set` line, run as copied: the gate's pool exists with one slot."""
    readme = (REPO / "README.md").read_text()
    after = readme.index("create it\nonce per deployment:")
    block = readme[readme.index("```bash\n", after) + len("```bash\n"):readme.index("```", readme.index("```bash\n", after) + 7)]
    assert block.startswith("airflow pools set slimops_benchmark 1")
    env = {**airflow_env, "PATH": f"{Path(sys.executable).parent}:{airflow_env.get('PATH', '')}"}
    done = subprocess.run(["bash", "-ec", block], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = subprocess.run([sys.executable, "-m", "airflow", "pools", "get", "slimops_benchmark", "-o", "json"],
                         env=airflow_env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]
    pool = json.loads(got.stdout.strip().splitlines()[-1])[0]  # the JSON is the last line, after any warnings
    assert pool["pool"] == "slimops_benchmark" and int(pool["slots"]) == 1

BUILD_CHECKS = """
    import json, os
    from datetime import datetime, timedelta, timezone
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import DAG
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor
    from slimops.adapters.airflow import SlimopsHook, build_dag, slimops_task_group, step_operator
    from slimops.errors import BadInput

    def error(build):
        try:
            build()
        except BadInput as err:
            return str(err)
        return None

    def misconfigured_operator():
        with DAG("d1"):
            step_operator("quantize")(task_id="q", model="/m", config={"mode": "int3"})

    def quantize_after_train():  # the one-liner on a trained PyTorch model: refused when the DAG is parsed
        with DAG("d3"):
            trained = step_operator("train")(task_id="train", model=%(torch)r,
                                             config={"data": {"format": "digits", "split": "train"}})
            step_operator("quantize")(task_id="int8", model=trained.output, config={"mode": "dynamic"})

    def quantize_on_a_torch_dir():
        with DAG("d4"):
            step_operator("quantize")(task_id="int8", model=%(torch)r)

    def quantize_declared_torch():
        with DAG("d5"):
            step_operator("quantize")(task_id="int8", model="{{ params.model }}", model_format="torch")

    def export_then_quantize():
        with DAG("d6"):
            onnx = step_operator("export")(task_id="onnx", model="{{ params.model }}", model_format="torch")
            step_operator("quantize")(task_id="int8", model=onnx.output)

    def start_after_the_gate():
        with DAG("d2"):
            slimops_task_group(%(ok)r, model="/m", start_after="validate")

    def asset_event(model, minutes):
        return AssetEventDagRunReferenceResult(
            asset={"name": "slimops_new_model", "uri": "slimops_new_model", "extra": {}}, extra={"model": model},
            source_task_id="train", source_dag_id="training", source_run_id="r1", source_map_index=-1,
            source_aliases=[], timestamp=datetime(2026, 11, 28, tzinfo=timezone.utc) + timedelta(minutes=minutes))

    events = TriggeringAssetEventsAccessor.build([asset_event(%(old)r, 0), asset_event(%(new)r, 5)])
    hook = SlimopsHook()
    os.environ["SLIMOPS_RECIPE"] = %(no_gate)r
    bag = DagBag(dag_folder=%(dags)r)
    print(json.dumps({
        "dagbag": {os.path.basename(k): str(v) for k, v in bag.import_errors.items()},
        "unknown": error(lambda: build_dag(%(unknown)r)),
        "empty_gate": error(lambda: build_dag(%(empty_gate)r)),
        "operator": error(misconfigured_operator),
        "start_after": error(start_after_the_gate),
        "quantize_after_train": error(quantize_after_train),
        "quantize_on_a_torch_dir": error(quantize_on_a_torch_dir),
        "quantize_declared_torch": error(quantize_declared_torch),
        "export_then_quantize": error(export_then_quantize),
        "from_asset": [str(x) for x in hook.incoming_model({}, {"model": None}, events)],
        "conf_wins": [str(x) for x in hook.incoming_model({"model": %(old)r}, {}, events)],
        "no_model": error(lambda: hook.incoming_model({}, {}, TriggeringAssetEventsAccessor.build([]))),
        "not_a_dir": error(lambda: hook.incoming_model({"model": %(missing)r}, {})),
    }))
"""


@pytest.fixture(scope="module")
def build_checks(airflow_env, tmp_path_factory, digits_trained) -> dict:
    tmp = tmp_path_factory.mktemp("bad-recipes")
    example = yaml.safe_load(EXAMPLE.read_text())
    no_gate = {**example, "steps": [s for s in example["steps"] if s["step"] not in ("validate", "register", "promote")]}
    unknown = {**example, "steps": [{**example["steps"][1], "step": "exprot"}, *example["steps"][2:]]}
    empty_gate = yaml.safe_load(EXAMPLE.read_text())
    [validate] = [s for s in empty_gate["steps"] if s["step"] == "validate"]
    validate["config"]["gate"] = {"max_metric_drop": None, "min_speedup": None}
    paths = {}
    for name, recipe in (("no_gate", no_gate), ("unknown", unknown), ("empty_gate", empty_gate)):
        paths[name] = str(tmp / f"{name}.yaml")
        Path(paths[name]).write_text(yaml.safe_dump(recipe, sort_keys=False))
    for name in ("old", "new"):
        (tmp / name).mkdir()
        paths[name] = str(tmp / name)
    paths.update(ok=str(small_recipe(tmp / "ok.yaml", {"max_metric_drop": 5.0})), dags=str(DAGS), torch=str(digits_trained),
                 missing=str(tmp / "missing"))
    return in_airflow(airflow_env, BUILD_CHECKS % paths) | {"paths": paths}


def test_recipe_errors_fail_the_dag_import_with_the_slimops_message(build_checks):
    assert set(build_checks["dagbag"]) == {"slimops_compress_schedule.py", "slimops_compress_on_new_model.py"}
    assert all("no step produces one" in e for e in build_checks["dagbag"].values()), build_checks["dagbag"]
    assert "exprot" in build_checks["unknown"] and "known steps" in build_checks["unknown"]
    assert "checks nothing" in build_checks["empty_gate"]
    assert "is not a step before the gate" in build_checks["start_after"]


def test_operator_config_is_checked_when_the_dag_is_parsed(build_checks):
    assert build_checks["operator"].startswith("task q config.mode:"), build_checks["operator"]


def test_a_step_given_a_format_it_cannot_take_fails_the_dag_import(build_checks):
    """Quantize on a PyTorch model fails when the DAG is parsed, not when the task runs on a worker: the format
    is known from the upstream slimops task, from a literal directory, or from model_format=."""
    for case in ("quantize_after_train", "quantize_on_a_torch_dir", "quantize_declared_torch"):
        assert build_checks[case] == ("task int8: quantize takes onnx models, and its model is torch; put "
                                      "SlimopsExportOperator before it"), (case, build_checks[case])
    assert build_checks["export_then_quantize"] is None


def test_new_model_comes_from_conf_or_the_newest_asset_event(build_checks):
    paths = build_checks["paths"]
    assert build_checks["from_asset"] == [paths["new"], "asset event on slimops_new_model"]
    assert build_checks["conf_wins"] == [paths["old"], "dag_run.conf"]
    assert "no model for this run" in build_checks["no_model"]
    assert "is not a directory" in build_checks["not_a_dir"]


# ----------------------------------------------------------------------------- retries and the benchmark pool

POLICY_CHECKS = """
    import json
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization
    from slimops.adapters.airflow import BENCHMARK_POOL, build_dag, step_operator

    def policy(task):
        return {"retries": task.retries, "retry_delay": task.retry_delay.total_seconds(),
                "backoff": task.retry_exponential_backoff,
                "max_retry_delay": task.max_retry_delay and task.max_retry_delay.total_seconds(),
                "pool": task.pool, "pool_slots": task.pool_slots}

    def policies(dag):
        # As the scheduler sees them: the DAG serialized and read back (what dag.test and the scheduler run).
        scheduled = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        return {t.task_id: policy(t) for t in scheduled.tasks}

    with DAG("standalone", default_args={"retries": 5}) as standalone:
        gate = step_operator("validate")(task_id="gate", model="/m", baseline="/b",
                                         config={"data": {"format": "digits", "split": "test"}})
        register = step_operator("register")(task_id="register", model=gate.output["out"], config={"name": "m"})
        mine = step_operator("validate")(task_id="mine", model="/m", baseline="/b", retries=1, pool="gpu",
                                         config={"data": {"format": "digits", "split": "test"}})
    print(json.dumps({
        "pool": BENCHMARK_POOL,
        "example": policies(build_dag(%(example)r)),
        "custom": policies(build_dag(%(custom)r, dag_id="custom")),
        "no_retry": policies(build_dag(%(no_retry)r, dag_id="no_retry")),
        "task_kwargs": policies(build_dag(%(example)r, dag_id="kwargs", task_kwargs={"retries": 7, "pool": "ml"})),
        "standalone": policies(standalone),
    }))
"""


def with_retry(path: Path, retry: dict) -> Path:
    recipe = yaml.safe_load(EXAMPLE.read_text())
    recipe["retry_inconclusive"] = retry
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def policies(airflow_env, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("retry-recipes")
    paths = {"example": str(EXAMPLE),
             "custom": str(with_retry(tmp / "custom.yaml", {"retries": 5, "backoff_s": 10, "factor": 3})),
             "no_retry": str(with_retry(tmp / "none.yaml", {"retries": 0}))}
    return in_airflow(airflow_env, POLICY_CHECKS % paths)


def test_each_task_retries_as_the_plan_says_and_the_gate_runs_in_the_benchmark_pool(policies):
    assert policies["pool"] == "slimops_benchmark"
    example = policies["example"]
    # The gate: the recipe's retry_inconclusive (default 3 retries, 60 s, doubling), in the one-slot pool. Airflow
    # takes the factor as its backoff multiplier; max_retry_delay holds its jitter to the plan's longest wait.
    assert example["validate"] == {"retries": 3, "retry_delay": 60.0, "backoff": 2.0, "max_retry_delay": 240.0,
                                   "pool": "slimops_benchmark", "pool_slots": 1}
    # Transforms (and the source task): twice after 30 s, for a lost worker, in the default pool.
    for task in ("source", "train", "export", "quantize"):
        assert example[task] == {"retries": 2, "retry_delay": 30.0, "backoff": 2.0, "max_retry_delay": 60.0,
                                 "pool": "default_pool", "pool_slots": 1}, task
    # Side effects: never retried blindly (a second attempt could register twice).
    for task in ("register", "promote"):
        assert example[task]["retries"] == 0 and example[task]["pool"] == "default_pool", task


def test_the_recipe_retry_inconclusive_reaches_the_gate_task(policies):
    assert policies["custom"]["validate"] == {"retries": 5, "retry_delay": 10.0, "backoff": 3.0,
                                              "max_retry_delay": 810.0, "pool": "slimops_benchmark", "pool_slots": 1}
    assert policies["custom"]["export"]["retries"] == 2  # transforms keep theirs
    # retries: 0 - an inconclusive gate fails the run at once; it still benchmarks alone.
    assert policies["no_retry"]["validate"]["retries"] == 0
    assert policies["no_retry"]["validate"]["pool"] == "slimops_benchmark"


def test_arguments_you_pass_win_over_the_plan_and_default_args_do_not(policies):
    kwargs = policies["task_kwargs"]
    assert {t["retries"] for t in kwargs.values()} == {7} and {t["pool"] for t in kwargs.values()} == {"ml"}
    assert kwargs["validate"]["retry_delay"] == 60.0  # what was not given still comes from the plan
    standalone = policies["standalone"]
    # A standalone operator gets its step's policy too; DAG default_args (retries=5) do not retry register blindly.
    assert standalone["gate"]["retries"] == 3 and standalone["gate"]["pool"] == "slimops_benchmark"
    assert standalone["register"]["retries"] == 0
    assert (standalone["mine"]["retries"], standalone["mine"]["pool"]) == (1, "gpu")


INCONCLUSIVE_RUN = """
    import json
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_run = DagBag(dag_folder=%(dags)r).get_dag("slimops_compress_on_new_model").test(run_conf={"model": %(model)r})
    with create_session() as session:
        instances = dag_run.get_task_instances(session=session)
        xcoms = {f"{x.task_id}:{x.key}": x.value
                 for x in session.query(XComModel).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id)}
        print(json.dumps({"state": getattr(dag_run.state, "value", dag_run.state),
                          "tasks": {ti.task_id: getattr(ti.state, "value", ti.state) for ti in instances},
                          "tries": {ti.task_id: ti.try_number for ti in instances}, "xcom": xcoms}, default=str))
"""


def test_an_inconclusive_gate_is_retried_with_backoff_then_fails_and_never_promotes(airflow_env, tmp_path,
                                                                                     digits_trained):
    """A real inconclusive verdict (max_timing_spread 0 beside a speed rule any model meets: no timing is steady enough): the gate task raises a
    retryable AirflowException, Airflow runs it again after the recipe's backoff, and when it stays inconclusive
    the task fails; register and promote never run."""
    recipe = small_recipe(tmp_path / "inconclusive.yaml", {"max_metric_drop": 10.0, "min_speedup": 0.01,
                                                           "max_timing_spread": 0.0})
    text = yaml.safe_load(recipe.read_text())
    text["retry_inconclusive"] = {"retries": 1, "backoff_s": 0}  # Airflow waits its minimum, 1-2 s
    recipe.write_text(yaml.safe_dump(text, sort_keys=False))
    runs = tmp_path / "runs"
    result = in_airflow(airflow_env, INCONCLUSIVE_RUN % {"dags": str(DAGS), "model": str(digits_trained)},
                        timeout=900, SLIMOPS_NEW_MODEL_RECIPE=str(recipe), SLIMOPS_RUNS_DIR=str(runs))
    tasks = result["tasks"]
    assert result["state"] == "failed", tasks
    assert tasks["compress.validate"] == "failed" and result["tries"]["compress.validate"] == 2, result
    assert tasks["compress.register"] == tasks["compress.promote"] == "upstream_failed"
    assert result["xcom"]["compress.validate:status"] == "inconclusive"
    assert result["xcom"]["compress.validate:gate_passed"] is None  # no verdict, not a rejection
    run = only_run_dir(runs, "slimops_compress_on_new_model")
    report = json.loads((run / "steps" / "compress.validate" / "gate_report.json").read_text())
    assert report["passed"] is False and report["verdict"] == "inconclusive"
    assert not (run / "steps" / "compress.register").exists()
