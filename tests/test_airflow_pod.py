"""The Airflow provider's Kubernetes runner, the slimops connection and the per-run recipe / gate, without a
cluster or a database.

No cluster exists here, so the pod runner is checked where it stops: the pod request the provider's
KubernetesPodOperator builds (its own ``build_pod_request_obj``, with a kubeconfig pointing at a closed loopback
port, never contacted) for each task of a recipe's DAG: image, command (the plan's own ``slimops step`` argv),
environment, resources, placement, and the task policy (deferrable, timeout, retries, pool). The slimops
connection comes from Airflow's own environment-variable secrets backend (``AIRFLOW_CONN_SLIMOPS_DEFAULT``),
as a deployment would set it. Everything runs in a subprocess with its own AIRFLOW_HOME.
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

try:
    version("apache-airflow-core")
    version("apache-airflow-providers-cncf-kubernetes")
except PackageNotFoundError:
    pytest.skip(reason="apache-airflow 3 with apache-airflow-providers-cncf-kubernetes is not installed "
                "(pip install slimops[airflow])", allow_module_level=True)

EXAMPLE = REPO / "examples" / "digits-pipeline.yaml"
IMAGE = "registry.example.com/slimops@sha256:" + "ab" * 32
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: not-a-secret}}]
contexts: [{name: none, context: {cluster: none, user: none, namespace: ml}}]
current-context: none
"""

PODS = """
    import json
    from dataclasses import replace
    from types import SimpleNamespace
    from kubernetes.client import ApiClient
    from slimops.adapters.airflow import build_dag
    from slimops.adapters.airflow.operators import run_actor
    from slimops.errors import BadInput
    from slimops.plan import plan_recipe

    paths = %(paths)r
    pod_kwargs = {"image": %(image)r, "kubernetes_conn_id": None, "config_file": paths["kubeconfig"],
                  "in_cluster": False, "namespace": "ml"}
    dag = build_dag(paths["recipe"], dag_id="digits_in_pods", runner="kubernetes", pod_kwargs=pod_kwargs,
                    runs_dir="/mnt/slimops/runs")
    plan = plan_recipe(paths["recipe"])
    run_id = "manual__2026-12-04T00:00:00+00:00"
    steps = "/mnt/slimops/runs/digits_in_pods/manual__2026-12-04T00_00_00_00_00/steps"

    def context(task, conf=None):
        ti = SimpleNamespace(dag_id=dag.dag_id, task_id=task.task_id, map_index=-1, try_number=1)
        return {"ti": ti, "run_id": run_id, "dag": dag, "params": {}, "dag_run": SimpleNamespace(conf=conf or {})}

    def pod_of(task, conf=None):
        # What Airflow renders before execute: the upstream model directories (XCom "out") as paths.
        call = next((c for c in plan.calls if c.id == task.task_id), None)
        if call is not None:
            task.model = f"{steps}/{call.input}"
            task.baseline = None if call.baseline is None else f"{steps}/{call.baseline}"
        return ApiClient().sanitize_for_serialization(task.pod_request(context(task, conf)))

    def policy(task):
        return {"class": type(task).__name__, "deferrable": task.deferrable,
                "timeout": task.execution_timeout.total_seconds(), "retries": task.retries, "pool": task.pool}

    pods = {t.task_id: pod_of(t) for t in dag.tasks}
    argv = {}
    for call in plan.calls:
        if call.step in ("register", "promote"):  # the connection's tracking URI, as the step's own option
            call = replace(call, config={**call.config, "tracking_uri": "http://mlflow.internal:5000"})
        argv[call.id] = call.argv(f"{steps}/{call.input}", f"{steps}/{call.id}",
                                  None if call.baseline is None else f"{steps}/{call.baseline}",
                                  recipe_dir=plan.recipe_dir, threads=plan.threads,
                                  gate_output="/airflow/xcom/return.json" if call.gated else None,
                                  metrics_output=None if call.gated else "/airflow/xcom/return.json")
    argv["source"] = plan.source_argv(f"{steps}/source", recipe_dir=plan.recipe_dir)

    def no_image():
        import os
        os.environ.pop("SLIMOPS_IMAGE", None)
        try:
            build_dag(paths["recipe"], dag_id="no_image", runner="kubernetes")
        except BadInput as err:
            return str(err)

    def bad_runner():
        try:
            build_dag(paths["recipe"], dag_id="bad_runner", runner="docker")
        except BadInput as err:
            return str(err)

    print(json.dumps({
        "pods": pods, "argv": argv, "policy": {t.task_id: policy(t) for t in dag.tasks},
        "downstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "gated_run": pod_of(dag.task_dict["validate"], {"gate": {"min_speedup": 1.5}}),
        "no_image": no_image(), "bad_runner": bad_runner(),
    }))
"""


def in_airflow(tmp_path: Path, script: str, **extra_env) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SLIMOPS_"))}
    env.update({"AIRFLOW_HOME": str(tmp_path / "airflow-home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db", **extra_env})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def gpu_recipe(path: Path) -> Path:
    """The example recipe with a node pool for every step and a GPU for the gate (the step's placement)."""
    recipe = yaml.safe_load(EXAMPLE.read_text())
    recipe["placement"] = {"node_selector": {"pool": "cpu-large"}}
    [validate] = [s for s in recipe["steps"] if s["step"] == "validate"]
    validate["placement"] = {"accelerator": "nvidia.com/gpu", "accelerator_limit": 1, "node_selector": {"pool": "gpu"},
                             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# The registry as a deployment would configure it: an Airflow connection of type slimops, here from the
# environment (Airflow's own secrets backend for connections).
CONNECTION = {"conn_type": "slimops", "host": "http://mlflow.internal:5000", "login": "ci", "password": "s3cret",
              "extra": {"registry_dir": "/mnt/slimops/registry"}}


@pytest.fixture(scope="module")
def pods(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pods")
    (tmp / "kubeconfig").write_text(KUBECONFIG)
    paths = {"recipe": str(gpu_recipe(tmp / "recipe.yaml")), "kubeconfig": str(tmp / "kubeconfig")}
    return in_airflow(tmp, PODS % {"paths": paths, "image": IMAGE},
                      AIRFLOW_CONN_SLIMOPS_DEFAULT=json.dumps(CONNECTION)) | {"paths": paths}


def container(pod: dict) -> dict:
    [base] = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    return base


def env_of(pod: dict) -> dict:
    return {e["name"]: e.get("value") for e in container(pod).get("env") or []}


def test_each_pod_runs_the_plans_own_step_command_in_the_component_image(pods):
    """The container's command is exactly ``StepCall.argv`` (what every runner issues), in the image given."""
    for task_id, pod in pods["pods"].items():
        base = container(pod)
        assert base["image"] == IMAGE, task_id
        assert base["command"] + base["args"] == pods["argv"][task_id], task_id
        assert pod["metadata"]["namespace"] == "ml" and pod["spec"]["restartPolicy"] == "Never"
        # The provider's XCom sidecar reads /airflow/xcom/return.json back: the gate's verdict, a step's metrics.
        assert any(c["name"] == "airflow-xcom-sidecar" for c in pod["spec"]["containers"]), task_id
    assert "--gate-output" in pods["argv"]["validate"] and "--on-gate-fail" in pods["argv"]["validate"]
    # The registry steps register into the slimops connection's tracking URI.
    assert 'tracking_uri="http://mlflow.internal:5000"' in container(pods["pods"]["register"])["args"]
    assert pods["downstream"]["promote"] == ["register", "validate"]


def test_pods_carry_the_actor_and_only_registry_steps_get_the_registry_credentials(pods):
    run = "digits_in_pods/manual__2026-12-04T00:00:00+00:00"
    for task_id, pod in pods["pods"].items():
        env = env_of(pod)
        assert env["SLIMOPS_ACTOR"] == run and env["SLIMOPS_LOG_LEVEL"] == "INFO", task_id
        if task_id in ("register", "promote"):
            assert env["SLIMOPS_REGISTRY_DIR"] == "/mnt/slimops/registry"
            assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("ci", "s3cret")
        else:
            assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "SLIMOPS_REGISTRY_DIR"} & set(env)
        # Credentials never travel on a command line.
        assert "s3cret" not in json.dumps(container(pod).get("args")), task_id


def test_pod_resources_and_placement_come_from_the_recipe(pods):
    validate, quantize = pods["pods"]["validate"], pods["pods"]["quantize"]
    # threads: 2 in the recipe -> two CPUs requested; the gate's placement adds its GPU as a limit.
    assert container(quantize)["resources"] == {"requests": {"cpu": "2"}}
    assert container(validate)["resources"] == {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": "1"}}
    assert quantize["spec"]["nodeSelector"] == {"pool": "cpu-large"}
    assert validate["spec"]["nodeSelector"] == {"pool": "gpu"}  # a step's placement replaces the recipe's
    assert validate["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert validate["metadata"]["labels"]["slimops-step"] == "validate"


def test_long_steps_defer_and_every_pod_task_keeps_the_plans_policy(pods):
    policy = pods["policy"]
    assert policy["validate"] == {"class": "SlimopsValidatePodOperator", "deferrable": True, "timeout": 3600.0,
                                  "retries": 3, "pool": "slimops_benchmark"}
    for task_id in ("train", "export", "quantize"):
        assert policy[task_id]["deferrable"] is True and policy[task_id]["retries"] == 2, task_id
        assert policy[task_id]["timeout"] == 6 * 3600.0
    for task_id in ("register", "promote"):  # seconds of work, side effects: no deferral, no blind retry
        assert policy[task_id]["deferrable"] is False and policy[task_id]["retries"] == 0, task_id
        assert policy[task_id]["timeout"] == 900.0
    assert policy["source"]["class"] == "SlimopsSourcePodOperator" and policy["source"]["timeout"] == 1800.0


def test_a_runs_gate_reaches_the_pods_command(pods):
    args = container(pods["gated_run"])["args"]
    gate = json.loads(next(a for a in args if a.startswith("gate="))[len("gate="):])
    assert gate["min_speedup"] == 1.5 and gate["max_metric_drop"] == 1.0  # the run's rule over the recipe's


def test_no_image_and_an_unknown_runner_fail_when_the_dag_is_built(pods):
    assert "no component image" in pods["no_image"] and "SLIMOPS_IMAGE" in pods["no_image"]
    assert pods["bad_runner"].startswith("runner='docker': choose local")


# ----------------------------------------------------------------------------- exit codes, connection, per-run

CHECKS = """
    import json
    from kubernetes.client import models as k8s
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from slimops.adapters.airflow import SlimopsHook
    from slimops.adapters.airflow.hooks import step_environment
    from slimops.adapters.airflow.per_run import settings_for_run
    from slimops.adapters.airflow.pod import exit_code, task_failure
    from slimops.errors import BadInput
    import os

    def finished(code):
        state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code))
        status = k8s.V1PodStatus(container_statuses=[k8s.V1ContainerStatus(
            name="base", state=state, image="i", image_id="", ready=False, restart_count=0)])
        return k8s.V1Pod(status=status)

    def failure(code):
        err = task_failure(exit_code(finished(code)), "validate", AirflowException("pod failed"))
        return [type(err).__name__, str(err)]

    def error(build):
        try:
            build()
        except BadInput as err:
            return str(err)

    paths = %(paths)r
    gate_call = dict(task_id="validate", step="validate", step_id="validate", recipe_dir=paths["dir"], threads=1,
                     gated=True, config={"data": {"format": "digits", "split": "test"}, "gate": {"max_metric_drop": 1.0}})

    def run(conf):
        return settings_for_run({"dag_run": type("R", (), {"conf": conf})(), "params": {}}, **gate_call)

    manager = ProvidersManager()
    hook_info = manager.hooks.get("slimops")
    before = dict(os.environ)
    with step_environment({"SLIMOPS_ACTOR": "d/r"}):
        inside = os.environ.get("SLIMOPS_ACTOR")
    registry = SlimopsHook().registry()
    print(json.dumps({
        "exit": {code: failure(code) for code in (2, 3, 4, 137)},
        "connection_type": manager.providers["slimops"].data["connection-types"],
        "hook": hook_info and [hook_info.hook_class_name, hook_info.connection_id_attribute_name,
                               hook_info.connection_type],
        "behaviour": manager.field_behaviours.get("slimops"),
        "widgets": sorted(k for k in manager.connection_form_widgets if k.startswith("extra__slimops__")),
        "registry": [str(registry.directory), registry.tracking_uri, sorted(registry.credentials)],
        "registry_env": SlimopsHook().step_environment("register", "d/r"),
        "quantize_env": SlimopsHook().step_environment("quantize", "d/r"),
        "missing_conn": error(lambda: SlimopsHook(slimops_conn_id="nope").registry()),
        "env_restored": [inside, os.environ.get("SLIMOPS_ACTOR"), dict(os.environ) == before],
        "run_gate": run({"gate": {"min_speedup": 2.0, "max_metric_drop": None}}).config["gate"],
        "run_recipe": run({"recipe": paths["other"]}).recipe_dir,
        "wrong_recipe": error(lambda: run({"recipe": paths["no_validate"]})),
        "empty_gate": error(lambda: run({"gate": {"max_metric_drop": None, "min_speedup": None}})),
        "bad_gate": error(lambda: run({"gate": {"min_speedup": "fast"}})),
        "gate_not_a_mapping": error(lambda: run({"gate": "1.5"})),
    }, default=str))
"""


def test_exit_codes_the_connection_and_per_run_settings(tmp_path):
    """Exit 2 and 3 fail a pod task for good, 4 and a crash are retried; the slimops connection type is known to
    Airflow and gives the registry (credentials only to registry steps, in their environment); a run's recipe and
    gate are checked and applied."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "recipe.yaml").write_text(EXAMPLE.read_text())
    recipe = yaml.safe_load(EXAMPLE.read_text())
    [validate] = [s for s in recipe["steps"] if s["step"] == "validate"]
    validate["id"] = "gate"  # the same steps, but not the DAG's task ids
    (tmp_path / "no_validate.yaml").write_text(yaml.safe_dump(recipe))
    paths = {"dir": str(REPO / "examples"), "other": str(other / "recipe.yaml"),
             "no_validate": str(tmp_path / "no_validate.yaml")}
    got = in_airflow(tmp_path, CHECKS % {"paths": paths}, AIRFLOW_CONN_SLIMOPS_DEFAULT=json.dumps(CONNECTION))

    assert got["exit"]["2"][0] == got["exit"]["3"][0] == "AirflowFailException"
    assert "bad input" in got["exit"]["2"][1] and "gate failed" in got["exit"]["3"][1]
    assert got["exit"]["4"][0] == "AirflowException" and "inconclusive" in got["exit"]["4"][1]
    assert got["exit"]["137"] == ["AirflowException", "pod failed"]  # a lost node: retried as the plan says

    [declared] = got["connection_type"]
    assert declared["connection-type"] == "slimops"
    assert got["hook"] == ["slimops.adapters.airflow.hooks.SlimopsHook", "slimops_conn_id", "slimops"]
    assert got["behaviour"]["relabeling"]["host"] == "Tracking URI"
    assert got["widgets"] == ["extra__slimops__registry_dir", "extra__slimops__token"]
    assert got["registry"] == ["/mnt/slimops/registry", "http://mlflow.internal:5000",
                               ["MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"]]
    assert got["registry_env"] == {"SLIMOPS_ACTOR": "d/r", "SLIMOPS_REGISTRY_DIR": "/mnt/slimops/registry",
                                   "MLFLOW_TRACKING_USERNAME": "ci", "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    assert got["quantize_env"] == {"SLIMOPS_ACTOR": "d/r"}
    assert got["missing_conn"].startswith("no Airflow connection 'nope'")
    assert got["env_restored"] == ["d/r", None, True]

    assert got["run_gate"] == {"max_metric_drop": None, "min_speedup": 2.0}
    assert got["run_recipe"] == str(other)
    assert "has no step 'validate' running validate" in got["wrong_recipe"]
    assert "checks nothing" in got["empty_gate"]
    assert got["bad_gate"].startswith("task validate: the run's gate (from dag_run.conf)")
    assert "must be a mapping" in got["gate_not_a_mapping"]


def test_the_recipe_installed_for_the_shipped_dags_is_the_example():
    """The DAGs' default recipe ships inside the package (so a DAG file copied anywhere finds it); it is a copy
    of examples/digits-pipeline.yaml and must stay one."""
    packaged = REPO / "components" / "slimops" / "adapters" / "airflow" / "recipes" / "digits-pipeline.yaml"
    assert packaged.read_text() == EXAMPLE.read_text(), "copy examples/digits-pipeline.yaml over the packaged recipe"
    assert "adapters/airflow/recipes/*.yaml" in (REPO / "pyproject.toml").read_text()  # in the wheel too
