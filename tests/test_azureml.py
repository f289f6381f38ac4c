"""Azure ML adapter: command components generated from the step registry (golden YAML, loaded and validated
offline by azure-ai-ml), the example pipeline's REST form with its if_else gate, the commands it would run
(the same step calls as every runner), nesting into an existing pipeline, and build-time recipe errors."""

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, example_pipeline

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml (extra slimops[azure]) is not installed")
pytest.importorskip("mldesigner", reason="mldesigner (extra slimops[azure]) is not installed")

digits_pipeline = example_pipeline("azureml")  # pipelines/azureml/digits_pipeline.py

from slimops.adapters.azureml import add_steps, all_components, build_pipeline, load_components  # noqa: E402
from slimops.errors import BadInput  # noqa: E402
from slimops.plan import plan_recipe  # noqa: E402
from slimops.retry import inconclusive_flags  # noqa: E402
from slimops.steps import step_names  # noqa: E402

EXAMPLE = REPO / "examples" / "digits-pipeline.yaml"
IMAGE = digits_pipeline.IMAGE


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any HTTP call fails at once: nothing here may need a workspace."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.fixture(scope="module")
def example_rest() -> dict:
    return digits_pipeline.build()._to_rest_object().as_dict()["properties"]


def write_recipe(path: Path, steps: list[dict] | None = None, **top) -> Path:
    recipe = yaml.safe_load(EXAMPLE.read_text())
    if steps is not None:
        recipe["steps"] = steps
    recipe.update(top)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- components


def test_generated_components_match_golden_files():
    import os

    golden = digits_pipeline.COMPONENTS
    if os.environ.get("SLIMOPS_UPDATE_GOLDEN") == "1":
        for stale in golden.glob("*.yaml"):
            stale.unlink()
        digits_pipeline.write_components()
    specs = all_components(IMAGE)
    assert sorted(p.name for p in golden.glob("*.yaml")) == sorted(f"slimops_{n}.yaml" for n in specs), \
        "component files differ from the step registry; regenerate with SLIMOPS_UPDATE_GOLDEN=1"
    assert set(specs) == {"source", "publish", *step_names()}
    for name, spec in specs.items():
        assert (golden / f"slimops_{name}.yaml").read_text() == yaml.safe_dump(spec, sort_keys=False, width=1000), (
            f"slimops_{name}.yaml changed; if intended, regenerate with SLIMOPS_UPDATE_GOLDEN=1 "
            "pytest tests/test_azureml.py")


def test_components_load_and_validate_offline():
    from azure.ai.ml import load_component

    for path in sorted(digits_pipeline.COMPONENTS.glob("*.yaml")):
        component = load_component(source=path)
        result = component._validate()
        assert result.passed, f"{path.name}: {result}"
        assert component.environment.image == IMAGE
        assert component.type == "command" and component.code is None  # nothing uploaded: the image runs it
    validate = yaml.safe_load((digits_pipeline.COMPONENTS / "slimops_validate.yaml").read_text())
    assert validate["outputs"]["passed"] == {"type": "boolean", "is_control": True, "description": "the gate verdict"}
    assert validate["inputs"]["model"]["type"] == validate["inputs"]["baseline"]["type"] == "uri_folder"
    assert validate["inputs"]["rounds"] == {"type": "integer", "optional": True,
                                            "description": validate["inputs"]["rounds"]["description"]}
    assert validate["inputs"]["rounds"]["description"].startswith("short alternating timing rounds")
    assert "optional" not in validate["inputs"]["data"]  # required by the step's config
    assert validate["outputs"]["model"]["mode"] == "upload"
    assert "--on-gate-fail continue --gate-output ${{outputs.passed}}" in validate["command"]
    assert validate["inputs"]["retry_inconclusive"] == {"type": "integer", "optional": True,
                                                        "description": "reruns of an inconclusive gate (default 0)"}
    # azure-ai-ml 1.35 drops is_control on load (its schema has no such field); a primitive output is what the
    # if_else node checks, and that survives.
    loaded = load_component(source=digits_pipeline.COMPONENTS / "slimops_validate.yaml")
    assert loaded.outputs["passed"].type == "boolean"


# ----------------------------------------------------------------------------- the pipeline


def test_example_pipeline_rest_form_gates_publication_on_an_if_else_node(example_rest):
    jobs = example_rest["jobs"]
    assert [n for n, j in jobs.items() if j["type"] == "command"] == [
        "source", "train", "export", "quantize", "validate", "publish"]
    condition = [j for j in jobs.values() if j["type"] == "if_else"]
    assert condition == [{"type": "if_else", "condition": "${{parent.jobs.validate.outputs.passed}}",
                          "true_block": "${{parent.jobs.publish}}", "_source": "DSL"}]
    assert jobs["validate"]["inputs"]["baseline"]["value"] == "${{parent.jobs.train.outputs.model}}"
    assert jobs["publish"]["inputs"]["model"]["value"] == "${{parent.jobs.validate.outputs.model}}"
    assert jobs["publish"]["outputs"]["model"] == {"job_output_type": "custom_model", "name": "digits-cnn"}
    assert example_rest["settings"]["default_compute"] == digits_pipeline.COMPUTE


def test_pipeline_with_if_else_fails_client_side_validation_but_not_its_rest_form():
    """ENVIRONMENT.md: azure-ai-ml validates a pipeline with an if_else node against a schema that does not know
    the node type. If this starts passing, the SDK fixed it: assert `_validate().passed` instead."""
    from marshmallow.exceptions import ValidationError

    job = digits_pipeline.build()
    with pytest.raises(ValidationError, match="if_else"):
        job._validate()
    assert job._to_rest_object().as_dict()["properties"]["jobs"]["validate"]["type"] == "command"


def render(command: str, inputs: dict, outputs: dict) -> list[str]:
    """What Azure ML runs: optional `$[[...]]` blocks kept only when their inputs are set, bindings substituted."""
    def block(match):
        names = re.findall(r"\$\{\{inputs\.(\w+)\}\}", match[1])
        return match[1] if all(n in inputs for n in names) else ""

    command = re.sub(r"\$\[\[(.*?)\]\]", block, command)
    command = re.sub(r"\$\{\{inputs\.(\w+)\}\}", lambda m: str(inputs[m[1]]), command)
    command = re.sub(r"\$\{\{outputs\.(\w+)\}\}", lambda m: outputs[m[1]], command)
    return shlex.split(command)


def settings(argv: list[str]) -> tuple[list[str], dict]:
    """argv without its --set pairs, and the pairs as the CLI reads them (YAML values)."""
    rest, sets = [], {}
    for i, arg in enumerate(argv):
        if arg == "--set":
            continue
        if i and argv[i - 1] == "--set":
            key, _, value = arg.partition("=")
            sets[key] = yaml.safe_load(value)
        else:
            rest.append(arg)
    return rest, sets


def test_node_commands_are_the_step_calls_every_runner_issues(example_rest):
    plan = plan_recipe(EXAMPLE)
    specs = all_components(IMAGE)
    jobs = example_rest["jobs"]
    paths = {"IN": "/mnt/in/model", "BASE": "/mnt/in/baseline", "OUT": "/mnt/out/model", "GATE": "/mnt/out/passed"}
    for call in plan.chain:
        node = jobs[call.id]
        given = {k: v["value"] for k, v in node["inputs"].items()}
        given["model"] = paths["IN"]
        given.pop("baseline", None)
        if call.baseline:
            given["baseline"] = paths["BASE"]
        ran = render(specs[call.step]["command"], given, {"model": paths["OUT"], "passed": paths["GATE"]})
        expected = call.argv(paths["IN"], paths["OUT"], paths["BASE"] if call.baseline else None,
                             threads=plan.threads, gate_output=paths["GATE"] if call.gated else None)
        expected += inconclusive_flags(call)  # the gate retries an inconclusive verdict in its own process
        ran_rest, ran_sets = settings(ran)
        expected_rest, expected_sets = settings(expected)
        assert received(ran_rest) == received(expected_rest), call.id
        assert ran_sets == expected_sets == call.config, call.id


def received(argv: list[str]) -> dict:
    """What `slimops step` receives from a command line (numbers rendered as 60.0 or 60 read the same)."""
    from slimops.cli import build_parser

    return {k: v for k, v in vars(build_parser().parse_args(argv[1:])).items() if k != "func"}


def test_the_gate_node_retries_an_inconclusive_verdict_in_its_own_process(example_rest, tmp_path):
    """Azure ML command nodes have no retry settings (azure-ai-ml's RetrySettings is for parallel jobs only), so
    the validate node passes the recipe's retry_inconclusive to `slimops step --retry-inconclusive ...`; a
    verdict still branches (--on-gate-fail continue), and only an inconclusive gate that stays so fails the node."""
    validate = example_rest["jobs"]["validate"]["inputs"]
    assert {k: validate[k]["value"] for k in ("retry_inconclusive", "retry_backoff", "retry_factor")} == {
        "retry_inconclusive": "3", "retry_backoff": "60.0", "retry_factor": "2.0"}
    spec = all_components(IMAGE)["validate"]
    ran = render(spec["command"], {"model": "/in", "baseline": "/base", "data": "{}", "retry_inconclusive": 3,
                                   "retry_backoff": 60.0, "retry_factor": 2.0}, {"model": "/out", "passed": "/p"})
    args = received(settings(ran)[0])
    assert (args["retry_inconclusive"], args["retry_backoff"], args["retry_factor"]) == (3, 60.0, 2.0)
    assert args["on_gate_fail"] == "continue"
    for step in ("export", "quantize", "train"):  # only a gate can be inconclusive
        assert "retry_inconclusive" not in example_rest["jobs"][step]["inputs"]
    # retries: 0 - the node leaves the inputs out and the gate runs once.
    recipe = write_recipe(tmp_path / "r.yaml", retry_inconclusive={"retries": 0})
    jobs = build_pipeline(recipe, image=IMAGE, recipe_promotion=False)._to_rest_object().as_dict()[
        "properties"]["jobs"]
    assert "retry_inconclusive" not in jobs["validate"]["inputs"]
    ran = render(spec["command"], {"model": "/in", "baseline": "/base", "data": "{}"}, {"model": "/out", "passed": "/p"})
    assert "--retry-inconclusive" not in ran


def test_recipe_promotion_steps_join_the_true_block_when_their_registry_is_shared(tmp_path):
    steps = yaml.safe_load(EXAMPLE.read_text())["steps"]
    uri = "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/workspaces/w"
    recipe = write_recipe(tmp_path / "r.yaml", steps=[
        *steps[:4], {"step": "register", "config": {"name": "digits-cnn", "tracking_uri": uri}},
        {"step": "promote", "config": {"tracking_uri": uri}}])
    jobs = build_pipeline(recipe, image=IMAGE, model_name="digits-cnn")._to_rest_object().as_dict()[
        "properties"]["jobs"]
    condition = next(j for j in jobs.values() if j["type"] == "if_else")
    assert condition["true_block"] == ["${{parent.jobs.publish}}", "${{parent.jobs.register}}",
                                       "${{parent.jobs.promote}}"]
    assert jobs["promote"]["inputs"]["model"]["value"] == "${{parent.jobs.register.outputs.model}}"


def test_steps_nest_into_an_existing_pipeline(tmp_path):
    """The README snippet: an existing pipeline's training node feeds the slimops nodes."""
    from azure.ai.ml import command, Output
    from azure.ai.ml.dsl import pipeline

    recipe = write_recipe(tmp_path / "r.yaml", steps=[
        {"step": "export"}, {"step": "quantize", "config": {"mode": "dynamic"}},
        {"step": "validate", "config": {"data": "test", "gate": {"max_metric_drop": 1.0}}}])
    plan = plan_recipe(recipe)
    slimops = load_components(IMAGE)
    train = command(name="my_train", command="python train.py --out ${{outputs.model}}",
                    environment="azureml:my-training-env:1", outputs={"model": Output(type="uri_folder")})

    @pipeline(default_compute="cpu-cluster")
    def train_and_compress():
        trained = train()
        add_steps(plan, slimops, model=trained.outputs.model, model_name="digits-cnn")

    jobs = train_and_compress()._to_rest_object().as_dict()["properties"]["jobs"]
    assert "source" not in jobs
    assert jobs["export"]["inputs"]["model"]["value"] == "${{parent.jobs.trained.outputs.model}}"
    assert jobs["validate"]["inputs"]["baseline"]["value"] == "${{parent.jobs.trained.outputs.model}}"
    assert next(j for j in jobs.values() if j["type"] == "if_else")["true_block"] == "${{parent.jobs.publish}}"


def test_recipe_errors_fail_at_build_time(tmp_path, monkeypatch):
    import slimops.plan

    with pytest.raises(BadInput, match="unknown step 'shrink'"):
        build_pipeline(write_recipe(tmp_path / "u.yaml", steps=[{"step": "shrink"}]), image=IMAGE)
    with pytest.raises(BadInput, match="no step produces one"):
        build_pipeline(write_recipe(tmp_path / "n.yaml", steps=[{"step": "export"}]), image=IMAGE)
    with pytest.raises(BadInput, match="read data files; give recipe_dir"):
        build_pipeline(REPO / "examples" / "minilm-sts.yaml", image=IMAGE)
    with pytest.raises(BadInput, match="register, promote keep their model registry inside the job"):
        build_pipeline(EXAMPLE, image=IMAGE)
    monkeypatch.delenv("SLIMOPS_IMAGE", raising=False)
    monkeypatch.setattr(slimops.plan, "IMAGE_LOCK", tmp_path / "no-image.json")
    with pytest.raises(BadInput, match="no component image"):
        build_pipeline(EXAMPLE, recipe_promotion=False)
