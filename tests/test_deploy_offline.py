"""deploy targets tested offline: Azure ML and Vertex AI on the SDKs' own request objects, KServe on the rendered
manifests, and the bad-input rules of the deploy step (exit 2, nothing written, nothing created).

Nothing here talks to Azure or Google Cloud. The Azure and Vertex tests check the request bodies the SDKs
would send and the order of the calls the step makes through its hook; whether the services accept them was
not run (see the README's deploy section).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_bad_input, cli_env, tmp_siblings
from slimops.core import run_step
from slimops.deploy import Rollout, Traffic, model_hash

FAST_VALIDATE = {"data": {"format": "digits", "split": "test", "limit": 120}, "measure_memory": False,
                 "latency_runs": 5, "rounds": 2, "throughput_samples": 64,
                 "gate": {"max_metric_drop": 10.0, "min_speedup": None}}
KSERVE = {"type": "kserve", "storage_uri": "s3://models/digits", "gpus": 1,
          "gpu_node_selector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}
AZURE = {"type": "azureml", "subscription_id": "00000000-0000-0000-0000-000000000000", "resource_group": "rg",
         "workspace": "ws", "location": "westeurope", "instance_type": "Standard_NC4as_T4_v3",
         "image_uri": "myregistry.azurecr.io/slimops:0.1.0"}
VERTEX = {"type": "vertex", "project": "my-project", "bucket": "models", "image_uri":
          "us-docker.pkg.dev/my-project/ml/slimops:0.1.0"}
SAGEMAKER = {"type": "sagemaker", "region": "us-east-1", "bucket": "b", "role_arn":
             "arn:aws:iam::123456789012:role/x", "image_uri": "img", "instance_type": "ml.g5.xlarge"}


@pytest.fixture(scope="module")
def validated(tmp_path_factory, digits_onnx) -> Path:
    out = tmp_path_factory.mktemp("deploy-offline") / "validated"
    run_step("validate", digits_onnx, out, FAST_VALIDATE, inputs={"baseline": digits_onnx}, threads=1)
    return out


def deploy_cli(model: Path, out: Path, config: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    path = out.parent / f"{out.name}-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "slimops", "step", "deploy", "--model", str(model), "--out", str(out),
                           "--config", str(path)], env=env or cli_env(), capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- KServe


def test_kserve_renders_manifests_and_the_model_repository(tmp_path, validated):
    out = tmp_path / "deployed"
    done = deploy_cli(validated, out, {"name": "digits", "target": KSERVE,
                                       "rollout": {"canary": {"challenger": 20, "champion": 80}}})
    assert done.returncode == 0, done.stderr
    model_id = model_hash(json.loads((validated / "gate_report.json").read_text()))

    canary = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert canary["apiVersion"] == "serving.kserve.io/v1beta1" and canary["kind"] == "InferenceService"
    assert canary["metadata"]["name"] == "digits" and canary["metadata"]["labels"]["slimops.io/model"] == model_id
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 20
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "onnx"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://models/digits" and model["runtime"] == "kserve-tritonserver"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1" == model["resources"]["requests"]["nvidia.com/gpu"]
    promote = yaml.safe_load((out / "inferenceservice-promote.yaml").read_text())["spec"]["predictor"]
    rollback = yaml.safe_load((out / "inferenceservice-rollback.yaml").read_text())["spec"]["predictor"]
    assert "canaryTrafficPercent" not in promote and rollback["canaryTrafficPercent"] == 0
    assert promote["model"] == rollback["model"] == model

    repo = out / "model_repository" / "digits"
    assert (repo / "1" / "model.onnx").read_bytes() == (validated / "model.onnx").read_bytes()
    assert 'backend: "onnxruntime"' in (repo / "config.pbtxt").read_text()
    assert json.loads((repo / "gate_report.json").read_text())["passed"] is True
    record = json.loads((out / "deployment.json").read_text())
    assert record["target"] == "kserve" and record["stages"] == [20, 100]


def test_the_example_kserve_manifest_is_what_the_renderer_writes():
    """infra/k8s/ holds a rendered example; it must stay what the code renders for examples/deploy-kserve.yaml."""
    from slimops.core import parse_config
    from slimops.deploy import kserve

    recipe = yaml.safe_load((REPO / "examples" / "deploy-kserve.yaml").read_text())
    step = next(s for s in recipe["steps"] if s["step"] == "deploy")
    config = parse_config("deploy", step["config"])
    example = REPO / "infra" / "k8s" / "minilm-sts-inferenceservice.yaml"
    rendered = kserve.render(config.target, config.rollout, config.name, "example0000",
                             {"slimops.io/model-id": "example0000", "slimops.io/gate": "passed"})
    assert example.read_text() == rendered["inferenceservice.yaml"]


# ----------------------------------------------------------------------------- Azure ML


def test_azure_rollout_plan_zero_mirror_canary_full_then_delete():
    from slimops.deploy import azureml as az

    ops = az.plan_rollout("ep", "d-new", "d-old", Rollout(bake_seconds=60), mirror_percent=20)
    assert ops == [
        {"op": "create_deployment", "deployment": "d-new"},
        {"op": "set_traffic", "traffic": {"d-old": 100, "d-new": 0}, "mirror_traffic": {"d-new": 20}},
        {"op": "set_traffic", "traffic": {"d-old": 90, "d-new": 10}, "mirror_traffic": {}, "bake_seconds": 60},
        {"op": "set_traffic", "traffic": {"d-new": 100}, "mirror_traffic": {}, "bake_seconds": 0},
        {"op": "delete_deployment", "deployment": "d-old"},
    ]
    first = az.plan_rollout("ep", "d-new", None, Rollout(), mirror_percent=0)
    assert [op["op"] for op in first] == ["create_endpoint", "create_deployment", "set_traffic"]
    assert first[-1]["traffic"] == {"d-new": 100}


class RecordingAzureHook:
    """Stands in for AzureMLHook's four calls and records them: it checks the step's call order, not Azure."""

    def __init__(self):
        self.calls = []

    def create_or_update_endpoint(self, endpoint):
        self.calls.append(("endpoint", dict(endpoint.traffic), dict(endpoint.mirror_traffic or {})))

    def create_or_update_deployment(self, deployment):
        self.calls.append(("deployment", deployment.name, deployment.instance_type))

    def delete_deployment(self, name, endpoint):
        self.calls.append(("delete", name, endpoint))


def test_azure_request_bodies_and_call_order():
    from slimops.deploy import azureml as az

    target = az.AzureMLTarget.model_validate({**AZURE, "mirror_percent": 10})
    names = az.names("minilm-sts", "abcdef0123")
    rollout = Rollout(canary=Traffic(challenger=25, champion=75), bake_seconds=0)
    ops = az.plan_rollout(names["endpoint"], names["deployment"], "d-old", rollout, target.mirror_percent)
    hook, actions = RecordingAzureHook(), []
    model_ref = "azureml:minilm-sts-abcdef0123:1"
    bodies = az.execute_operations(hook, target, names, ops, model_ref, {"slimops:model": "abcdef0123"}, actions)
    new = names["deployment"]
    assert hook.calls == [
        ("deployment", new, "Standard_NC4as_T4_v3"),
        ("endpoint", {"d-old": 100, new: 0}, {new: 10}),
        ("endpoint", {"d-old": 75, new: 25}, {}),
        ("endpoint", {new: 100}, {}),
        ("delete", "d-old", "minilm-sts"),
    ]
    # The environment the deployment runs: the slimops image with the routes `slimops serve --platform azureml`
    # answers (Azure ML's inference server's own: port 5001, "/" and "/score").
    assert [b["op"] for b in bodies] == ["create_environment", "create_deployment", "set_traffic", "set_traffic",
                                         "set_traffic"]
    environment = bodies.pop(0)["body"]["properties"]
    assert environment["image"] == AZURE["image_uri"]
    assert environment["inferenceConfig"] == {"livenessRoute": {"port": 5001, "path": "/"},
                                              "readinessRoute": {"port": 5001, "path": "/"},
                                              "scoringRoute": {"port": 5001, "path": "/score"}}
    deployment = bodies[0]["body"]
    assert deployment["properties"]["environmentVariables"] == {"SLIMOPS_SERVE_PLATFORM": "azureml"}
    assert deployment["location"] == "westeurope"
    assert deployment["properties"]["model"] == model_ref
    assert deployment["properties"]["instanceType"] == "Standard_NC4as_T4_v3"
    assert deployment["properties"]["endpointComputeType"] == "Managed"
    assert deployment["sku"]["capacity"] == 1
    assert bodies[1]["body"]["properties"]["mirrorTraffic"] == {new: 10}
    assert bodies[2]["body"]["properties"]["traffic"] == {"d-old": 75, new: 25}
    assert bodies[1]["body"]["properties"]["authMode"] == "Key"


def test_azure_traffic_maps_are_checked_because_the_sdk_does_not():
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    from slimops.deploy import azureml as az
    from slimops.errors import BadInput

    # The SDK builds a request for a split that sums to 80 without complaint ...
    body = ManagedOnlineEndpoint(name="endpoint", traffic={"a": 70, "b": 10})._to_rest_online_endpoint("westeurope").as_dict()
    assert body["properties"]["traffic"] == {"a": 70, "b": 10}
    # ... slimops refuses it before any call.
    with pytest.raises(BadInput, match="sums to 80, not 100"):
        az.check_traffic({"a": 70, "b": 10}, {})
    with pytest.raises(BadInput, match="needs that deployment at 0% live traffic"):
        az.check_traffic({"a": 90, "b": 10}, {"b": 20})


def test_azure_model_is_the_validated_directory_as_a_custom_model_asset(validated):
    from slimops.deploy import azureml as az

    model = az.model_entity(validated, "digits-abc", "1", {"slimops:model": "abc"})
    assert model.type == "custom_model" and Path(model.path) == validated
    # Azure ML mounts it as $AZUREML_MODEL_DIR/<folder name>, which slimops serve finds (test_serving_contracts).
    assert (Path(model.path) / "model.onnx").is_file() and (Path(model.path) / "manifest.json").is_file()


# ----------------------------------------------------------------------------- Vertex AI


def test_vertex_gpu_rollout_requests():
    from google.cloud import aiplatform_v1 as v1

    from slimops.deploy import vertex as vx

    target = vx.VertexTarget.model_validate({**VERTEX, "machine_type": "g2-standard-24", "accelerator_count": 2,
                                             "max_replicas": 3})
    ids = vx.ids("minilm-sts", "abcdef0123")
    assert ids == vx.ids("minilm-sts", "ffffffffff") | {"model": ids["model"]}  # the endpoint id ignores the model
    assert ids["endpoint"].isdigit() and len(ids["endpoint"]) == 9 and ids["endpoint"][0] != "0"
    requests = vx.plan_requests(target, ids["endpoint"], ids["model"], "1234567890", "1111111111", "gs://models/x",
                                "minilm-sts", Rollout(strategy="linear", linear_step_percent=40))
    assert [kind for kind, _ in requests] == ["upload_model", "deploy_model", "update_traffic", "update_traffic",
                                              "undeploy_model"]
    upload = requests[0][1]
    assert isinstance(upload, v1.UploadModelRequest)
    assert upload.parent == "projects/my-project/locations/us-central1" and upload.model_id == ids["model"]
    assert upload.model.artifact_uri == "gs://models/x" and upload.model.container_spec.image_uri == VERTEX["image_uri"]
    # The slimops image in its Vertex mode: `slimops serve`, port 8080, the routes it answers.
    container = upload.model.container_spec
    assert list(container.args) == ["serve"] and not container.command
    assert [(e.name, e.value) for e in container.env] == [("SLIMOPS_SERVE_PLATFORM", "vertex")]
    assert [p.container_port for p in container.ports] == [8080]
    assert (container.health_route, container.predict_route) == ("/health", "/predict")
    deploy = requests[1][1]
    assert isinstance(deploy, v1.DeployModelRequest)
    assert deploy.endpoint == f"projects/my-project/locations/us-central1/endpoints/{ids['endpoint']}"
    spec = deploy.deployed_model.dedicated_resources.machine_spec
    assert (spec.machine_type, spec.accelerator_type, spec.accelerator_count) == (
        "g2-standard-24", v1.AcceleratorType.NVIDIA_L4, 2)
    assert deploy.deployed_model.dedicated_resources.max_replica_count == 3
    assert dict(deploy.traffic_split) == {"0": 40, "1111111111": 60}
    assert [dict(r.endpoint.traffic_split) for _, r in requests[2:4]] == [{"1234567890": 80, "1111111111": 20},
                                                                          {"1234567890": 100}]
    assert list(requests[2][1].update_mask.paths) == ["traffic_split"]
    assert requests[4][1].deployed_model_id == "1111111111"
    assert vx.deployed_id("abcdef0123").isdigit() and len(vx.deployed_id("abcdef0123")) == 10
    # Each request serialises to the JSON the REST API takes.
    assert json.loads(v1.DeployModelRequest.to_json(deploy, use_integers_for_enums=False))["deployedModel"]["dedicatedResources"]["machineSpec"][
        "acceleratorType"] == "NVIDIA_L4"


def test_vertex_tpu_machine_and_first_deploy():
    from slimops.deploy import vertex as vx

    target = vx.VertexTarget.model_validate({**VERTEX, "machine_type": "ct5lp-hightpu-4t", "accelerator_type": None})
    requests = dict(vx.plan_requests(target, "123456789", "m-1", "2222222222", None, "gs://models/x", "m", Rollout()))
    assert list(requests) == ["upload_model", "create_endpoint", "deploy_model"]
    spec = requests["deploy_model"].deployed_model.dedicated_resources.machine_spec
    assert spec.machine_type == "ct5lp-hightpu-4t" and spec.accelerator_count == 0  # the chips come with the machine
    assert dict(requests["deploy_model"].traffic_split) == {"0": 100}
    assert requests["create_endpoint"].endpoint_id == "123456789"


# ----------------------------------------------------------------------------- bad input: exit 2, nothing written


@pytest.mark.parametrize("config, message", [
    ({"name": "digits", "target": {"type": "openshift"}}, "does not match any of the expected tags"),
    ({"name": "digits", "target": {**SAGEMAKER, "instance_type": "Standard_NC6s_v3"}},
     "'Standard_NC6s_v3' is not a SageMaker real-time instance type"),
    ({"name": "digits", "target": {**AZURE, "instance_type": "ml.g5.xlarge"}},
     "'ml.g5.xlarge' is not a managed online endpoint SKU"),
    ({"name": "digits", "target": {k: v for k, v in AZURE.items() if k != "image_uri"}},
     "target.image_uri is missing: Azure ML runs the slimops image"),
    ({"name": "digits", "target": {**VERTEX, "machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_TESLA_T4"}},
     "g2-standard-8 takes accelerator_type NVIDIA_L4"),
    ({"name": "digits", "target": KSERVE, "rollout": {"canary": {"challenger": 20, "champion": 70}}},
     "traffic percentages challenger 20 + champion 70 = 90; they must sum to 100"),
    ({"name": "digits", "target": KSERVE, "rollout": {"canary": {"challenger": 60, "champion": 40}}},
     "a canary takes at most 50% of traffic, got challenger 60%"),
])
def test_bad_deploy_config_exits_2(tmp_path, validated, config, message):
    out = tmp_path / "deployed"
    done = deploy_cli(validated, out, config)
    line = assert_bad_input(done.returncode, done.stderr, out)
    assert message in line, line


def _without(env: dict, prefixes: tuple[str, ...]) -> dict:
    return {k: v for k, v in env.items() if not k.startswith(prefixes)}


def test_missing_azure_credentials_exit_2(tmp_path, validated):
    env = _without(cli_env(), ("AZURE_", "IDENTITY_", "MSI_")) | {"AZURE_CONFIG_DIR": str(tmp_path / "az")}
    out = tmp_path / "deployed"
    line = assert_bad_input(*_run(validated, out, {"name": "digits", "target": AZURE}, env))
    assert "no Azure credentials found" in line and "Nothing was created" in line


def test_missing_google_credentials_exit_2(tmp_path, validated):
    env = _without(cli_env(), ("GOOGLE_", "CLOUDSDK_")) | {"CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
    out = tmp_path / "deployed"
    line = assert_bad_input(*_run(validated, out, {"name": "digits", "target": VERTEX}, env))
    assert "no Google Cloud credentials found" in line and "Nothing was created" in line


def _run(model, out, config, env):
    done = deploy_cli(model, out, config, env)
    return done.returncode, done.stderr, out


def test_a_model_without_a_gate_report_exits_3(tmp_path, digits_onnx):
    out = tmp_path / "deployed"
    done = deploy_cli(digits_onnx, out, {"name": "digits", "target": KSERVE})
    assert done.returncode == 3, done.stderr
    assert "has no gate_report.json" in done.stderr
    assert not out.exists() and tmp_siblings(out) == []


def test_a_failed_gate_exits_3(tmp_path, digits_onnx, validated):
    failed = tmp_path / "failed"
    # A size rule: the same model as its own baseline has a size ratio of 1, a verdict timing noise cannot blur
    # (a speed rule can come out inconclusive on a busy machine).
    outcome = run_step("validate", digits_onnx, failed,
                       {**FAST_VALIDATE, "gate": {"min_speedup": None, "max_size_ratio": 0.5}},
                       inputs={"baseline": digits_onnx}, threads=1)
    assert outcome.status == "gate_failed" and outcome.passed is False
    out = tmp_path / "deployed"
    done = deploy_cli(failed, out, {"name": "digits", "target": KSERVE})
    assert done.returncode == 3 and "the gate failed (size" in done.stderr, done.stderr
    assert not out.exists() and tmp_siblings(out) == []


def test_deploy_shows_in_the_step_list():
    done = subprocess.run([sys.executable, "-m", "slimops", "steps", "deploy"], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rollout" in done.stdout and "target" in done.stdout


