"""deploy target sagemaker: contract tests against moto in server mode on loopback, Stubber for UpdateEndpoint.

moto 5.2.5 serves CreateModel / CreateEndpointConfig / CreateEndpoint / Describe* / Delete* /
UpdateEndpointWeightsAndCapacities and S3 over real HTTP; it has no UpdateEndpoint, and its instance-type enum
predates ml.g5 (it rejects ml.g5.xlarge). So the moto tests use ml.g4dn.xlarge (a GPU type moto accepts), and
the update paths (blue/green DeploymentConfig, the variants canary and its rollback) run against botocore's
Stubber, which checks every request against the SageMaker API model, with ml.g5.xlarge.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from conftest import assert_bad_input, cli_env, link_tree, tmp_siblings

boto3 = pytest.importorskip("boto3", reason="boto3 (extra slimops[aws]) is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] (test extra) is not installed")
from botocore.stub import Stubber  # noqa: E402

from slimops.core import run_step  # noqa: E402
from slimops.deploy import Rollout, Traffic, model_hash  # noqa: E402
from slimops.deploy import sagemaker as sm  # noqa: E402

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/slimops-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/slimops:0.1.0"  # the slimops image, pushed to ECR
MOTO_GPU = "ml.g4dn.xlarge"  # moto's enum has no ml.g5.*
FAST_VALIDATE = {"data": {"format": "digits", "split": "test", "limit": 120}, "measure_memory": False,
                 "latency_runs": 5, "rounds": 2, "throughput_samples": 64,
                 "gate": {"max_metric_drop": 10.0, "min_speedup": None}}


@pytest.fixture(scope="module")
def validated(tmp_path_factory, digits_onnx) -> Path:
    """The digits ONNX model through a real validate step whose gate passes."""
    out = tmp_path_factory.mktemp("deploy-sm") / "validated"
    run_step("validate", digits_onnx, out, FAST_VALIDATE, inputs={"baseline": digits_onnx}, threads=1)
    return out


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's HTTP server on a free loopback port, with fake credentials; env for the CLI and for boto3."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def clients():
    return (boto3.client("sagemaker", region_name=REGION), boto3.client("s3", region_name=REGION),
            boto3.client("cloudwatch", region_name=REGION))


def target(bucket: str, **extra) -> dict:
    return {"type": "sagemaker", "region": REGION, "bucket": bucket, "role_arn": ROLE, "image_uri": IMAGE,
            "instance_type": MOTO_GPU, "poll_seconds": 0, "wait_seconds": 30, **extra}


def deploy_cli(model: Path, out: Path, config: dict, env: dict) -> subprocess.CompletedProcess:
    path = out.parent / f"{out.name}-config.yaml"
    path.write_text(yaml.safe_dump(config))
    full_env = {**cli_env(), **env}
    return subprocess.run([sys.executable, "-m", "slimops", "step", "deploy", "--model", str(model), "--out", str(out),
                           "--config", str(path)], env=full_env, capture_output=True, text=True, timeout=300)


def names_in(listing: dict, key: str, name_key: str) -> list[str]:
    return sorted(item[name_key] for item in listing[key])


# ----------------------------------------------------------------------------- moto: create, retry, weights, delete


def test_first_deploy_creates_model_config_endpoint_and_uploads_the_artifact(tmp_path, moto, validated):
    sagemaker, s3, _ = clients()
    s3.create_bucket(Bucket="artifacts-create")
    done = deploy_cli(validated, tmp_path / "deployed", {"name": "digits", "target": target("artifacts-create")}, moto)
    assert done.returncode == 0, done.stderr

    model_id = model_hash(json.loads((validated / "gate_report.json").read_text()))
    name = f"digits-{model_id}"
    record = json.loads((tmp_path / "deployed" / "deployment.json").read_text())
    assert [(a["action"], a["kind"]) for a in record["actions"]] == [
        ("created", "s3_object"), ("created", "model"), ("created", "endpoint_config"), ("created", "endpoint")]
    assert record["endpoint_status"] == "InService" and record["gpu"] is True

    assert names_in(sagemaker.list_models(), "Models", "ModelName") == [name]
    model = sagemaker.describe_model(ModelName=name)
    key = f"slimops/digits/{model_id}/model.tar.gz"
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://artifacts-create/{key}"
    # The slimops image in its SageMaker mode (SageMaker starts it as `<image> serve`), no network needed.
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["Environment"] == {"SLIMOPS_SERVE_PLATFORM": "sagemaker"}
    config = sagemaker.describe_endpoint_config(EndpointConfigName=name)
    assert [(v["VariantName"], v["ModelName"], v["InstanceType"]) for v in config["ProductionVariants"]] == [
        ("primary", name, MOTO_GPU)]
    endpoint = sagemaker.describe_endpoint(EndpointName="digits")
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == name

    # The uploaded artifact is the validated model directory, its files at the root (SageMaker unpacks it into
    # /opt/ml/model, where `slimops serve` reads it: tests/test_serving_contracts.py serves this very layout).
    body = s3.get_object(Bucket="artifacts-create", Key=key)
    data = body["Body"].read()
    assert body["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert files == {p.relative_to(validated).as_posix(): p.read_bytes() for p in validated.rglob("*") if p.is_file()}
    assert {"model.onnx", "manifest.json", "gate_report.json"} <= set(files)
    tfvars = json.loads((tmp_path / "deployed" / "terraform.tfvars.json").read_text())
    assert tfvars["model_name"] == name and tfvars["model_data_url"] == f"s3://artifacts-create/{key}"


def test_a_retry_reattaches_instead_of_creating_twice(tmp_path, moto, validated):
    sagemaker, s3, _ = clients()
    s3.create_bucket(Bucket="artifacts-retry")
    config = {"name": "retry", "target": target("artifacts-retry")}
    assert deploy_cli(validated, tmp_path / "first", config, moto).returncode == 0
    before = (sagemaker.list_models()["Models"], sagemaker.list_endpoint_configs()["EndpointConfigs"])
    key = f"slimops/retry/{model_hash(json.loads((validated / 'gate_report.json').read_text()))}/model.tar.gz"
    version = s3.head_object(Bucket="artifacts-retry", Key=key)

    done = deploy_cli(validated, tmp_path / "second", config, moto)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "second" / "deployment.json").read_text())
    assert {a["action"] for a in record["actions"]} == {"reused"}
    assert (sagemaker.list_models()["Models"], sagemaker.list_endpoint_configs()["EndpointConfigs"]) == before
    again = s3.head_object(Bucket="artifacts-retry", Key=key)
    assert again["ETag"] == version["ETag"] and again["LastModified"] == version["LastModified"]  # not re-uploaded


def test_a_retry_after_a_crash_creates_only_what_is_missing(tmp_path, moto, validated):
    """A first try died after CreateModel: the retry reuses the model and makes the config and endpoint."""
    sagemaker, s3, _ = clients()
    s3.create_bucket(Bucket="artifacts-crash")
    model_id = model_hash(json.loads((validated / "gate_report.json").read_text()))
    cfg = sm.SageMakerTarget.model_validate(target("artifacts-crash"))
    plan = sm.Plan.build("crashed", model_id, f"s3://artifacts-crash/slimops/crashed/{model_id}/model.tar.gz")
    sm.ensure_model(sm.SageMakerHook(REGION), cfg, plan)

    done = deploy_cli(validated, tmp_path / "deployed", {"name": "crashed", "target": target("artifacts-crash")}, moto)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "deployed" / "deployment.json").read_text())
    assert [(a["action"], a["kind"]) for a in record["actions"]][1:] == [
        ("reused", "model"), ("created", "endpoint_config"), ("created", "endpoint")]
    assert [m for m in names_in(sagemaker.list_models(), "Models", "ModelName") if m.startswith("crashed")] == [
        plan.model]


def test_canary_weights_then_tear_down(moto, validated):
    """Two production variants on one endpoint; UpdateEndpointWeightsAndCapacities moves 10% to the canary;
    tear_down deletes the endpoint, its config and both models."""
    sagemaker, _, _ = clients()
    hook = sm.SageMakerHook(REGION)
    cfg = sm.SageMakerTarget.model_validate(target("unused"))
    old = sm.Plan.build("weights", "aaaaaaaaaa", "s3://b/old/model.tar.gz")
    new = sm.Plan.build("weights", "bbbbbbbbbb", "s3://b/new/model.tar.gz")
    for plan in (old, new):
        sm.ensure_model(hook, cfg, plan)
    sm.ensure_endpoint_config(hook, cfg, new, new.canary_config, [
        sm.variant(cfg, sm.PRIMARY, old.model, 100), sm.variant(cfg, sm.CANARY, new.model, 0)])
    sagemaker.create_endpoint(EndpointName="weights", EndpointConfigName=new.canary_config)

    sm.shift_traffic(hook, new, {sm.CANARY: 10, sm.PRIMARY: 90})
    variants = {v["VariantName"]: v for v in hook.wait_until_settled("weights", 10, 0)["ProductionVariants"]}
    assert variants[sm.CANARY]["DesiredWeight"] == 10.0 and variants[sm.PRIMARY]["DesiredWeight"] == 90.0
    assert new.traffic == [{sm.CANARY: 10, sm.PRIMARY: 90}]

    actions = sm.tear_down(hook, "weights")
    assert [(a["action"], a["kind"]) for a in actions] == [("deleted", "endpoint"), ("deleted", "endpoint_config"),
                                                           ("deleted", "model"), ("deleted", "model")]
    assert hook.describe_endpoint("weights") is None
    assert hook.describe_model(old.model) is None and hook.describe_model(new.model) is None
    assert sm.tear_down(hook, "weights") == []  # gone: nothing to do, no error


# ----------------------------------------------------------------------------- bad input against moto


def test_missing_aws_credentials_exit_2_and_nothing_created(tmp_path, moto, validated):
    sagemaker, s3, _ = clients()
    s3.create_bucket(Bucket="artifacts-nocreds")
    models_before = sagemaker.list_models()["Models"]
    env = {**moto, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    out = tmp_path / "deployed"
    done = deploy_cli(validated, out, {"name": "nocreds", "target": target("artifacts-nocreds")}, env)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert "no AWS credentials found" in line and "Nothing was created" in line
    assert sagemaker.list_models()["Models"] == models_before
    assert s3.list_objects_v2(Bucket="artifacts-nocreds").get("KeyCount") == 0


def test_missing_bucket_or_alarm_exit_2_before_anything_is_created(tmp_path, moto, validated):
    sagemaker, s3, _ = clients()
    models_before = sagemaker.list_models()["Models"]
    out = tmp_path / "deployed"
    done = deploy_cli(validated, out, {"name": "nobucket", "target": target("no-such-bucket")}, moto)
    assert "S3 bucket 'no-such-bucket' is not reachable" in assert_bad_input(done.returncode, done.stderr, out)
    s3.create_bucket(Bucket="artifacts-alarm")
    done = deploy_cli(validated, out, {"name": "noalarm", "target": target("artifacts-alarm", alarms=["missing"])}, moto)
    assert "alarm(s) missing not found" in assert_bad_input(done.returncode, done.stderr, out)
    assert sagemaker.list_models()["Models"] == models_before
    assert s3.list_objects_v2(Bucket="artifacts-alarm").get("KeyCount") == 0


def test_a_failed_gate_exits_3_and_creates_nothing(tmp_path, moto, validated):
    sagemaker, s3, _ = clients()
    s3.create_bucket(Bucket="artifacts-gate")
    tampered = link_tree(validated, tmp_path / "tampered")
    (tampered / "model.onnx").unlink()
    (tampered / "model.onnx").write_bytes((validated / "model.onnx").read_bytes() + b"\0")
    out = tmp_path / "deployed"
    done = deploy_cli(tampered, out, {"name": "tampered", "target": target("artifacts-gate")}, moto)
    assert done.returncode == 3, done.stderr
    assert "files differ from the ones the gate passed (model.onnx)" in done.stderr
    assert not out.exists() and tmp_siblings(out) == []
    assert not [m for m in sagemaker.list_models()["Models"] if m["ModelName"].startswith("tampered")]
    assert s3.list_objects_v2(Bucket="artifacts-gate").get("KeyCount") == 0


# ----------------------------------------------------------------------------- Stubber: UpdateEndpoint paths


NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
ARN = "arn:aws:sagemaker:us-east-1:123456789012"


def stubbed_hook():
    """A hook whose SageMaker and CloudWatch clients answer from a Stubber (no network; requests are
    validated against botocore's API model)."""
    session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="y", region_name=REGION)
    hook = sm.SageMakerHook(REGION)
    hook.__dict__["sm"] = session.client("sagemaker", endpoint_url="http://127.0.0.1:9")
    hook.__dict__["cloudwatch"] = session.client("cloudwatch", endpoint_url="http://127.0.0.1:9")
    return hook, Stubber(hook.sm), Stubber(hook.cloudwatch)


def endpoint_response(name: str, config: str, status: str = "InService") -> dict:
    return {"EndpointName": name, "EndpointArn": f"{ARN}:endpoint/{name}", "EndpointConfigName": config,
            "EndpointStatus": status, "CreationTime": NOW, "LastModifiedTime": NOW}


def config_response(name: str, variants: list[dict]) -> dict:
    return {"EndpointConfigName": name, "EndpointConfigArn": f"{ARN}:endpoint-config/{name}",
            "ProductionVariants": variants, "CreationTime": NOW}


def not_found(stub, method: str, what: str, params: dict) -> None:
    stub.add_client_error(method, service_error_code="ValidationException", http_status_code=400,
                          service_message=f'Could not find {what} "{ARN}:{what}/x".', expected_params=params)


def expect_model_exists(stub, name: str) -> None:
    stub.add_response("describe_model", {"ModelName": name, "ModelArn": f"{ARN}:model/{name}", "CreationTime": NOW,
                                         "ExecutionRoleArn": ROLE}, {"ModelName": name})


def test_blue_green_update_sends_the_deployment_config_and_removes_the_old_model():
    cfg = sm.SageMakerTarget.model_validate(target("b", instance_type="ml.g5.xlarge", alarms=["digits-5xx"],
                                                   update="blue_green"))
    rollout = Rollout(strategy="canary", canary=Traffic(challenger=20, champion=80), bake_seconds=300)
    plan = sm.Plan.build("digits", "newnewnew1", "s3://b/new/model.tar.gz")
    old_variant = sm.variant(cfg, sm.PRIMARY, "digits-oldoldold1", 100)
    hook, stub, _ = stubbed_hook()

    expect_model_exists(stub, plan.model)
    not_found(stub, "describe_endpoint_config", "endpoint-config", {"EndpointConfigName": plan.config})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/{plan.config}"}, {
        "EndpointConfigName": plan.config, "ProductionVariants": [{
            "VariantName": "primary", "ModelName": plan.model, "InitialInstanceCount": 1,
            "InstanceType": "ml.g5.xlarge", "InitialVariantWeight": 100.0}]})
    stub.add_response("describe_endpoint", endpoint_response("digits", "digits-oldoldold1"), {"EndpointName": "digits"})
    stub.add_response("describe_endpoint_config", config_response("digits-oldoldold1", [old_variant]),
                      {"EndpointConfigName": "digits-oldoldold1"})
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/digits"}, {
        "EndpointName": "digits", "EndpointConfigName": plan.config, "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 300,
                                                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20}},
                "TerminationWaitInSeconds": 300, "MaximumExecutionTimeoutInSeconds": 3600},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "digits-5xx"}]}}})
    stub.add_response("describe_endpoint", endpoint_response("digits", plan.config, "Updating"), {"EndpointName": "digits"})
    stub.add_response("describe_endpoint", endpoint_response("digits", plan.config), {"EndpointName": "digits"})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "digits-oldoldold1"})
    stub.add_response("delete_model", {}, {"ModelName": "digits-oldoldold1"})

    with stub:
        endpoint = sm.roll_out(hook, cfg, rollout, plan)
        stub.assert_no_pending_responses()
    assert endpoint["EndpointConfigName"] == plan.config
    assert [(a["action"], a["kind"]) for a in plan.actions] == [
        ("reused", "model"), ("created", "endpoint_config"), ("updated", "endpoint"), ("deleted", "endpoint_config"),
        ("deleted", "model")]


def test_blue_green_rolled_back_by_sagemaker_exits_3_and_keeps_the_old_model():
    cfg = sm.SageMakerTarget.model_validate(target("b", instance_type="ml.g5.xlarge", alarms=["digits-5xx"]))
    plan = sm.Plan.build("digits", "newnewnew1", "s3://b/new/model.tar.gz")
    hook, stub, _ = stubbed_hook()
    expect_model_exists(stub, plan.model)
    stub.add_response("describe_endpoint_config", config_response(plan.config, [sm.variant(cfg, sm.PRIMARY, plan.model, 100)]),
                      {"EndpointConfigName": plan.config})
    stub.add_response("describe_endpoint", endpoint_response("digits", "digits-old"), {"EndpointName": "digits"})
    stub.add_response("describe_endpoint_config", config_response("digits-old", [sm.variant(cfg, sm.PRIMARY, "digits-old", 100)]),
                      {"EndpointConfigName": "digits-old"})
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/digits"})
    stub.add_response("describe_endpoint", endpoint_response("digits", "digits-old"), {"EndpointName": "digits"})
    with stub, pytest.raises(sm.CanaryRolledBack, match="rolled endpoint digits back to digits-old") as err:
        sm.roll_out(hook, cfg, Rollout(bake_seconds=0), plan)
    assert err.value.exit_code == 3
    assert ("deleted", "model") not in [(a["action"], a["kind"]) for a in plan.actions]


def test_variants_canary_rolls_back_when_an_alarm_fires():
    """variants mode: the new model joins at weight 0, gets 10%; the alarm fires during the bake, so traffic
    goes back to the old variant and the endpoint back to the old config; exit 3."""
    cfg = sm.SageMakerTarget.model_validate(target("b", instance_type="ml.g5.xlarge", alarms=["digits-p99"],
                                                   update="variants"))
    plan = sm.Plan.build("digits", "newnewnew1", "s3://b/new/model.tar.gz")
    old_variant = sm.variant(cfg, sm.PRIMARY, "digits-old", 100)
    hook, stub, cw = stubbed_hook()
    ep = {"EndpointName": "digits"}

    expect_model_exists(stub, plan.model)
    stub.add_response("describe_endpoint_config", config_response(plan.config, [sm.variant(cfg, sm.PRIMARY, plan.model, 100)]),
                      {"EndpointConfigName": plan.config})
    stub.add_response("describe_endpoint", endpoint_response("digits", "digits-old"), ep)
    stub.add_response("describe_endpoint_config", config_response("digits-old", [old_variant]),
                      {"EndpointConfigName": "digits-old"})
    not_found(stub, "describe_endpoint_config", "endpoint-config", {"EndpointConfigName": plan.canary_config})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"{ARN}:endpoint-config/canary"}, {
        "EndpointConfigName": plan.canary_config, "ProductionVariants": [
            {**old_variant, "InitialVariantWeight": 100.0},
            {"VariantName": "canary", "ModelName": plan.model, "InitialInstanceCount": 1,
             "InstanceType": "ml.g5.xlarge", "InitialVariantWeight": 0.0}]})
    stub.add_response("describe_endpoint", endpoint_response("digits", "digits-old"), ep)
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/digits"}, {**ep, "EndpointConfigName": plan.canary_config})
    stub.add_response("describe_endpoint", endpoint_response("digits", plan.canary_config), ep)
    stub.add_response("update_endpoint_weights_and_capacities", {"EndpointArn": f"{ARN}:endpoint/digits"}, {**ep, "DesiredWeightsAndCapacities": [
        {"VariantName": "canary", "DesiredWeight": 10.0}, {"VariantName": "primary", "DesiredWeight": 90.0}]})
    stub.add_response("describe_endpoint", endpoint_response("digits", plan.canary_config), ep)
    cw.add_response("describe_alarms", {"MetricAlarms": [{"AlarmName": "digits-p99", "StateValue": "ALARM"}]},
                    {"AlarmNames": ["digits-p99"]})
    stub.add_response("update_endpoint_weights_and_capacities", {"EndpointArn": f"{ARN}:endpoint/digits"}, {**ep, "DesiredWeightsAndCapacities": [
        {"VariantName": "canary", "DesiredWeight": 0.0}, {"VariantName": "primary", "DesiredWeight": 100.0}]})
    stub.add_response("describe_endpoint", endpoint_response("digits", plan.canary_config), ep)
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/digits"}, {**ep, "EndpointConfigName": "digits-old"})
    stub.add_response("describe_endpoint", endpoint_response("digits", "digits-old"), ep)

    with stub, cw, pytest.raises(sm.CanaryRolledBack, match="alarm digits-p99 fired while .* served 10%"):
        sm.roll_out(hook, cfg, Rollout(bake_seconds=0), plan)
    stub.assert_no_pending_responses()
    assert plan.traffic == [{"canary": 10, "primary": 90}, {"canary": 0, "primary": 100}]


def test_variants_canary_finishes_at_100_percent_and_drops_the_old_variant():
    cfg = sm.SageMakerTarget.model_validate(target("b", instance_type="ml.p4d.24xlarge", update="variants"))
    plan = sm.Plan.build("digits", "newnewnew1", "s3://b/new/model.tar.gz")
    old_variant = sm.variant(cfg, sm.PRIMARY, "digits-old", 100)
    hook, stub, cw = stubbed_hook()
    ep = {"EndpointName": "digits"}
    expect_model_exists(stub, plan.model)
    stub.add_response("describe_endpoint_config", config_response(plan.config, [sm.variant(cfg, sm.PRIMARY, plan.model, 100)]))
    stub.add_response("describe_endpoint", endpoint_response("digits", "digits-old"), ep)
    stub.add_response("describe_endpoint_config", config_response("digits-old", [old_variant]))
    stub.add_response("describe_endpoint_config", config_response(plan.canary_config, [  # exists: reused
        old_variant, sm.variant(cfg, sm.CANARY, plan.model, 0)]))
    stub.add_response("describe_endpoint", endpoint_response("digits", plan.canary_config), ep)  # already on it
    for weights in ([10.0, 90.0], [100.0, 0.0]):
        stub.add_response("update_endpoint_weights_and_capacities", {"EndpointArn": f"{ARN}:endpoint/digits"}, {**ep, "DesiredWeightsAndCapacities": [
            {"VariantName": "canary", "DesiredWeight": weights[0]}, {"VariantName": "primary", "DesiredWeight": weights[1]}]})
        stub.add_response("describe_endpoint", endpoint_response("digits", plan.canary_config), ep)
    stub.add_response("update_endpoint", {"EndpointArn": f"{ARN}:endpoint/digits"}, {**ep, "EndpointConfigName": plan.config})
    stub.add_response("describe_endpoint", endpoint_response("digits", plan.config), ep)
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": plan.canary_config})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "digits-old"})
    stub.add_response("delete_model", {}, {"ModelName": "digits-old"})
    with stub, cw:
        endpoint = sm.roll_out(hook, cfg, Rollout(bake_seconds=0), plan)
    stub.assert_no_pending_responses()
    assert endpoint["EndpointConfigName"] == plan.config
    assert plan.traffic == [{"canary": 10, "primary": 90}, {"canary": 100, "primary": 0}]


def test_every_gpu_family_named_here_is_a_real_sagemaker_instance_type():
    """GPU_FAMILIES drives the `gpu` flag in deployment.json; each family must exist in botocore's model."""
    families = {t.split(".")[1] for t in sm.known_instance_types()}
    assert {"g4dn", "g5", "g6", "g6e", "p4d", "p5"} <= families
    assert set(sm.GPU_FAMILIES) - families <= {"p4de", "p5en"}  # newer families botocore may not list yet
