"""terraform/: formatting, module variables == what the deploy step passes, and a static security scan.

Providers cannot be downloaded here, so there is no `terraform init/validate`: the modules are parsed with
python-hcl2 and scanned with checkov (installed in its own venv, .venv-tools, because its pins conflict with
the SDK extras; `make tools` creates it, and this test does too when it is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 (test extra) is not installed")

from slimops.deploy import Rollout  # noqa: E402
from slimops.deploy import azureml, sagemaker, vertex  # noqa: E402

TERRAFORM = REPO / "terraform"
TOOLS_VENV = REPO / ".venv-tools"

# Each checkov check suppressed in terraform/ with `#checkov:skip=ID:reason`, and where. A new skip must be
# added here on purpose (and to the README's list); a removed one too.
DOCUMENTED_SKIPS = {
    ("CKV_AWS_18", "aws_s3_bucket.artifacts"), ("CKV_AWS_144", "aws_s3_bucket.artifacts"),
    ("CKV2_AWS_62", "aws_s3_bucket.artifacts"), ("CKV_AWS_111", "aws_iam_policy_document.key"),
    ("CKV_AWS_356", "aws_iam_policy_document.key"), ("CKV_AWS_109", "aws_iam_policy_document.key"),
    ("CKV_GCP_62", "google_storage_bucket.artifacts"), ("CKV2_GCP_33", "google_vertex_ai_endpoint.this"),
}


def sample_values() -> dict[str, dict]:
    """module directory -> the tfvars the deploy step writes for a typical target config."""
    rollout = Rollout()
    sm_target = sagemaker.SageMakerTarget.model_validate({
        "type": "sagemaker", "region": "us-east-1", "bucket": "b", "role_arn": "arn:aws:iam::123456789012:role/r",
        "image_uri": "img", "instance_type": "ml.g5.xlarge", "alarms": ["a"]})
    az_target = azureml.AzureMLTarget.model_validate({
        "type": "azureml", "subscription_id": "s", "resource_group": "g", "workspace": "w", "location": "westeurope",
        "image_uri": "img"})
    vx_target = vertex.VertexTarget.model_validate({"type": "vertex", "project": "my-project", "bucket": "b",
                                                    "image_uri": "img"})
    return {
        "sagemaker-endpoint": sagemaker.terraform_variables(
            sm_target, rollout, sagemaker.Plan.build("minilm-sts", "0123456789", "s3://b/k/model.tar.gz")),
        "azureml-online-endpoint": azureml.terraform_variables(az_target, rollout, "minilm-sts", "azureml:m:1"),
        "vertex-endpoint": vertex.terraform_variables(vx_target, rollout, "minilm-sts", "gs://b/k"),
    }


def module_variables(module: str) -> dict[str, dict]:
    with open(TERRAFORM / "modules" / module / "variables.tf") as handle:
        parsed = hcl2.load(handle)
    return {name.strip('"'): body for block in parsed["variable"] for name, body in block.items()}


def hcl_type_accepts(hcl_type: str, value) -> bool:
    hcl_type = hcl_type.strip("${}")
    if hcl_type == "string":
        return isinstance(value, str)
    if hcl_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hcl_type == "bool":
        return isinstance(value, bool)
    if hcl_type.startswith("list(") or hcl_type.startswith("set("):
        return isinstance(value, list)
    if hcl_type.startswith("map("):
        return isinstance(value, dict)
    raise AssertionError(f"type {hcl_type!r} not handled by this test")


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform binary not installed")
def test_terraform_fmt_check():
    done = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"terraform fmt would change:\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("module", ["sagemaker-endpoint", "azureml-online-endpoint", "vertex-endpoint"])
def test_module_variables_match_what_the_deploy_step_passes(module):
    values = sample_values()[module]
    variables = module_variables(module)
    required = {name for name, body in variables.items() if "default" not in body}
    assert set(values) <= set(variables), f"the step passes undeclared variables: {set(values) - set(variables)}"
    assert required <= set(values), f"required variables the step does not pass: {required - set(values)}"
    for name, value in values.items():
        assert hcl_type_accepts(variables[name]["type"], value), (name, variables[name]["type"], value)
        assert variables[name].get("description"), f"{module}: variable {name} has no description"


@pytest.mark.parametrize("example, module", [("sagemaker", "sagemaker-endpoint"),
                                             ("azureml", "azureml-online-endpoint"), ("vertex", "vertex-endpoint")])
def test_each_example_calls_its_module_with_every_required_variable(example, module):
    with open(TERRAFORM / "examples" / example / "main.tf") as handle:
        parsed = hcl2.load(handle)
    (call,) = [body for block in parsed["module"] for body in block.values()]
    assert call["source"].strip('"') == f"../../modules/{module}"
    arguments = {k for k in call if k not in ("source", "__is_block__")}
    variables = module_variables(module)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= arguments <= set(variables), (required - arguments, arguments - set(variables))
    if example == "vertex":  # the endpoint id the step derives must be the one terraform creates
        assert call["endpoint_id"].strip('"') == vertex.ids(call["name"].strip('"'), "")["endpoint"]


def checkov_binary() -> Path:
    checkov = TOOLS_VENV / "bin" / "checkov"
    if checkov.exists():
        return checkov
    python = shutil.which("python3.11") or sys.executable
    made = subprocess.run([python, "-m", "venv", str(TOOLS_VENV)], capture_output=True, text=True)
    if made.returncode == 0:
        installed = subprocess.run([str(TOOLS_VENV / "bin" / "pip"), "install", "-q", "checkov"], capture_output=True,
                                   text=True, timeout=900)
        if installed.returncode == 0 and checkov.exists():
            return checkov
        pytest.skip(reason=f"checkov could not be installed into {TOOLS_VENV} (package registry unreachable?): "
                           f"{installed.stderr.strip().splitlines()[-1:]}")
    pytest.skip(reason=f"could not create {TOOLS_VENV}: {made.stderr.strip()}")


def test_checkov_finds_no_failed_checks():
    """checkov reports no severities without a Prisma Cloud key, so every failed check counts: none may fail,
    and every suppression is one of the documented ones."""
    checkov = checkov_binary()
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}  # with --skip-download: no call to the Prisma Cloud API
    done = subprocess.run([str(checkov), "-d", str(TERRAFORM), "--framework", "terraform", "--skip-download",
                           "-o", "json"], capture_output=True, text=True, timeout=600, env=env)
    report = json.loads(done.stdout)
    assert isinstance(report, dict), "one framework, one report"
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
    assert failed == [], f"checkov failed checks: {failed}"
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 50, report["summary"]
    # The modules are scanned through the examples' module calls (module.minilm.*).
    skipped = {(c["check_id"], c["resource"].removeprefix("module.minilm.")) for c in results["skipped_checks"]}
    assert skipped == DOCUMENTED_SKIPS


# ----------------------------------------------------------------------------- modules register what the step does


def module_resource(module: str, kind: str, name: str) -> dict:
    with open(TERRAFORM / "modules" / module / "main.tf") as handle:
        parsed = hcl2.load(handle)
    found = [body[f'"{name}"'] for block in parsed["resource"] for k, body in block.items()
             if k.strip('"') == kind and f'"{name}"' in body]
    assert len(found) == 1, (module, kind, name)
    return found[0]


def evaluated(value, tfvars: dict):
    """A parsed HCL value with `var.X` replaced by the tfvars the deploy step writes: literals and variables only,
    so an expression the module computes is refused here rather than guessed at."""
    if isinstance(value, dict):
        return {k: evaluated(v, tfvars) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [evaluated(v, tfvars) for v in value]
    if isinstance(value, str):
        if value.startswith("${var.") and value.endswith("}"):
            return tfvars[value[len("${var."):-1]]
        assert not value.startswith("${"), f"an expression this test does not evaluate: {value}"
        return value[1:-1] if value.startswith('"') and value.endswith('"') else value
    return value


def test_the_sagemaker_module_registers_the_container_the_deploy_step_sends():
    tfvars = sample_values()["sagemaker-endpoint"]
    model = module_resource("sagemaker-endpoint", "aws_sagemaker_model", "first")
    [container] = model["primary_container"]
    sent = sagemaker.container_definition(tfvars["image_uri"], tfvars["model_data_url"])
    assert evaluated({k: container[k] for k in ("image", "model_data_url", "environment")}, tfvars) == {
        "image": sent["Image"], "model_data_url": sent["ModelDataUrl"], "environment": sent["Environment"]}
    assert sent["Environment"] == {"SLIMOPS_SERVE_PLATFORM": "sagemaker"}
    assert model["enable_network_isolation"] is True  # as the step's CreateModel: the server needs no network


def test_the_azureml_module_deploys_the_environment_and_variables_the_deploy_step_sends():
    from slimops.serving.platforms import AZUREML_ROUTES

    target = azureml.AzureMLTarget.model_validate({
        "type": "azureml", "subscription_id": "s", "resource_group": "g", "workspace": "w", "location": "westeurope",
        "image_uri": "example.azurecr.io/slimops:0.1.0"})
    tfvars = azureml.terraform_variables(target, Rollout(), "minilm-sts", "azureml:m:1")
    assert tfvars["image_uri"] == target.image_uri
    # What the step sends: the environment version (image and routes), then the deployment naming it.
    sent_environment = azureml.environment_entity(target)._to_rest_object().as_dict()["properties"]
    sent_deployment = azureml.deployment_entity(target, "minilm-sts", "initial", tfvars["model_asset_id"],
                                                {})._to_rest_object(target.location).as_dict()["properties"]
    environment = evaluated(module_resource("azureml-online-endpoint", "azapi_resource", "environment_version")
                            ["body"]["properties"], tfvars)
    assert environment["image"] == sent_environment["image"] == target.image_uri
    assert environment["inferenceConfig"] == sent_environment["inferenceConfig"] == {
        "livenessRoute": {"port": AZUREML_ROUTES["port"], "path": AZUREML_ROUTES["liveness"]},
        "readinessRoute": {"port": AZUREML_ROUTES["port"], "path": AZUREML_ROUTES["readiness"]},
        "scoringRoute": {"port": AZUREML_ROUTES["port"], "path": AZUREML_ROUTES["predict"]}}
    deployment = module_resource("azureml-online-endpoint", "azapi_resource", "first_deployment")["body"]["properties"]
    assert deployment["environmentId"] == "${azapi_resource.environment_version.id}"
    assert evaluated(deployment["environmentVariables"], tfvars) == sent_deployment["environmentVariables"] == {
        "SLIMOPS_SERVE_PLATFORM": "azureml"}
    assert evaluated(deployment["model"], tfvars) == sent_deployment["model"]


def test_no_module_or_example_still_describes_triton():
    """The endpoints run the slimops image; a Triton variable, env var or image left behind would deploy a server
    that cannot read the validated model directory."""
    mentions = [str(path.relative_to(REPO)) for path in sorted(TERRAFORM.rglob("*.tf"))
                if "triton" in path.read_text().lower()]
    assert mentions == []


def test_the_vertex_module_names_the_container_spec_the_deploy_step_registers():
    """The google provider has no Vertex model resource: the step's UploadModel registers the container. The
    module's description of it must be the step's, and the service account the model runs as reads the bucket
    the step uploads to."""
    from google.protobuf.json_format import MessageToDict

    spec = MessageToDict(vertex.container_spec(vertex.VertexTarget.model_validate(
        {"type": "vertex", "project": "my-project", "bucket": "b", "image_uri": "img"}))._pb)
    assert (spec["args"], spec["env"], spec["ports"], spec["predictRoute"], spec["healthRoute"]) == (
        ["serve"], [{"name": "SLIMOPS_SERVE_PLATFORM", "value": "vertex"}], [{"containerPort": 8080}], "/predict",
        "/health")
    text = (TERRAFORM / "modules" / "vertex-endpoint" / "main.tf").read_text()
    described = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    for fact in ('args ["serve"]', "SLIMOPS_SERVE_PLATFORM=vertex", "port 8080", "predict route /predict",
                 "health route /health"):
        assert fact in described, fact
    grant = module_resource("vertex-endpoint", "google_storage_bucket_iam_member", "serving_reads")
    assert grant["role"].strip('"') == "roles/storage.objectViewer"
    assert grant["member"].strip('"') == "serviceAccount:${google_service_account.serving.email}"
