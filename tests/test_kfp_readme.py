"""The README's Kubeflow Pipelines example, run exactly as written (the code blocks are read out of README.md):

- compiled, the spec has what a platform team checks: the If/Else gate, caching off for register and promote,
  the HTML report and Metrics artifacts, the image from $SLIMOPS_IMAGE;
- run with kfp.local as the README's second block says, with a gate the digits model passes: register and
  promote really run, and the MLflow registry holds ``my-model`` with its ``champion`` alias;
- pipelines/kfp/README.md shows the same blocks, byte for byte.

The README's pipeline calls ``my_training()``, the user's own task; here it hands over the digits model the
session fixtures trained. ``MLFLOW_TRACKING_URI`` (which the README reads) points at a SQLite store under tmp.
"""

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytest.importorskip("kfp", reason="the kfp extra (pip install slimops[kfp]) is not installed")
from kfp import dsl  # noqa: E402

README = REPO / "README.md"
KFP_README = REPO / "pipelines" / "kfp" / "README.md"
SECTION = "### Kubeflow Pipelines (kfp 2.x)\n"
IMAGE = "registry.example.com/slimops:0.1.0"
TRAINED_MODEL_ENV = "SLIMOPS_TEST_TRAINED_MODEL"


def readme_blocks() -> tuple[str, str]:
    """(the pipeline block, the kfp.local block) of the README's KFP section, as a user would copy them."""
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n### ", 1)]
    blocks = re.findall(r"```python\n(.*?)```\n", section, re.S)
    assert len(blocks) == 2, f"the README's KFP section should hold 2 Python blocks, found {len(blocks)}"
    return blocks[0], blocks[1]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def my_training(model: dsl.Output[dsl.Model]):
    """Stands in for the user's training task: its Model output is the digits model the fixtures trained."""
    import os
    import shutil

    shutil.copytree(os.environ["SLIMOPS_TEST_TRAINED_MODEL"], model.path)


def run_block(block: str, namespace: dict) -> dict:
    exec(compile(block, str(README), "exec"), namespace)
    return namespace


@pytest.fixture
def user_env(tmp_path, monkeypatch):
    """What the README assumes of the user's shell: an image, an MLflow server, a working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLIMOPS_IMAGE", IMAGE)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def all_tasks(spec: dict) -> dict:
    """Every task by name, inside condition branches too, with the names of the branches it sits in."""
    found = {}

    def walk(dag: dict, branches: tuple):
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"], branches + (task["taskInfo"]["name"],))
            else:
                found[task["taskInfo"]["name"]] = {**task, "branches": branches}

    walk(spec["root"]["dag"], ())
    return found


def test_the_kfp_readme_shows_the_same_example():
    pipeline_block, local_block = readme_blocks()
    kfp_readme = KFP_README.read_text()
    assert f"```python\n{pipeline_block}```\n" in kfp_readme
    assert f"```python\n{local_block}```\n" in kfp_readme


def test_readme_pipeline_compiles_with_an_if_else_gate_uncached_side_effects_and_report_artifacts(user_env):
    pipeline_block, _ = readme_blocks()
    run_block(pipeline_block, {"my_training": my_training})

    spec = yaml.safe_load((user_env / "train-and-compress.yaml").read_text())
    tasks = all_tasks(spec)
    assert set(tasks) == {"my-training", "export", "quantize", "validate", "register", "promote", "gate-rejected"}
    # If and Else: one condition-branches group, so kfp.local resolves the condition as the backends do.
    (group,) = {task["branches"][0] for task in tasks.values() if task["branches"]}
    assert group.startswith("condition-branches")
    assert tasks["register"]["branches"] == tasks["promote"]["branches"] != tasks["gate-rejected"]["branches"]
    # Caching: off for the steps with side effects, on for the transforms and the gate.
    assert {name: task.get("cachingOptions", {}).get("enableCache", False) for name, task in tasks.items()} == {
        "my-training": True, "export": True, "quantize": True, "validate": True,
        "register": False, "promote": False, "gate-rejected": True}
    validate = spec["components"]["comp-validate"]["outputDefinitions"]
    assert validate["artifacts"]["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert validate["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert validate["parameters"]["passed"]["parameterType"] == "BOOLEAN"
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {IMAGE}
    register = json.loads(tasks["register"]["inputs"]["parameters"]["config"]["runtimeValue"]["constant"])
    assert register == {"name": "my-model", "tracking_uri": f"sqlite:///{user_env / 'mlflow.db'}"}


@pytest.mark.slow
def test_readme_example_runs_with_kfp_local_and_a_passing_gate_promotes(user_env, monkeypatch, digits_trained):
    """Both README blocks as written: the gate passes on the digits model (dynamic INT8 against the trained torch
    model), so register and promote run and MLflow holds my-model v1 as champion."""
    from mlflow import MlflowClient

    monkeypatch.setenv(TRAINED_MODEL_ENV, str(digits_trained))
    pipeline_block, local_block = readme_blocks()
    namespace = run_block(pipeline_block, {"my_training": my_training})
    run_block(local_block, namespace)

    (run,) = sorted((user_env / "local_outputs").glob("train-and-compress-*"))
    gate_report = json.loads((run / "validate" / "output_model" / "gate_report.json").read_text())
    assert gate_report["passed"] is True, gate_report["reasons"]
    assert {check["check"] for check in gate_report["checks"]} == {"metric_drop", "size_ratio"}  # no speed rule
    assert (run / "validate" / "passed").read_text() == "true"
    assert "PASSED" in (run / "validate" / "report").read_text()
    promoted = json.loads((run / "promote" / "output_model" / "manifest.json").read_text())
    assert promoted["details"]["action"] == "promoted"
    assert not (run / "gate-rejected").exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{user_env / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("my-model", "champion")
    assert str(champion.version) == "1" and champion.tags["slimops.gate_passed"] == "true"
    # The version promoted is the model this run's gate passed.
    report_sha = hashlib.sha256((run / "validate" / "output_model" / "gate_report.json").read_bytes()).hexdigest()
    assert champion.tags["slimops.gate_report_sha256"] == report_sha


def kfp_readme_block(language: str, index: int = 0) -> str:
    return re.findall(rf"```{language}\n(.*?)```\n", KFP_README.read_text(), re.S)[index]


def test_kfp_readme_nesting_block_runs_as_written(user_env):
    """``build_pipeline("recipe.yaml", model_input=True)`` beside a recipe, then used as its comment says."""
    (user_env / "recipe.yaml").write_text((REPO / "examples" / "digits-pipeline.yaml").read_text())
    block = kfp_readme_block("python", 2)
    assert block.startswith("from slimops.adapters.kfp import build_pipeline\n")
    namespace = run_block(block, {})

    @dsl.pipeline(name="train-and-nest")
    def train_and_nest():
        trained = my_training()
        namespace["compress"](model=trained.outputs["model"])  # the block's comment, as code

    from kfp import compiler

    compiler.Compiler().compile(train_and_nest, str(user_env / "nested.yaml"))
    spec = yaml.safe_load((user_env / "nested.yaml").read_text())
    nested = spec["components"]["comp-digits-pipeline"]
    assert "model" in nested["inputDefinitions"]["artifacts"] and "source" not in nested["dag"]["tasks"]


def test_kfp_readme_placement_block_sets_resources_and_placement(tmp_path):
    """The README's placement YAML on the example recipe: every step's CPU and memory, and quantize's own."""
    from slimops.adapters.kfp import build_pipeline

    block = yaml.safe_load(kfp_readme_block("yaml"))
    recipe = yaml.safe_load((REPO / "examples" / "digits-pipeline.yaml").read_text())
    recipe["placement"] = block["placement"]
    (quantize,) = [step for step in recipe["steps"] if step["step"] == "quantize"]
    quantize["placement"] = block["steps"][0]["placement"]
    path = tmp_path / "placed.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))

    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(path, image=IMAGE), str(tmp_path / "p.yaml"))
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]

    def resources(executor: str) -> dict:
        found = executors[executor]["container"].get("resources", {})
        accelerator = found.get("accelerator")
        return {**{key: value for key, value in found.items() if key.startswith("resource")},
                **({"accelerator": (accelerator["resourceType"], accelerator["resourceCount"])} if accelerator else {})}

    assert resources("exec-quantize") == {"accelerator": ("nvidia.com/gpu", "1"),
                                          "resourceCpuRequest": "4", "resourceMemoryRequest": "16Gi"}
    assert resources("exec-export") == {"resourceCpuRequest": "2", "resourceMemoryRequest": "4Gi",
                                        "resourceMemoryLimit": "8Gi"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-quantize"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert k8s["exec-export"]["nodeSelector"]["labels"] == {"pool": "ml"}


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def verdict(passed: dsl.OutputPath(bool)):
    from pathlib import Path

    Path(passed).write_text("true")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def mark(name: str):
    import os
    from pathlib import Path

    Path(os.environ["SLIMOPS_TEST_MARKS"], name).touch()


def test_kfp_local_skips_a_lone_if_but_runs_an_if_with_an_else(tmp_path, monkeypatch, caplog):
    """Why the README insists on dsl.Else: the same true verdict in a named output, as validate's ``passed``; a lone
    If on it (its branch silently skipped by kfp.local 2.17: the channel ``verdict-passed`` is looked up as a
    pipeline input) and an If/Else (its If branch runs). An unnamed output (``-Output``) resolves either way. If a
    kfp release fixes the lone If, this fails and the README's paragraph can go."""
    from kfp import local

    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("SLIMOPS_TEST_MARKS", str(marks))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline(name="lone-if")
    def lone_if():
        gate = verdict()
        with dsl.If(gate.outputs["passed"] == True):  # noqa: E712
            mark(name="lone-if")

    @dsl.pipeline(name="if-else")
    def if_else():
        gate = verdict()
        with dsl.If(gate.outputs["passed"] == True):  # noqa: E712
            mark(name="if")
        with dsl.Else():
            mark(name="else")

    lone_if()  # ends in SUCCESS all the same, with only a warning
    assert "Could not resolve parent input: verdict-passed" in caplog.text
    if_else()
    assert sorted(path.name for path in marks.iterdir()) == ["if"]
