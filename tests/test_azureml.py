"""Azure ML adapter: command components generated from the step registry (golden YAML, loaded and validated
offline by azure-ai-ml), the example pipeline job (validated by the SDK, dumped to YAML and loaded back,
submitted through MLClient until the network refuses it), its gate, the commands it would run (the same step
calls as every runner), caching by side effects, the README snippet, and build-time recipe errors."""

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, example_pipeline

pytest.importorskip("azure.ai.ml", reason="azure-ai-ml (extra slimops[azure]) is not installed")

digits_pipeline = example_pipeline("azureml")  # pipelines/azureml/digits_pipeline.py

from azure.core.credentials import AccessToken, TokenCredential  # noqa: E402

from slimops.adapters.azureml import all_components, build_pipeline  # noqa: E402
from slimops.errors import BadInput  # noqa: E402
from slimops.plan import plan_recipe  # noqa: E402
from slimops.retry import inconclusive_flags  # noqa: E402
from slimops.steps import get_step, step_names  # noqa: E402

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
    assert list(validate["outputs"]) == ["model"]  # no verdict output: a failed gate fails the node (exit 3)
    assert validate["inputs"]["model"]["type"] == validate["inputs"]["baseline"]["type"] == "uri_folder"
    assert validate["inputs"]["rounds"] == {"type": "integer", "optional": True, "description": get_step(
        "validate").Config.model_fields["rounds"].description}
    assert "optional" not in validate["inputs"]["data"]  # required by the step's config
    assert validate["outputs"]["model"]["mode"] == "upload"
    assert "--on-gate-fail" not in validate["command"] and "--gate-output" not in validate["command"]
    assert validate["inputs"]["retry_inconclusive"] == {"type": "integer", "optional": True,
                                                        "description": "reruns of an inconclusive gate (default 0)"}


def test_steps_with_side_effects_are_not_deterministic_and_transforms_are():
    """Azure ML reuses a deterministic node's earlier outputs: a reused register, promote, deploy or publish
    would skip the registration or rollout silently. Checked on the loaded components, as the SDK sees them."""
    from azure.ai.ml import load_component

    for name in ("source", "publish", *step_names()):
        component = load_component(source=digits_pipeline.COMPONENTS / f"slimops_{name}.yaml")
        side_effects = name == "publish" or (name != "source" and get_step(name).side_effects)
        assert component.is_deterministic is (not side_effects), name
    assert {n for n in step_names() if get_step(n).side_effects} == {"register", "promote", "deploy"}


# ----------------------------------------------------------------------------- the pipeline


def test_example_pipeline_gates_publication_on_the_validate_node(example_rest):
    """No control-flow node: publish takes validate's output, so it runs only when validate succeeded, and a
    failed gate fails validate (exit 3)."""
    jobs = example_rest["jobs"]
    assert [n for n, j in jobs.items()] == ["source", "train", "export", "quantize", "validate", "publish"]
    assert {j["type"] for j in jobs.values()} == {"command"}
    assert jobs["validate"]["inputs"]["baseline"]["value"] == "${{parent.jobs.train.outputs.model}}"
    assert jobs["publish"]["inputs"]["model"]["value"] == "${{parent.jobs.validate.outputs.model}}"
    assert jobs["publish"]["outputs"]["model"] == {"job_output_type": "custom_model", "name": "digits-cnn"}
    assert example_rest["settings"]["default_compute"] == digits_pipeline.COMPUTE


def test_example_job_passes_the_sdk_validation_and_round_trips_through_yaml(tmp_path):
    """What `az ml job create --file` takes: the job validates with no errors, dumps to YAML, and load_job reads
    the same job back (which validates too)."""
    from azure.ai.ml import load_job

    job = digits_pipeline.build()
    result = job._validate()
    assert result.passed and not result.error_messages, result
    path = tmp_path / "job.yaml"
    job.dump(path)
    dumped = yaml.safe_load(path.read_text())
    assert dumped["type"] == "pipeline" and set(dumped["jobs"]) == {
        "source", "train", "export", "quantize", "validate", "publish"}
    loaded = load_job(source=path)
    assert loaded._validate().passed
    rest, back = (j._to_rest_object().as_dict()["properties"] for j in (job, loaded))
    assert set(back["jobs"]) == set(rest["jobs"])
    for name, node in rest["jobs"].items():
        # The same command gets the same step config: the dump writes a boolean False as 0, which the step's
        # config reads as False again.
        assert step_configs(back["jobs"][name]) == step_configs(node), name
        assert {k: v for k, v in back["jobs"][name]["inputs"].items() if "${{" in str(v["value"])} == {
            k: v for k, v in node["inputs"].items() if "${{" in str(v["value"])}, name  # the same wiring
        assert back["jobs"][name].get("outputs") == node.get("outputs"), name
    assert back["settings"]["default_compute"] == digits_pipeline.COMPUTE
    # The dumped components keep their caching word.
    assert dumped["jobs"]["publish"]["component"]["is_deterministic"] is False
    assert dumped["jobs"]["quantize"]["component"]["is_deterministic"] is True


def step_configs(node: dict) -> dict:
    """The config a node's `slimops step` command receives, validated by the step's own config model."""
    argv = node["componentId"].command.split()
    if argv[:2] != ["slimops", "step"]:
        return {k: v["value"] for k, v in node["inputs"].items()}
    config = get_step(argv[2]).Config
    values = {k: yaml.safe_load(str(v["value"])) for k, v in node["inputs"].items() if k in config.model_fields}
    return config.model_validate(values).model_dump()


class FixedToken(TokenCredential):
    """A credential that hands out a fixed token: enough for the SDK to build and send requests."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken("slimops-test-token", 4102444800)  # 2100-01-01


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connecting to it is refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("compute", ["serverless", digits_pipeline.COMPUTE])
def test_create_or_update_reaches_the_network(compute, monkeypatch):
    """MLClient pointed at a loopback endpoint that refuses connections: submission gets through the SDK's
    validation and fails only on the connection (a named cluster is looked up first, serverless compute is not)."""
    from azure.ai.ml import MLClient
    from azure.core.exceptions import ServiceRequestError

    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")  # MLClient records its cloud in the environment
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # straight to the refusing port, not through the offline proxy
    port = refused_port()
    endpoint = f"https://127.0.0.1:{port}/"
    cloud = f"SlimopsLoopback{port}"
    client = MLClient(FixedToken(), "00000000-0000-0000-0000-000000000000", "slimops-rg", "slimops-ws",
                      cloud=cloud, enable_telemetry=False, show_progress=False,
                      cloud_metadata={"azure_portal": endpoint, "resource_manager": endpoint,
                                      "active_directory": endpoint, "aml_resource_id": endpoint,
                                      "storage_endpoint": "core.windows.net",
                                      "registry_discovery_endpoint": endpoint})
    job = digits_pipeline.build(compute=compute)
    with pytest.raises(ServiceRequestError, match=rf"port={port}\): Failed to establish a new connection: "
                                                  r"\[Errno 111\] Connection refused"):
        client.jobs.create_or_update(job, experiment_name="slimops")


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
    paths = {"IN": "/mnt/in/model", "BASE": "/mnt/in/baseline", "OUT": "/mnt/out/model"}
    for call in plan.chain:
        node = jobs[call.id]
        given = {k: v["value"] for k, v in node["inputs"].items()}
        given["model"] = paths["IN"]
        given.pop("baseline", None)
        if call.baseline:
            given["baseline"] = paths["BASE"]
        ran = render(specs[call.step]["command"], given, {"model": paths["OUT"]})
        expected = call.argv(paths["IN"], paths["OUT"], paths["BASE"] if call.baseline else None,
                             threads=plan.threads)  # no gate output: a failed gate fails the node
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
    the validate node passes the recipe's retry_inconclusive to `slimops step --retry-inconclusive ...`; a failed
    verdict fails the node at once (exit 3), and so does an inconclusive gate that stays so (exit 4)."""
    validate = example_rest["jobs"]["validate"]["inputs"]
    assert {k: validate[k]["value"] for k in ("retry_inconclusive", "retry_backoff", "retry_factor")} == {
        "retry_inconclusive": "3", "retry_backoff": "60.0", "retry_factor": "2.0"}
    spec = all_components(IMAGE)["validate"]
    ran = render(spec["command"], {"model": "/in", "baseline": "/base", "data": "{}", "retry_inconclusive": 3,
                                   "retry_backoff": 60.0, "retry_factor": 2.0}, {"model": "/out"})
    args = received(settings(ran)[0])
    assert (args["retry_inconclusive"], args["retry_backoff"], args["retry_factor"]) == (3, 60.0, 2.0)
    assert args["on_gate_fail"] == "exit"
    for step in ("export", "quantize", "train"):  # only a gate can be inconclusive
        assert "retry_inconclusive" not in example_rest["jobs"][step]["inputs"]
    # retries: 0 - the node leaves the inputs out and the gate runs once.
    recipe = write_recipe(tmp_path / "r.yaml", retry_inconclusive={"retries": 0})
    jobs = build_pipeline(recipe, image=IMAGE, recipe_promotion=False)._to_rest_object().as_dict()[
        "properties"]["jobs"]
    assert "retry_inconclusive" not in jobs["validate"]["inputs"]
    ran = render(spec["command"], {"model": "/in", "baseline": "/base", "data": "{}"}, {"model": "/out"})
    assert "--retry-inconclusive" not in ran


@pytest.mark.slow
def test_a_failed_gate_fails_the_validate_node_so_nothing_after_it_runs(tmp_path, digits_trained, digits_onnx):
    """The validate component's own command, rendered as Azure ML renders it and run on real digits models: a
    gate that cannot pass exits 3 (the node fails, so publish and the promotion nodes never start), and a gate
    that passes exits 0 with the validated model in the output."""
    import subprocess

    from conftest import cli_env

    spec = all_components(IMAGE)["validate"]
    quick = {"rounds": 1, "latency_runs": 5, "throughput_samples": 64, "measure_memory": False}
    # Gates on size and accuracy: a loaded machine cannot make them inconclusive (speed could).
    failing = {"max_metric_drop": 100.0, "min_speedup": None, "max_size_ratio": 0.01}
    passing = {"max_metric_drop": 100.0, "min_speedup": None, "max_size_ratio": 2.0}
    for gate, exit_code in ((failing, 3), (passing, 0)):
        out = tmp_path / f"out-{exit_code}" / "model"
        inputs = {"model": str(digits_onnx), "baseline": str(digits_trained), "data": json.dumps(
            {"format": "digits", "split": "test"}), "gate": json.dumps(gate), **quick}
        argv = render(spec["command"], inputs, {"model": str(out)})
        done = subprocess.run([sys.executable, "-m", *argv], env=cli_env(), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == exit_code, done.stderr[-3000:]
        if exit_code:
            assert "gate failed" in done.stderr and "size" in done.stderr
        else:
            assert json.loads((out / "gate_report.json").read_text())["passed"] is True


def test_recipe_promotion_nodes_follow_the_gate_when_their_registry_is_shared(tmp_path):
    steps = yaml.safe_load(EXAMPLE.read_text())["steps"]
    uri = "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/workspaces/w"
    recipe = write_recipe(tmp_path / "r.yaml", steps=[
        *steps[:4], {"step": "register", "config": {"name": "digits-cnn", "tracking_uri": uri}},
        {"step": "promote", "config": {"tracking_uri": uri}}])
    job = build_pipeline(recipe, image=IMAGE, model_name="digits-cnn")
    assert job._validate().passed
    jobs = job._to_rest_object().as_dict()["properties"]["jobs"]
    assert list(jobs) == ["source", "train", "export", "quantize", "validate", "publish", "register", "promote"]
    assert jobs["publish"]["inputs"]["model"]["value"] == "${{parent.jobs.validate.outputs.model}}"
    assert jobs["register"]["inputs"]["model"]["value"] == "${{parent.jobs.validate.outputs.model}}"
    assert jobs["promote"]["inputs"]["model"]["value"] == "${{parent.jobs.register.outputs.model}}"
    deterministic = {name: node._component.is_deterministic for name, node in job.jobs.items()}
    assert deterministic == {"source": True, "train": True, "export": True, "quantize": True, "validate": True,
                             "publish": False, "register": False, "promote": False}


def test_a_gate_against_the_champion_is_never_reused(tmp_path):
    """The champion can move between two runs with the same inputs: that one validate node gets an uncached copy
    of the component, and the shared component stays deterministic for every other gate."""
    steps = yaml.safe_load(EXAMPLE.read_text())["steps"]
    uri = "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g/workspaces/w"
    recipe = write_recipe(tmp_path / "r.yaml", steps=[
        *steps[:3], {**steps[3], "baseline": "champion"},
        {"step": "register", "config": {"name": "digits-cnn", "tracking_uri": uri}}])
    job = build_pipeline(recipe, image=IMAGE, model_name="digits-cnn")
    assert job._validate().passed
    assert job.jobs["validate"]._component.is_deterministic is False
    assert job.jobs["quantize"]._component.is_deterministic is True
    assert build_pipeline(EXAMPLE, image=IMAGE, recipe_promotion=False).jobs["validate"]._component.is_deterministic


def readme_block(heading: str) -> str:
    """The first ```python block under a README heading, as a user would copy it."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading + "\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_snippet_nests_the_steps_into_an_existing_pipeline(tmp_path, monkeypatch):
    """The README's Azure ML snippet, run as copied: an existing pipeline's training node feeds the slimops nodes;
    the job validates and dumps to the YAML `az ml job create --file` takes."""
    from azure.ai.ml import Output, command, load_job

    write_recipe(tmp_path / "compress.yaml", steps=[
        {"step": "export"}, {"step": "quantize", "config": {"mode": "dynamic"}},
        {"step": "validate", "config": {"data": "test", "gate": {"max_metric_drop": 1.0}}}])
    monkeypatch.chdir(tmp_path)
    # What the user already has: a training component writing a model folder.
    my_train_component = command(name="my_train", command="python train.py --out ${{outputs.model}}",
                                 environment="azureml:my-training-env:1", outputs={"model": Output(type="uri_folder")})
    user = {"my_train_component": my_train_component}
    exec(compile(readme_block("### Azure ML (azure-ai-ml)"), "README.md", "exec"), user)

    job = user["job"]
    jobs = job._to_rest_object().as_dict()["properties"]["jobs"]
    assert "source" not in jobs
    assert jobs["export"]["inputs"]["model"]["value"] == "${{parent.jobs.trained.outputs.model}}"
    assert jobs["validate"]["inputs"]["baseline"]["value"] == "${{parent.jobs.trained.outputs.model}}"
    assert jobs["publish"]["inputs"]["model"]["value"] == "${{parent.jobs.validate.outputs.model}}"
    assert load_job(source=tmp_path / "job.yaml")._validate().passed


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
