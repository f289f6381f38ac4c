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
        "type": "azureml", "subscription_id": "s", "resource_group": "g", "workspace": "w", "location": "westeurope"})
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
