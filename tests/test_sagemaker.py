"""SageMaker Pipelines adapter: the definition built offline (golden), build-time recipe errors, nesting into an
existing pipeline, and the processing contract proven by running the definition's own container commands
locally under SageMaker's paths (a temporary /opt/ml/processing) on a real model."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli_env, example_pipeline, require_timing_spread

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # `import sagemaker.mlops` needs a region
pytest.importorskip("sagemaker.mlops", reason="sagemaker>=3 (extra slimops[sagemaker]) is not installed")

digits_pipeline = example_pipeline("sagemaker")  # pipelines/sagemaker/digits_pipeline.py

from slimops.adapters.sagemaker import PROCESSING_ROOT_ENV, build_pipeline, pipeline_session  # noqa: E402
from slimops.errors import BadInput  # noqa: E402
from slimops.plan import plan_recipe  # noqa: E402
from slimops.retry import inconclusive_flags  # noqa: E402

EXAMPLE = REPO / "examples" / "digits-pipeline.yaml"
SETTINGS = dict(role=digits_pipeline.ROLE, bucket=digits_pipeline.BUCKET, region=digits_pipeline.REGION,
                image=digits_pipeline.IMAGE)


def offline(monkeypatch):
    """Any AWS or HTTP call fails at once: building a definition must not need the network or credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    # With no credentials configured, botocore would ask the EC2 metadata service for some (a network call).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    offline(monkeypatch)


@pytest.fixture(scope="module")
def example_text():
    """The example's definition as checked in (built once: each ProcessingStep costs the SDK seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        offline(patch)
        return digits_pipeline.definition(digits_pipeline.build())


def definition(pipeline) -> dict:
    return json.loads(pipeline.definition())


def steps_by_name(steps: list[dict]) -> dict:
    found = {}
    for step in steps:
        found[step["Name"]] = step
        if step["Type"] == "Condition":
            found.update(steps_by_name(step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"]))
    return found


def write_recipe(path: Path, **changes) -> Path:
    recipe = yaml.safe_load(EXAMPLE.read_text())
    for step in recipe["steps"]:
        if step["step"] == "validate" and "gate" in changes:
            step["config"]["gate"] = changes["gate"]
        if step["step"] == "validate" and "timing" in changes:
            step["config"].update(changes["timing"])
    if "steps" in changes:
        recipe["steps"] = changes["steps"]
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- the definition


def test_example_definition_matches_golden_file(example_text):
    golden = REPO / "pipelines" / "sagemaker" / "digits-pipeline.definition.json"
    text = example_text
    if os.environ.get("SLIMOPS_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.is_file(), "run with SLIMOPS_UPDATE_GOLDEN=1 to create the golden definition"
    assert text == golden.read_text(), ("the SageMaker definition changed; if intended, regenerate it with "
                                        "SLIMOPS_UPDATE_GOLDEN=1 pytest tests/test_sagemaker.py")


def test_processing_steps_run_the_plan_commands_and_branch_on_the_gate_report(example_text):
    plan = plan_recipe(EXAMPLE)
    spec = json.loads(example_text)
    steps = steps_by_name(spec["Steps"])
    root = "/opt/ml/processing"
    # Every chain step's entrypoint is the plan's command with SageMaker's container paths; nothing uploaded.
    for call in plan.chain:
        app = steps[f"slimops-{call.id}"]["Arguments"]["AppSpecification"]
        expected = call.argv(f"{root}/input/model", f"{root}/output/model/model",
                             baseline=f"{root}/input/baseline" if call.baseline else None,
                             threads=plan.threads,
                             gate_output=f"{root}/output/model/gate_passed" if call.gated else None)
        expected += inconclusive_flags(call)  # the gate retries an inconclusive verdict in its own job
        assert app == {"ImageUri": digits_pipeline.IMAGE, "ContainerEntrypoint": expected}
        assert "ContainerArguments" not in app and "code" not in json.dumps(steps[f"slimops-{call.id}"]).lower()
    validate = steps["slimops-validate"]
    assert validate["PropertyFiles"] == [{"PropertyFileName": "GateReport", "OutputName": "model",
                                          "FilePath": "model/gate_report.json"}]
    entry = validate["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert entry[entry.index("--on-gate-fail") + 1] == "continue"  # the job succeeds, the pipeline branches
    inputs = {i["InputName"]: i["S3Input"] for i in validate["Arguments"]["ProcessingInputs"]}
    assert inputs["baseline"]["S3Uri"]["Std:Join"]["Values"][0] == {
        "Get": "Steps.slimops-train.ProcessingOutputConfig.Outputs['model'].S3Output.S3Uri"}
    gate = steps["slimops-gate"]["Arguments"]
    assert gate["Conditions"] == [{"Type": "Equals", "RightValue": True, "LeftValue": {"Std:JsonGet": {
        "PropertyFile": {"Get": "Steps.slimops-validate.PropertyFiles.GateReport"}, "Path": "passed"}}}]
    assert [s["Name"] for s in gate["IfSteps"]] == ["slimops-register-model"]
    register = gate["IfSteps"][0]["Arguments"]
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert register["ModelPackageGroupName"] == {"Get": "Parameters.ModelPackageGroupName"}
    assert [s["Type"] for s in gate["ElseSteps"]] == ["Fail"]
    params = {p["Name"]: p.get("DefaultValue") for p in spec["Parameters"]}
    assert params["ModelApprovalStatus"] == "PendingManualApproval"
    assert params["ArtifactRoot"] == f"s3://{digits_pipeline.BUCKET}/slimops"


def test_recipe_promotion_steps_run_in_the_passing_branch_when_their_registry_is_shared(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", steps=[
        *yaml.safe_load(EXAMPLE.read_text())["steps"][:4],
        {"step": "register", "config": {"name": "digits-cnn", "tracking_uri": "arn:aws:sagemaker:us-east-1:"
                                        "111122223333:mlflow-tracking-server/slimops"}},
        {"step": "promote", "config": {"tracking_uri": "arn:aws:sagemaker:us-east-1:111122223333:"
                                                       "mlflow-tracking-server/slimops"}}])
    gate = steps_by_name(definition(build_pipeline(recipe, **SETTINGS))["Steps"])["slimops-gate"]["Arguments"]
    assert [s["Name"] for s in gate["IfSteps"]] == ["slimops-register-model", "slimops-register", "slimops-promote"]
    promote = gate["IfSteps"][2]["Arguments"]
    assert promote["AppSpecification"]["ContainerEntrypoint"][:3] == ["slimops", "step", "promote"]
    assert promote["ProcessingInputs"][0]["S3Input"]["S3Uri"]["Std:Join"]["Values"][0]["Get"].startswith(
        "Steps.slimops-register.")


def infra_policies(retries: int, seconds: int) -> list[dict]:
    """What a step without side effects retries: a faulty or throttled service, a job failing inside SageMaker,
    no capacity, a resource limit."""
    timing = {"BackoffRate": 2.0, "IntervalSeconds": seconds, "MaxAttempts": retries}
    return [{**timing, "ExceptionType": ["Step.SERVICE_FAULT", "Step.THROTTLING"]},
            {**timing, "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR",
                                         "SageMaker.RESOURCE_LIMIT"]}]


# What a step with side effects retries: only failures before its container starts.
START_POLICIES = [{"BackoffRate": 2.0, "IntervalSeconds": 60, "MaxAttempts": 2, "ExceptionType": ["Step.THROTTLING"]},
                  {"BackoffRate": 2.0, "IntervalSeconds": 60, "MaxAttempts": 2,
                   "ExceptionType": ["SageMaker.CAPACITY_ERROR", "SageMaker.RESOURCE_LIMIT"]}]
MLFLOW_ARN = "arn:aws:sagemaker:us-east-1:111122223333:mlflow-tracking-server/slimops"


def promotion_recipe(path: Path, **top) -> Path:
    """The example with its register/promote on a shared registry, so they run as jobs in the passing branch."""
    recipe = yaml.safe_load(EXAMPLE.read_text())
    recipe["steps"] = [*recipe["steps"][:4], {"step": "register", "config": {"name": "d", "tracking_uri": MLFLOW_ARN}},
                       {"step": "promote", "config": {"tracking_uri": MLFLOW_ARN}}]
    recipe.update(top)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_processing_steps_carry_retry_policies_by_role_and_the_gate_retries_inconclusive_in_its_container(
        example_text, tmp_path):
    """SageMaker's retry policies match exception types (a faulty or throttled service, a job failing inside
    SageMaker, no capacity), never a container's exit code: they cover infrastructure, and the gate retries an
    inconclusive verdict (exit 4) itself, as the recipe's retry_inconclusive says. Steps with side effects retry
    only what fails before their container starts: a blind rerun could register or promote twice."""
    from slimops.cli import build_parser

    steps = steps_by_name(json.loads(example_text)["Steps"])
    for name in ("slimops-source", "slimops-train", "slimops-export", "slimops-quantize"):
        assert steps[name]["RetryPolicies"] == infra_policies(2, 30), name
    assert steps["slimops-validate"]["RetryPolicies"] == infra_policies(3, 60)
    # Registering a model package, the condition and the fail step: no retry policy of ours.
    for name in ("slimops-register-model", "slimops-gate", "slimops-gate-failed"):
        assert "RetryPolicies" not in steps[name], name
    entry = steps["slimops-validate"]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    args = build_parser().parse_args(entry[1:])  # what `slimops step` receives in the container
    assert (args.retry_inconclusive, args.retry_backoff, args.retry_factor) == (3, 60.0, 2.0)
    assert args.on_gate_fail == "continue"
    for name in ("slimops-train", "slimops-export", "slimops-quantize"):
        assert "--retry-inconclusive" not in steps[name]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]

    # The recipe's own retry_inconclusive; and the promotion steps as jobs (side effects: start failures only).
    path = promotion_recipe(tmp_path / "r.yaml", retry_inconclusive={"retries": 5, "backoff_s": 10, "factor": 3})
    steps = steps_by_name(definition(build_pipeline(path, **SETTINGS))["Steps"])
    validate = steps["slimops-validate"]
    assert {p["MaxAttempts"] for p in validate["RetryPolicies"]} == {5}
    assert {(p["IntervalSeconds"], p["BackoffRate"]) for p in validate["RetryPolicies"]} == {(10, 3.0)}
    entry = validate["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert entry[entry.index("--retry-inconclusive"):] == ["--retry-inconclusive", "5", "--retry-backoff", "10",
                                                         "--retry-factor", "3"]
    for name in ("slimops-register", "slimops-promote"):
        assert steps[name]["RetryPolicies"] == START_POLICIES, name
    assert "RetryPolicies" not in steps["slimops-register-model"]
    # Every ProcessingStep carries RetryPolicies.
    assert all("RetryPolicies" in s for s in steps.values() if s["Type"] == "Processing")
    # retries: 0 - an inconclusive gate fails the execution at once; a lost instance is still retried.
    recipe = yaml.safe_load(path.read_text())
    recipe["retry_inconclusive"] = {"retries": 0}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    validate = steps_by_name(definition(build_pipeline(path, **SETTINGS, recipe_promotion=False))["Steps"])[
        "slimops-validate"]
    assert validate["RetryPolicies"] == infra_policies(2, 30)
    assert "--retry-inconclusive" not in validate["Arguments"]["AppSpecification"]["ContainerEntrypoint"]


def test_step_caching_when_turned_on_stays_off_for_side_effects_the_champion_gate_and_the_condition(
        example_text, tmp_path):
    """A cached register, promote or condition would skip the promotion silently; a cached gate against the
    champion would judge against yesterday's champion. Only the cacheable steps reuse earlier outputs."""
    assert "CacheConfig" not in example_text  # off unless asked for
    recipe = yaml.safe_load(promotion_recipe(tmp_path / "r.yaml").read_text())
    recipe["steps"][3]["baseline"] = "champion"  # validate against the registry's champion (register names it)
    (tmp_path / "champion.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    spec = definition(build_pipeline(tmp_path / "champion.yaml", **SETTINGS, cache_expire_after="P30D"))
    steps = steps_by_name(spec["Steps"])
    for name in ("slimops-source", "slimops-train", "slimops-export", "slimops-quantize"):
        assert steps[name]["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}, name
    for name in ("slimops-validate", "slimops-register", "slimops-promote"):
        assert steps[name]["CacheConfig"] == {"Enabled": False}, name
    for name in ("slimops-register-model", "slimops-gate", "slimops-gate-failed"):
        assert "CacheConfig" not in steps[name], name
    # A gate on a fixed baseline is cacheable like a transform.
    steps = steps_by_name(definition(build_pipeline(EXAMPLE, **SETTINGS, recipe_promotion=False,
                                                    cache_expire_after="PT12H"))["Steps"])
    assert steps["slimops-validate"]["CacheConfig"] == {"Enabled": True, "ExpireAfter": "PT12H"}
    assert "CacheConfig" not in steps["slimops-register-model"] and "CacheConfig" not in steps["slimops-gate"]
    with pytest.raises(BadInput, match="cache_expire_after '30 days' is not an ISO 8601 duration"):
        build_pipeline(EXAMPLE, **SETTINGS, recipe_promotion=False, cache_expire_after="30 days")


def test_the_model_package_registers_the_slimops_image_as_the_sagemaker_serving_container(example_text):
    """SageMaker hosting starts a model package's container as `docker run IMAGE serve` with the model data in
    /opt/ml/model. The image's entrypoint is `slimops`, so that is `slimops serve`, and SLIMOPS_SERVE_PLATFORM
    selects SageMaker's contract (/ping and /invocations on 8080); the model data is the validated directory."""
    from slimops.adapters.sagemaker.service_model import concrete, request_problems, service_model

    register = steps_by_name(json.loads(example_text)["Steps"])["slimops-register-model"]["Arguments"]
    [container] = register["InferenceSpecification"]["Containers"]
    assert container["Image"] == digits_pipeline.IMAGE  # the resolved slimops image, not a separate one
    assert container["Environment"]["SLIMOPS_SERVE_PLATFORM"] == "sagemaker"
    source = container["ModelDataSource"]["S3DataSource"]
    assert (source["S3DataType"], source["CompressionType"]) == ("S3Prefix", "None")  # files as validated
    assert source["S3Uri"] == {"Std:Join": {"On": "", "Values": [{"Std:Join": {"On": "/", "Values": [
        {"Get": "Steps.slimops-validate.ProcessingOutputConfig.Outputs['model'].S3Output.S3Uri"}, "model"]}}, "/"]}}
    containerfile = (REPO / "infra" / "container" / "Containerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["slimops"\]$', containerfile, re.M)
    from slimops.cli import build_parser

    assert build_parser().parse_args(["serve"]).func  # `slimops serve` with no arguments is a command
    # The container against botocore's ModelPackageContainerDefinition shape.
    shape = service_model().shape_for("ModelPackageContainerDefinition")
    assert request_problems(concrete(container, shape, {}), shape, "container") == []
    assert request_problems(concrete({**container, "Image": "two words"}, shape, {}), shape, "container") == [
        "container.Image: 'two words' does not match the pattern [\\S]+"]


def test_definition_passes_botocore_sagemaker_service_model(example_text):
    """CreatePipeline, every Processing step as CreateProcessingJob and the registration as CreateModelPackage,
    checked with botocore's ParamValidator and the limits the service enforces (lengths, enums, patterns)."""
    from slimops.adapters.sagemaker import check_definition, definition_problems

    settings = dict(pipeline_name="slimops-digits-pipeline", role_arn=digits_pipeline.ROLE)
    assert definition_problems(example_text, **settings) == []
    assert check_definition(example_text, **settings)["Version"] == "2020-12-01"
    # The same check finds what SageMaker would reject.
    spec = json.loads(example_text)
    steps = steps_by_name(spec["Steps"])
    steps["slimops-train"]["Arguments"]["AppSpecification"]["ContainerEntrypoint"].append("--set=" + "x" * 300)
    del steps["slimops-export"]["Arguments"]["RoleArn"]
    steps["slimops-quantize"]["Arguments"]["Environment"]["bad-name"] = "1"
    steps["slimops-register-model"]["Arguments"]["InferenceSpecification"]["Containers"][0]["Image"] = 7
    next(p for p in spec["Parameters"] if p["Name"] == "ProcessingInstanceType")["DefaultValue"] = "ml.huge"
    problems = definition_problems(json.dumps(spec), **settings)
    expected = ["slimops-train (CreateProcessingJob).AppSpecification.ContainerEntrypoint[",  # 256 at most
                "slimops-export (CreateProcessingJob): Missing required parameter in input: \"RoleArn\"",
                "slimops-quantize (CreateProcessingJob).Environment (key bad-name): 'bad-name' does not match",
                "slimops-register-model (CreateModelPackage): Invalid type for parameter "
                "InferenceSpecification.Containers[0].Image",
                "ProcessingResources.ClusterConfig.InstanceType: 'ml.huge' is not one of"]
    for text in expected:
        assert any(text in problem for problem in problems), (text, problems)
    with pytest.raises(BadInput, match=r"SageMaker would reject \d+ value\(s\)"):
        check_definition(json.dumps(spec), **settings)
    assert definition_problems(example_text, pipeline_name="slimops digits", role_arn="slimops")  # name, role


def test_the_definition_upserts_into_a_local_sagemaker_emulator(example_text, monkeypatch):
    """The example's `pipeline.upsert(role_arn=...)`, through the SDK and boto3 (which validate the request on the
    way out), into moto's SageMaker on loopback: the stored definition is the golden one."""
    import socket

    import boto3

    moto_server = pytest.importorskip("moto.server", reason="moto[server] (test extra) is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                            "NO_PROXY": "127.0.0.1", "AWS_CONFIG_FILE": "/nonexistent",
                            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
            monkeypatch.setenv(name, value)
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                          "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
        role = boto3.client("iam", region_name="us-east-1").create_role(
            RoleName="slimops-pipelines", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        pipeline = digits_pipeline.build()
        pipeline.upsert(role_arn=role)
        stored = boto3.client("sagemaker", region_name="us-east-1").describe_pipeline(
            PipelineName="slimops-digits-pipeline")
        assert json.loads(stored["PipelineDefinition"]) == json.loads(example_text)
        assert stored["RoleArn"] == role
    finally:
        server.stop()


def readme_block(heading: str) -> str:
    """The first ```python block under a README heading, as a user would copy it."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading + "\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_snippet_nests_the_steps_into_an_existing_pipeline(tmp_path, monkeypatch):
    """The README's SageMaker snippet, run as copied: the user's own step produces a model directory, the slimops
    steps take it from there, and the pipeline passes the service-model check."""
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.mlops.workflow import ProcessingStep

    write_recipe(tmp_path / "compress.yaml", steps=[
        {"step": "export"}, {"step": "quantize", "config": {"mode": "dynamic"}},
        {"step": "validate", "config": {"data": "test", "gate": {"max_metric_drop": 1.0}}}])
    monkeypatch.chdir(tmp_path)
    # What the user already has: a role, a training step writing a model directory, its parameters.
    trainer = Processor(role=SETTINGS["role"], image_uri="111122223333.dkr.ecr.us-east-1.amazonaws.com/train:1",
                        instance_count=1, instance_type="ml.m5.xlarge",
                        sagemaker_session=pipeline_session("us-east-1", "my-bucket"))
    train_step = ProcessingStep(name="my-train", step_args=trainer.run(outputs=[ProcessingOutput(
        output_name="model", s3_output=ProcessingS3Output(s3_uri="s3://my-bucket/model",
                                                          local_path="/opt/ml/processing/output/model",
                                                          s3_upload_mode="EndOfJob"))]))
    user = {"ROLE_ARN": SETTINGS["role"], "train_step": train_step,
            "your_parameters": [ParameterString("TrainingData", default_value="s3://my-bucket/data")]}
    exec(compile(readme_block("### SageMaker Pipelines (sagemaker 3.x)"), "README.md", "exec"), user)

    steps = steps_by_name(definition(user["pipeline"])["Steps"])
    assert "slimops-source" not in steps
    first = steps["slimops-export"]["Arguments"]["ProcessingInputs"][0]["S3Input"]
    assert first["S3Uri"] == {"Get": "Steps.my-train.ProcessingOutputConfig.Outputs['model'].S3Output.S3Uri"}
    assert first["LocalPath"] == "/opt/ml/processing/input/model"
    baseline = {i["InputName"]: i for i in steps["slimops-validate"]["Arguments"]["ProcessingInputs"]}["baseline"]
    assert baseline["S3Input"]["S3Uri"] == first["S3Uri"]  # validate compares against the user's model
    assert steps["slimops-register-model"]["Arguments"]["ModelPackageGroupName"] == "my-model"
    assert user["checked"]["Steps"][0]["Name"] == "my-train"  # check_pipeline returned the checked definition


def test_recipe_data_files_arrive_as_a_data_channel():
    recipe = REPO / "examples" / "minilm-sts.yaml"
    with pytest.raises(BadInput, match="read data files; give data_uri"):
        build_pipeline(recipe, **SETTINGS)
    spec = definition(build_pipeline(recipe, **SETTINGS, data_uri="s3://my-bucket/recipes/minilm"))
    validate = next(s for s in spec["Steps"] if s["Name"] == "slimops-validate")["Arguments"]
    channels = {i["InputName"]: i["S3Input"] for i in validate["ProcessingInputs"]}
    assert channels["data"] == {**channels["data"], "S3Uri": {"Get": "Parameters.DataUri"},
                                "LocalPath": "/opt/ml/processing/input/data"}
    sets = [a for a in validate["AppSpecification"]["ContainerEntrypoint"] if a.startswith("data=")]
    assert json.loads(sets[0].removeprefix("data="))["path"] == "/opt/ml/processing/input/data/data/stsb/sts-dev.tsv"


def test_recipe_errors_fail_at_build_time(tmp_path, monkeypatch):
    import slimops.plan

    unknown = write_recipe(tmp_path / "u.yaml", steps=[{"step": "shrink"}])
    with pytest.raises(BadInput, match="unknown step 'shrink'"):
        build_pipeline(unknown, **SETTINGS)
    no_gate = write_recipe(tmp_path / "n.yaml", steps=[{"step": "export"}])
    with pytest.raises(BadInput, match="no step produces one"):
        build_pipeline(no_gate, **SETTINGS)
    empty_gate = write_recipe(tmp_path / "e.yaml", gate={"max_metric_drop": None, "min_speedup": None})
    with pytest.raises(BadInput, match="checks nothing"):
        build_pipeline(empty_gate, **SETTINGS)
    monkeypatch.delenv("SLIMOPS_IMAGE", raising=False)
    monkeypatch.setattr(slimops.plan, "IMAGE_LOCK", tmp_path / "no-image.json")
    with pytest.raises(BadInput, match="no component image"):
        build_pipeline(EXAMPLE, **{**SETTINGS, "image": None}, recipe_promotion=False)
    with pytest.raises(BadInput, match="not an IAM role ARN"):
        build_pipeline(EXAMPLE, **{**SETTINGS, "role": "slimops"}, recipe_promotion=False)
    with pytest.raises(BadInput, match="not an S3 bucket name"):
        build_pipeline(EXAMPLE, **{**SETTINGS, "bucket": "s3://b/p"}, recipe_promotion=False)
    # The example's register/promote keep their registry beside OUT: separate SageMaker jobs would not share it.
    with pytest.raises(BadInput, match="register, promote keep their model registry inside the job"):
        build_pipeline(EXAMPLE, **SETTINGS)


# ----------------------------------------------------------------------------- the processing contract


class LocalProcessing:
    """Runs a definition's Processing steps as SageMaker would, with S3 as a local directory tree: each job gets
    a fresh ROOT with its input channels downloaded, runs its ContainerEntrypoint, and its output channels are
    uploaded to the URIs the definition names. Property files and conditions are read the same way."""

    def __init__(self, spec: dict, root: Path, s3: Path):
        self.spec, self.root, self.s3, self.steps = spec, root, s3, steps_by_name(spec["Steps"])
        self.params = {p["Name"]: p.get("DefaultValue") for p in spec["Parameters"]}
        self.params["ArtifactRoot"] = str(s3)
        self.outputs: dict[str, dict[str, Path]] = {}

    def resolve(self, expr):
        if isinstance(expr, (str, bool, int, float)):
            return expr
        if "Std:Join" in expr:
            return expr["Std:Join"]["On"].join(str(self.resolve(v)) for v in expr["Std:Join"]["Values"])
        if "Std:JsonGet" in expr:
            step = re.fullmatch(r"Steps\.(.+)\.PropertyFiles\.(.+)", expr["Std:JsonGet"]["PropertyFile"]["Get"])
            value = self.property_file(step[1], step[2])
            for key in expr["Std:JsonGet"]["Path"].split("."):
                value = value[key]
            return value
        ref = expr["Get"]
        if ref == "Execution.PipelineExecutionId":
            return "execution-1"
        if ref.startswith("Parameters."):
            return self.params[ref.removeprefix("Parameters.")]
        found = re.fullmatch(r"Steps\.(.+)\.ProcessingOutputConfig\.Outputs\['(.+)'\]\.S3Output\.S3Uri", ref)
        return str(self.outputs[found[1]][found[2]])

    def property_file(self, step_name: str, file_name: str) -> dict:
        spec = next(p for p in self.steps[step_name]["PropertyFiles"] if p["PropertyFileName"] == file_name)
        return json.loads((self.outputs[step_name][spec["OutputName"]] / spec["FilePath"]).read_text())

    def seed(self, step_name: str, model_dir: Path) -> None:
        """An upstream step's output, as if it had run: its model channel holds ``model/`` = model_dir."""
        out = self.s3 / "seeded" / step_name / "model"
        shutil.copytree(model_dir, out / "model")
        self.outputs[step_name] = {"model": out}

    def run(self, step_name: str, exit_code: int = 0) -> subprocess.CompletedProcess:
        args = self.steps[step_name]["Arguments"]
        shutil.rmtree(self.root, ignore_errors=True)  # every job is a fresh container
        for channel in args.get("ProcessingInputs", []):
            source = Path(self.resolve(channel["S3Input"]["S3Uri"]))
            shutil.copytree(source, self.local(channel["S3Input"]["LocalPath"]))
        outputs = args["ProcessingOutputConfig"]["Outputs"]
        for channel in outputs:
            self.local(channel["S3Output"]["LocalPath"]).mkdir(parents=True)  # the platform creates them
        env = {**cli_env(), **args.get("Environment", {}),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(args["AppSpecification"]["ContainerEntrypoint"], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == exit_code, f"{step_name} exited {done.returncode}:\n{done.stderr[-3000:]}"
        if exit_code:
            return done  # a failed job uploads nothing
        self.outputs[step_name] = {}
        for channel in outputs:
            target = Path(self.resolve(channel["S3Output"]["S3Uri"]))
            shutil.copytree(self.local(channel["S3Output"]["LocalPath"]), target)
            self.outputs[step_name][channel["OutputName"]] = target
        return done

    def local(self, container_path: str) -> Path:
        # The definition was built with $SLIMOPS_SAGEMAKER_PROCESSING_ROOT = self.root: its paths already lie there.
        assert container_path.startswith(str(self.root)), container_path
        return Path(container_path)

    def branch(self, condition_name: str) -> list[dict]:
        args = self.steps[condition_name]["Arguments"]
        verdicts = [self.resolve(c["LeftValue"]) == self.resolve(c["RightValue"]) for c in args["Conditions"]]
        assert all(c["Type"] == "Equals" for c in args["Conditions"])
        return args["IfSteps"] if all(verdicts) else args["ElseSteps"]


@pytest.mark.slow
def test_definition_entrypoints_run_the_contract_locally_and_the_condition_reads_the_gate_report(
        tmp_path, monkeypatch, digits_trained):
    root = tmp_path / "container" / "opt" / "ml" / "processing"
    monkeypatch.setenv(PROCESSING_ROOT_ENV, str(root))
    # The example, timed briefly and gated on accuracy and size only: this run is about the contract, and a
    # loaded machine can make a speed rule inconclusive (the inconclusive path has its own test below).
    quick = {"rounds": 1, "latency_runs": 5, "throughput_samples": 64}
    contract = write_recipe(tmp_path / "contract.yaml", timing=quick,
                            gate={"max_metric_drop": 1.0, "min_speedup": None, "max_size_ratio": 0.5})
    spec = definition(digits_pipeline.build(contract))
    assert str(root) in json.dumps(spec)
    local = LocalProcessing(spec, root, tmp_path / "s3")
    local.seed("slimops-train", digits_trained)
    for name in ("slimops-export", "slimops-quantize", "slimops-validate"):
        local.run(name)
    validated = local.outputs["slimops-validate"]["model"]
    report = json.loads((validated / "model" / "gate_report.json").read_text())
    assert (validated / "gate_passed").read_text() == json.dumps(report["passed"])
    assert (validated / "model" / "model.onnx").is_file() and (validated / "model" / "manifest.json").is_file()
    taken = local.branch("slimops-gate")
    assert [s["Type"] for s in taken] == (["RegisterModel"] if report["passed"] else ["Fail"])

    # Validate again with a gate that must fail, then one that must pass: both branches, for real (on size and
    # accuracy, which load cannot make inconclusive).
    for gate, passes in (({"max_metric_drop": 100.0, "min_speedup": None, "max_size_ratio": 0.01}, False),
                         ({"max_metric_drop": 100.0, "min_speedup": None}, True)):
        variant = digits_pipeline.build(write_recipe(tmp_path / f"gate-{passes}.yaml", gate=gate, timing=quick))
        rerun = LocalProcessing(definition(variant), root, tmp_path / f"s3-{passes}")
        rerun.outputs = {k: v for k, v in local.outputs.items() if k != "slimops-validate"}
        rerun.run("slimops-validate")
        taken = rerun.branch("slimops-gate")
        report = rerun.property_file("slimops-validate", "GateReport")
        assert report["passed"] is passes
        if passes:
            register = taken[0]["Arguments"]["InferenceSpecification"]["Containers"][0]
            uri = rerun.resolve(register["ModelDataSource"]["S3DataSource"]["S3Uri"])
            model_prefix = Path(uri)
            assert uri.endswith("/model/") and (model_prefix / "gate_report.json").is_file()
            assert json.loads((model_prefix / "gate_report.json").read_text())["passed"] is True
        else:
            message = rerun.resolve(taken[0]["Arguments"]["ErrorMessage"])
            assert message.startswith("slimops gate validate failed:") and "size" in message


@pytest.mark.slow
def test_an_inconclusive_gate_retries_in_its_job_then_fails_the_step(tmp_path, monkeypatch, digits_trained):
    """A real inconclusive verdict (max_timing_spread 0 beside a speed rule any model meets: no timing is steady enough), run from the definition's own
    entrypoint: the job reruns the gate after the recipe's backoff, then exits 4, so the execution fails at the
    validate step and the condition (register or fail) never runs."""
    root = tmp_path / "container" / "opt" / "ml" / "processing"
    monkeypatch.setenv(PROCESSING_ROOT_ENV, str(root))
    recipe = write_recipe(tmp_path / "inconclusive.yaml", timing={"rounds": 4, "latency_runs": 5,
                                                                  "throughput_samples": 64},
                          gate={"max_metric_drop": 100.0, "min_speedup": 0.01, "max_timing_spread": 0.0})
    text = yaml.safe_load(recipe.read_text())
    text["retry_inconclusive"] = {"retries": 1, "backoff_s": 1}
    recipe.write_text(yaml.safe_dump(text, sort_keys=False))
    local = LocalProcessing(definition(digits_pipeline.build(recipe)), root, tmp_path / "s3")
    local.seed("slimops-train", digits_trained)
    local.run("slimops-export")
    local.run("slimops-quantize")
    done = local.run("slimops-validate", exit_code=4)
    assert "gate inconclusive" in done.stderr and "attempt 2 of 2 in 1 s" in done.stderr, done.stderr
    report = json.loads((root / "output" / "model" / "model" / "gate_report.json").read_text())
    assert report["passed"] is False and report["verdict"] == "inconclusive"
    assert "slimops-validate" not in local.outputs  # nothing uploaded, nothing for the condition to read
