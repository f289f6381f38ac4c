"""Equivalence: for the example recipe every runner issues the same step commands with the same configs, and the
gate decides the same way whether a runner calls the core in-process or runs the container command.

Each runner's list is read back from what that runner really builds, not from ``slimops.plan``: the local runner's
own ``step_calls`` (what ``run_recipe`` iterates), KFP's compiled specs (Python kind: each task's ``config``
parameter; container kind: each executor's command), the Airflow DAG's operators (``build_dag``, in a fresh
interpreter with its own AIRFLOW_HOME), the SageMaker definition JSON (each ProcessingStep's ContainerEntrypoint)
and the Azure ML pipeline's REST form (each node's component command rendered with its inputs). Commands are
parsed with the CLI's own parser, so "the same config" means what ``slimops step`` would really receive.

Every list is normalised to ``{id, step, input, baseline, threads, after_gate, config}`` (data paths relative to
the recipe directory) and compared with tests/golden/digits-pipeline.steps.json, which in turn must equal the
plan. Regenerate the golden file after an intended recipe change: SLIMOPS_UPDATE_GOLDEN=1 pytest
tests/test_equivalence.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli_env, example_pipeline

from slimops.cli import _parse_sets, build_parser
from slimops.plan import plan_recipe
from slimops.recipe import load_recipe
from slimops.steps import map_data

EXAMPLE = REPO / "examples" / "digits-pipeline.yaml"
GOLDEN = REPO / "tests" / "golden" / "digits-pipeline.steps.json"
RECIPE_DIR = "/recipe"  # where a runner is told the recipe's data live, where the runner takes that setting
IMAGE = "registry.example.com/slimops:0.1.0"


# ----------------------------------------------------------------------------- normalising


def relative_data(step: str, config, recipe_dir: str):
    """Data paths under the recipe directory made relative to it again (a runner places them under its own)."""
    def relative(spec, _):
        if isinstance(spec, dict) and str(spec.get("path", "")).startswith("/"):
            return {**spec, "path": os.path.relpath(spec["path"], recipe_dir)}
        return spec
    return map_data(step, config, relative)


def record(id, step, input, baseline, threads, after_gate, config, recipe_dir) -> dict:
    return {"id": id, "step": step, "input": input, "baseline": baseline,
            "threads": None if threads is None else int(threads), "after_gate": after_gate,
            "config": relative_data(step, config, str(recipe_dir))}


def parse_command(argv: list[str]) -> dict:
    """What ``slimops step`` receives from a container command, read with the CLI's own parser."""
    assert argv[:2] == ["slimops", "step"], argv
    args = build_parser().parse_args(argv[1:])
    assert args.config is None, argv  # everything travels as --set, nothing from a file the image lacks
    return {"step": args.name, "config": _parse_sets(args.set or []), "threads": args.threads,
            "model": args.model, "baseline": args.baseline, "gate_output": args.gate_output,
            "on_gate_fail": args.on_gate_fail, "metrics_output": args.metrics_output}


def plan_records(path: Path = EXAMPLE) -> list[dict]:
    plan = plan_recipe(path)
    return [record(c.id, c.step, c.input, c.baseline, plan.threads, c.after_gate, c.config, plan.recipe_dir)
            for c in plan.calls]


def shipped_example(runner: str):
    return example_pipeline(runner)


def chain(records: list[dict]) -> list[dict]:
    return [r for r in records if not r["after_gate"]]


@pytest.fixture(scope="module")
def golden() -> list[dict]:
    if os.environ.get("SLIMOPS_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(plan_records(), indent=2, sort_keys=True) + "\n")
    assert GOLDEN.is_file(), f"{GOLDEN} missing; run SLIMOPS_UPDATE_GOLDEN=1 pytest tests/test_equivalence.py"
    return json.loads(GOLDEN.read_text())


def test_golden_is_the_plan_of_the_example(golden):
    assert golden == plan_records(), ("the example's plan changed; if intended, regenerate with "
                                      "SLIMOPS_UPDATE_GOLDEN=1 pytest tests/test_equivalence.py")
    # The example is worth comparing: a chain, a gate against an earlier step, a promotion branch.
    assert [r["id"] for r in golden] == ["train", "export", "quantize", "validate", "register", "promote"]
    assert [r["after_gate"] for r in golden] == [False] * 4 + [True] * 2
    assert golden[3]["baseline"] == "train" and golden[3]["config"]["gate"]


# ----------------------------------------------------------------------------- the local runner


def test_local_runner_issues_the_golden_calls(golden):
    from slimops.runner import step_calls

    recipe = load_recipe(EXAMPLE)
    calls = step_calls(recipe)  # what run_recipe iterates
    # run_recipe stops at the first failed verdict, and only the gating validate gives one before promotion: a
    # step is after the gate when a validate ran before it.
    gate_at = next(i for i, (call, _) in enumerate(calls) if call.step == "validate")
    found = [record(call.id, call.step, call.input, call.baseline, recipe.threads, i > gate_at, config,
                    recipe.path.parent) for i, (call, config) in enumerate(calls)]
    assert found == golden


# ----------------------------------------------------------------------------- Kubeflow Pipelines


def kfp_records(spec: dict, kind: str) -> tuple[list[dict], set[str]]:
    """The step tasks of a compiled spec, in DAG order, and the trigger conditions above the promotion tasks."""
    executors = spec["deploymentSpec"]["executors"]
    found, conditions = [], set()

    def producer(binding: dict, names: dict, bound: dict) -> str:
        if "taskOutputArtifact" in binding:
            return names[binding["taskOutputArtifact"]["producerTask"]]
        return bound[binding["componentInputArtifact"]]

    def walk(dag: dict, bound: dict, above: list[str]):
        names = {key: task["taskInfo"]["name"] for key, task in dag["tasks"].items()}  # task key -> display (id)
        for key in topological(dag["tasks"]):
            task = dag["tasks"][key]
            component = spec["components"][task["componentRef"]["name"]]
            artifacts = {name: producer(b, names, bound) for name, b in task.get("inputs", {}).get("artifacts", {}).items()}
            condition = task.get("triggerPolicy", {}).get("condition")
            if "dag" in component:
                walk(component["dag"], artifacts, above + ([condition] if condition else []))
                continue
            container = executors[component["executorLabel"]]["container"]
            if kind == "python":
                args = container["args"]
                step = args[args.index("--function_to_execute") + 1]
                if step in ("source", "gate_rejected"):
                    continue
                params = {k: v["runtimeValue"]["constant"] for k, v in task["inputs"]["parameters"].items()}
                config = {"config": json.loads(params["config"]), "threads": params["threads"], "step": step}
                recipe_dir = params["recipe_dir"]
            else:
                if container["command"][:2] != ["slimops", "step"]:
                    continue  # slimops source, the rejection report
                config = parse_command(container["command"])
                recipe_dir = RECIPE_DIR
            if above:
                conditions.update(above)
            found.append(record(names[key], config["step"], artifacts["model"], artifacts.get("baseline"),
                                config["threads"], bool(above), config["config"], recipe_dir))

    walk(spec["root"]["dag"], {}, [])
    return found, conditions


def topological(tasks: dict) -> list[str]:
    order, seen = [], set()

    def visit(key):
        if key not in seen:
            seen.add(key)
            for dep in tasks[key].get("dependentTasks", []):
                visit(dep)
            order.append(key)

    for key in sorted(tasks):
        visit(key)
    return order


@pytest.mark.parametrize("kind", ["python", "container"])
def test_kfp_compiled_spec_issues_the_golden_calls(kind, golden, tmp_path):
    pytest.importorskip("kfp", reason="the kfp extra (pip install slimops[kfp]) is not installed")
    from kfp import compiler

    from slimops.adapters.kfp import build_pipeline

    path = tmp_path / "spec.yaml"
    compiler.Compiler().compile(build_pipeline(EXAMPLE, image=IMAGE, kind=kind, recipe_dir=RECIPE_DIR), str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    found, conditions = kfp_records(spec, kind)
    assert found == golden
    # The promotion tasks sit under one condition: the gate task's verdict is true (dsl.If).
    assert conditions == {"inputs.parameter_values['pipelinechannel--validate-passed'] == true"}


# ----------------------------------------------------------------------------- Airflow

AIRFLOW_DAG = """
    import json, sys
    from slimops.adapters.airflow.factory import build_dag
    from slimops.adapters.airflow.operators import SlimopsStepOperator

    dag = build_dag(sys.argv[1])
    gate = next(t for t in dag.tasks if getattr(t, "step", None) == "validate")
    tasks = []
    for task in dag.topological_sort():
        if not isinstance(task, SlimopsStepOperator):
            continue  # the source task
        tasks.append({"task_id": task.task_id, "class": type(task).__name__, "step": task.step,
                      "step_id": task.step_id, "config": task.config, "recipe_dir": task.recipe_dir,
                      "threads": task.threads, "model": task.model.operator.task_id,
                      "baseline": None if task.baseline is None else task.baseline.operator.task_id,
                      "after_gate": gate.task_id in task.get_flat_relative_ids(upstream=True)})
    print(json.dumps(tasks))
"""


def test_airflow_dag_issues_the_golden_calls(golden, tmp_path):
    from importlib.metadata import PackageNotFoundError, version

    try:  # a version check, not an import: importing airflow here would set it up under ~/airflow
        major = int(version("apache-airflow-core").split(".")[0])
    except PackageNotFoundError:
        major = 0
    if major < 3:
        pytest.skip(reason="apache-airflow 3 is not installed (pip install slimops[airflow])")
    env = {k: v for k, v in cli_env().items() if not k.startswith("AIRFLOW")}
    env.update({"AIRFLOW_HOME": str(tmp_path / "airflow-home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(AIRFLOW_DAG), str(EXAMPLE)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tasks = json.loads(done.stdout.strip().splitlines()[-1])
    found = []
    for task in tasks:
        assert task["class"] == "Slimops" + task["step"].capitalize() + "Operator"  # one operator per step
        assert task["task_id"] == task["step_id"]
        found.append(record(task["step_id"], task["step"], task["model"], task["baseline"], task["threads"],
                            task["after_gate"], task["config"], task["recipe_dir"]))
    assert found == golden


# ----------------------------------------------------------------------------- SageMaker


def offline(patch):
    """Building a definition must need no network and no credentials: any AWS or HTTP call fails at once."""
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        patch.setenv(name, "http://127.0.0.1:9")
    patch.delenv("NO_PROXY", raising=False)
    patch.delenv("no_proxy", raising=False)


def sagemaker_definition(**overrides) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        offline(patch)
        pytest.importorskip("sagemaker.mlops", reason="sagemaker>=3 (extra slimops[sagemaker]) is not installed")
        return json.loads(shipped_example("sagemaker").build(**overrides).definition())


def sagemaker_records(definition: dict) -> tuple[list[dict], list[dict]]:
    """(the slimops step jobs, the other steps of the passing branch)."""
    jobs, others = [], []

    def upstream(s3_uri: dict) -> str:
        get = s3_uri["Std:Join"]["Values"][0]["Get"]
        return re.fullmatch(r"Steps\.slimops-(.+)\.ProcessingOutputConfig\.Outputs\['model'\]\.S3Output\.S3Uri",
                            get)[1]

    def walk(steps: list[dict], after_gate: bool):
        for step in steps:
            if step["Type"] == "Condition":
                walk(step["Arguments"]["IfSteps"], True)
                continue
            entry = step["Arguments"].get("AppSpecification", {}).get("ContainerEntrypoint", [])
            if entry[:2] != ["slimops", "step"]:
                if after_gate:
                    others.append(step)
                continue
            command = parse_command(entry)
            inputs = {i["InputName"]: upstream(i["S3Input"]["S3Uri"]) for i in step["Arguments"]["ProcessingInputs"]}
            jobs.append(record(step["Name"].removeprefix("slimops-"), command["step"], inputs["model"],
                               inputs.get("baseline"), command["threads"], after_gate, command["config"], "."))

    walk(definition["Steps"], False)
    return jobs, others


def test_sagemaker_definition_issues_the_golden_chain(golden):
    definition = sagemaker_definition()
    jobs, promotion = sagemaker_records(definition)
    # Same chain, same commands and configs.
    assert jobs == chain(golden)
    # What differs, on purpose: the shipped example is built with recipe_promotion=False. The recipe's register and
    # promote keep their registry in the run directory, and every SageMaker job is a fresh container, so promote
    # would never see what register wrote (build_pipeline refuses them without a shared tracking_uri; see the next
    # test). The passing branch registers the validated model in the SageMaker Model Registry instead.
    assert [(s["Name"], s["Type"]) for s in promotion] == [("slimops-register-model", "RegisterModel")]
    source = promotion[0]["Arguments"]["InferenceSpecification"]["Containers"][0]["ModelDataSource"]["S3DataSource"]
    assert source["S3Uri"]["Std:Join"]["Values"][0]["Std:Join"]["Values"][0] == {
        "Get": "Steps.slimops-validate.ProcessingOutputConfig.Outputs['model'].S3Output.S3Uri"}


def test_cloud_runners_refuse_the_recipe_promotion_steps_with_a_run_local_registry():
    """Why the SageMaker and Azure ML examples leave out register/promote: asked to run them, both builders say so."""
    from slimops.errors import BadInput

    refusal = r"steps register, promote keep their model registry inside the job \(no tracking_uri\).*fresh container"
    with pytest.raises(BadInput, match=refusal):
        sagemaker_definition(recipe_promotion=True)
    with pytest.raises(BadInput, match=refusal):
        azureml_rest(recipe_promotion=True)


def test_cloud_runners_issue_the_promotion_steps_too_when_the_registry_is_shared(tmp_path):
    """With a registry every job reaches (an MLflow tracking server), SageMaker and Azure ML run the recipe's own
    register and promote in the passing branch, with the same configs as every other runner."""
    recipe = yaml.safe_load(EXAMPLE.read_text())
    for step in recipe["steps"]:
        if step["step"] in ("register", "promote"):
            step["config"] = {**step.get("config", {}), "tracking_uri": "http://mlflow.example.com:5000"}
    path = tmp_path / "digits-pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    expected = plan_records(path)
    assert [r["id"] for r in expected if r["after_gate"]] == ["register", "promote"]

    jobs, others = sagemaker_records(sagemaker_definition(recipe=path, recipe_promotion=True))
    assert jobs == expected
    assert [s["Name"] for s in others] == ["slimops-register-model"]  # the Model Registry entry, besides
    found, others = azureml_records(azureml_rest(recipe=path, recipe_promotion=True)["jobs"])
    assert found == expected
    assert [name for name, *_ in others] == ["source", "publish"]


# ----------------------------------------------------------------------------- Azure ML

PATHS = {"model": "/mnt/in/model", "baseline": "/mnt/in/baseline"}
OUTPUTS = {"model": "/mnt/out/model", "passed": "/mnt/out/passed"}


def render(command: str, inputs: dict) -> list[str]:
    """What Azure ML runs: an optional ``$[[...]]`` block kept only when its inputs are set, bindings replaced."""
    def block(match):
        names = re.findall(r"\$\{\{inputs\.(\w+)\}\}", match[1])
        return match[1] if all(n in inputs for n in names) else ""

    command = re.sub(r"\$\[\[(.*?)\]\]", block, command, flags=re.S)
    command = re.sub(r"\$\{\{inputs\.(\w+)\}\}", lambda m: str(inputs[m[1]]), command)
    command = re.sub(r"\$\{\{outputs\.(\w+)\}\}", lambda m: OUTPUTS[m[1]], command)
    return shlex.split(command)


def azureml_rest(**overrides) -> dict:
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml (extra slimops[azure]) is not installed")
    with pytest.MonkeyPatch.context() as patch:
        offline(patch)
        return shipped_example("azureml").build(**overrides)._to_rest_object().as_dict()["properties"]


def azureml_records(jobs: dict) -> tuple[list[dict], list[tuple]]:
    """(the slimops step nodes, the other command nodes as (name, argv, producers, after_gate)). There is no
    control-flow node: a node runs after the gate when its model comes from the gating validate node, directly or
    through another node after it (a failed gate fails validate with exit 3, so none of them starts)."""
    from slimops.steps import get_step

    found, others, after_gate, gate = [], [], set(), None
    for name, job in jobs.items():
        assert job["type"] == "command", (name, job["type"])
        # The node's component, inline in the REST form until submission registers it (an anonymous component).
        component = job["componentId"]
        values, producers = {}, {}
        for key, given in job["inputs"].items():
            bound = re.fullmatch(r"\$\{\{parent\.jobs\.(\w+)\.outputs\.model\}\}", str(given["value"]))
            if bound:
                producers[key], values[key] = bound[1], PATHS[key]
            else:
                values[key] = given["value"]
        gated = producers.get("model") is not None and producers["model"] in {gate, *after_gate}
        if gated:
            after_gate.add(name)
        argv = render(component.command, values)
        if argv[:2] != ["slimops", "step"]:
            others.append((name, argv, producers, gated))  # slimops source, the publish copy
            continue
        command = parse_command(argv)
        assert (command["model"], command["baseline"]) == (PATHS["model"], PATHS["baseline"] if
                                                           "baseline" in producers else None)
        if gate is None and not gated and get_step(command["step"]).role == "gate":
            gate = name
        found.append(record(job["display_name"], command["step"], producers["model"], producers.get("baseline"),
                            command["threads"], gated, command["config"], "."))
    return found, others


def test_azureml_pipeline_issues_the_golden_chain(golden):
    jobs = azureml_rest()["jobs"]
    found, others = azureml_records(jobs)
    # Same chain, same commands and configs.
    assert found == chain(golden)
    # What differs, on purpose (as for SageMaker): the shipped example is built with recipe_promotion=False, since
    # each Azure ML node is a fresh container and a run-local registry would not reach promote. The publish node,
    # fed by the gate's output, registers the validated model directory as a workspace model asset instead.
    assert [name for name, *_ in others] == ["source", "publish"]
    publish = [(argv, producers, gated) for name, argv, producers, gated in others if name == "publish"]
    assert publish == [(["cp", "-a", f"{PATHS['model']}/.", f"{OUTPUTS['model']}/"], {"model": "validate"}, True)]
    assert jobs["publish"]["outputs"]["model"] == {"job_output_type": "custom_model", "name": "digits-cnn"}


# ----------------------------------------------------------------------------- the same gate decision

FAST_TIMING = {"rounds": 2, "latency_runs": 5, "throughput_samples": 64, "measure_memory": False}


@pytest.mark.parametrize("size_limit, verdict", [(2.0, True), (0.5, False)], ids=["passing", "failing"])
def test_in_process_call_and_container_command_decide_the_same(size_limit, verdict, tmp_path, digits_trained,
                                                                 digits_onnx):
    """The example's gate call run two ways on one candidate/baseline pair: ``run_call`` (KFP Python components,
    Airflow) and the rendered command with ``--on-gate-fail continue --gate-output`` (KFP container components,
    SageMaker, Azure ML). The gate is on size and accuracy, which do not move with the machine's load; speed
    does, so it is off here."""
    from slimops.plan import run_call

    plan = plan_recipe(EXAMPLE)
    gate = {"max_metric_drop": 1.0, "min_speedup": None, "max_size_ratio": size_limit}
    call = replace(plan.gate, config={**plan.gate.config, **FAST_TIMING, "gate": gate})

    in_process = run_call(call, digits_onnx, tmp_path / "in-process", baseline=digits_trained,
                          recipe_dir=plan.recipe_dir, threads=plan.threads)

    argv = call.argv(str(digits_onnx), str(tmp_path / "command"), str(digits_trained), recipe_dir=plan.recipe_dir,
                     threads=plan.threads, gate_output=str(tmp_path / "passed"),
                     metrics_output=str(tmp_path / "metrics.json"))
    done = subprocess.run([sys.executable, "-m", "slimops", *argv[1:]], env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # a failed gate is a verdict the pipeline branches on

    reports = [json.loads((tmp_path / d / "gate_report.json").read_text()) for d in ("in-process", "command")]
    assert in_process.passed is verdict and in_process.status == ("ok" if verdict else "gate_failed")
    assert (tmp_path / "passed").read_text() == ("true" if verdict else "false")
    assert [r["passed"] for r in reports] == [verdict, verdict]
    assert reports[0]["reasons"] == reports[1]["reasons"] == list(in_process.reasons)
    assert reports[0]["checks"] == reports[1]["checks"]  # same checks, same limits, same measured values
    assert [c["check"] for c in reports[0]["checks"]] == ["metric_drop", "size_ratio"]
    assert bool(reports[0]["reasons"]) is not verdict
    command_manifest = json.loads((tmp_path / "command" / "manifest.json").read_text())
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(
        command_manifest["metrics"], sort_keys=True, default=str))
    assert command_manifest["config"] == in_process["config"]
