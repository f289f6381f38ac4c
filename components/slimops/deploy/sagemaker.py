"""SageMaker real-time endpoint through boto3 (extra ``slimops[aws]``).

The model is the slimops image in its SageMaker serving mode: SageMaker runs ``<image> serve`` (the image's
entrypoint is ``slimops``), with ``SLIMOPS_SERVE_PLATFORM=sagemaker``, the validated model directory unpacked
from model.tar.gz into /opt/ml/model, ``GET /ping`` and ``POST /invocations`` on port 8080.

``SageMakerHook`` is the only code that talks to AWS. ``roll_out`` decides what to call:

- no endpoint yet: model, endpoint config (one variant), endpoint;
- ``update: blue_green``: one UpdateEndpoint with a DeploymentConfig; SageMaker shifts traffic (canary or
  linear), watches the CloudWatch alarms and rolls back by itself;
- ``update: variants``: the new model joins the endpoint as a second production variant at weight 0, then
  UpdateEndpointWeightsAndCapacities moves traffic stage by stage; after each bake the step reads the alarms
  and rolls back itself if one fires.

Every name is ``<endpoint>-<model hash>``: a retry finds the model, config and endpoint an earlier try made
and carries on from there instead of creating them twice.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from slimops.deploy import (Deployed, Rollout, TargetConfig, missing_credentials, require_sdk, resource_name,
                            serving_environment, write_model_tarball, write_tfvars)
from slimops.errors import BadInput, GateFailed, SlimopsError

# GPU families among SageMaker's real-time instance types (the list itself comes from botocore's API model).
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5", "p5e", "p5en")
BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack")
# Stable variant names: CloudWatch alarms name their EndpointName + VariantName dimensions, so production
# traffic is always on "primary" (a blue/green update keeps the name) and a variants-mode canary on "canary".
PRIMARY, CANARY = "primary", "canary"


def known_instance_types() -> list[str]:
    """Every instance type SageMaker accepts for a production variant, as botocore's API model lists them."""
    botocore_session = require_sdk("botocore.session", "aws")
    model = botocore_session.get_session().get_service_model("sagemaker")
    return list(model.shape_for("ProductionVariantInstanceType").enum)


def is_gpu(instance_type: str) -> bool:
    return instance_type.split(".")[1] in GPU_FAMILIES


class SageMakerTarget(TargetConfig):
    type: Literal["sagemaker"]
    region: str = Field(description="AWS region, e.g. us-east-1")
    bucket: str = Field(description="S3 bucket for model.tar.gz (terraform/modules/sagemaker-endpoint makes one)")
    prefix: str = Field("slimops", description="S3 key prefix")
    role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", description="SageMaker execution role")
    image_uri: str = Field(description="the slimops image in ECR (infra/container; built with the serve extra): "
                                       "SageMaker starts it as `<image> serve`")
    instance_type: str = Field("ml.g5.xlarge", description="production variant instance type")
    instance_count: int = Field(1, ge=1, le=100)
    max_instance_count: int = Field(4, ge=1, le=100, description="autoscaling ceiling (terraform module)")
    update: Literal["blue_green", "variants"] = Field(
        "blue_green", description="blue_green: UpdateEndpoint with a DeploymentConfig (SageMaker shifts traffic and "
                                  "rolls back on alarms); variants: a second production variant + weight updates")
    alarms: list[str] = Field(default_factory=list, description="CloudWatch alarms that roll the new model back")
    termination_wait_seconds: int = Field(300, ge=0, le=3600, description="blue_green: old fleet kept this long")
    max_execution_seconds: int = Field(3600, ge=600, le=28800, description="blue_green: limit for the whole update")
    kms_key_id: str | None = Field(None, description="KMS key for the endpoint volumes and the S3 object")
    profile: str | None = Field(None, description="AWS profile (default: the standard credential chain)")
    wait_seconds: int = Field(3600, ge=1, description="how long to wait for the endpoint to settle")
    poll_seconds: float = Field(30, ge=0, description="how often to look at the endpoint while waiting")

    @field_validator("instance_type")
    @classmethod
    def _known_instance_type(cls, value: str) -> str:
        known = known_instance_types()
        if value not in known:
            gpus = [t for t in known if is_gpu(t)]
            raise ValueError(f"{value!r} is not a SageMaker real-time instance type; GPU types: "
                             f"{', '.join(gpus[:8])}, ... (botocore lists {len(known)})")
        return value


@dataclass
class Plan:
    """The names of everything this deploy touches; all derived from the endpoint name and the model hash."""

    endpoint: str
    model: str  # SageMaker model
    config: str  # endpoint config serving only this model
    canary_config: str  # variants mode: champion + this model
    model_data_url: str
    actions: list[dict] = field(default_factory=list)
    traffic: list[dict] = field(default_factory=list)

    @classmethod
    def build(cls, endpoint: str, model_id: str, model_data_url: str) -> "Plan":
        name = resource_name(endpoint, model_id)
        return cls(endpoint=endpoint, model=name, config=name, canary_config=resource_name(f"{endpoint}-canary", model_id),
                   model_data_url=model_data_url)

    def did(self, action: str, kind: str, name: str) -> None:
        self.actions.append({"action": action, "kind": kind, "name": name})


class CanaryRolledBack(GateFailed):
    """The new model was taken out of service because an alarm fired while it served traffic (exit 3)."""


class SageMakerHook:
    """boto3 clients for one region; the only place that calls AWS."""

    def __init__(self, region: str, profile: str | None = None):
        boto3 = require_sdk("boto3", "aws")
        from botocore.exceptions import ProfileNotFound

        try:
            self.session = boto3.Session(region_name=region, profile_name=profile)
        except ProfileNotFound:
            raise BadInput(f"AWS profile {profile!r} not found; name a profile from ~/.aws/config or drop "
                           "target.profile") from None

    def check_credentials(self) -> None:
        """Before anything is created: the credential chain (env, profile, SSO, container/instance role)
        must resolve, or the deploy stops with exit 2 and nothing half made."""
        if self.session.get_credentials() is None:
            raise missing_credentials("AWS", "environment, shared files, SSO and instance role all came up empty",
                                      "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or run on a role")

    @cached_property
    def sm(self):
        return self.session.client("sagemaker")

    @cached_property
    def s3(self):
        return self.session.client("s3")

    @cached_property
    def cloudwatch(self):
        return self.session.client("cloudwatch")

    # -- lookups that answer None for "not there"

    def describe_model(self, name: str) -> dict | None:
        return self._maybe(self.sm.describe_model, ModelName=name)

    def describe_endpoint_config(self, name: str) -> dict | None:
        return self._maybe(self.sm.describe_endpoint_config, EndpointConfigName=name)

    def describe_endpoint(self, name: str) -> dict | None:
        return self._maybe(self.sm.describe_endpoint, EndpointName=name)

    @staticmethod
    def _maybe(call, **kwargs) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return call(**kwargs)
        except ClientError as err:
            message = err.response.get("Error", {}).get("Message", "")
            if err.response.get("Error", {}).get("Code") == "ValidationException" and "ould not find" in message:
                return None
            raise

    def object_sha256(self, bucket: str, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head.get("Metadata", {}).get("sha256")

    def missing_alarms(self, names: list[str]) -> list[str]:
        if not names:
            return []
        found = {a["AlarmName"] for a in self.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]}
        return [name for name in names if name not in found]

    def alarms_firing(self, names: list[str]) -> list[str]:
        if not names:
            return []
        alarms = self.cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]
        return [a["AlarmName"] for a in alarms if a["StateValue"] == "ALARM"]

    def wait_until_settled(self, endpoint: str, timeout: float, poll: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            described = self.sm.describe_endpoint(EndpointName=endpoint)
            status = described["EndpointStatus"]
            if status == "Failed":
                raise SlimopsError(f"SageMaker endpoint {endpoint} failed: {described.get('FailureReason', '?')}")
            if status not in BUSY:
                return described
            if time.monotonic() > deadline:
                raise SlimopsError(f"SageMaker endpoint {endpoint} still {status} after {timeout:.0f} s; rerun the "
                                   "deploy to re-attach and keep waiting")
            time.sleep(poll)


# ----------------------------------------------------------------------------- orchestration


def upload_artifact(hook: SageMakerHook, tarball: Path, bucket: str, key: str, kms_key_id: str | None,
                    plan: Plan) -> None:
    """Upload model.tar.gz unless the same bytes are already there (a retry re-attaches)."""
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if hook.object_sha256(bucket, key) == digest:
        plan.did("reused", "s3_object", f"s3://{bucket}/{key}")
        return
    extra = {"Metadata": {"sha256": digest}}
    if kms_key_id:
        extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key_id)
    hook.s3.upload_file(str(tarball), bucket, key, ExtraArgs=extra)
    plan.did("created", "s3_object", f"s3://{bucket}/{key}")


def ensure_model(hook: SageMakerHook, target: SageMakerTarget, plan: Plan) -> None:
    if hook.describe_model(plan.model):
        plan.did("reused", "model", plan.model)
        return
    hook.sm.create_model(
        ModelName=plan.model, ExecutionRoleArn=target.role_arn,
        PrimaryContainer=container_definition(target.image_uri, plan.model_data_url),
        EnableNetworkIsolation=True,  # slimops serve reads /opt/ml/model and listens: it needs no network
        Tags=[{"Key": "slimops:endpoint", "Value": plan.endpoint}])
    plan.did("created", "model", plan.model)


def container_definition(image_uri: str, model_data_url: str) -> dict:
    """CreateModel's PrimaryContainer: the slimops image, which SageMaker starts as ``<image> serve`` (no field
    sets arguments: SageMaker always passes ``serve``), with the model unpacked into /opt/ml/model."""
    return {"Image": image_uri, "ModelDataUrl": model_data_url, "Environment": serving_environment("sagemaker")}


def variant(target: SageMakerTarget, name: str, model: str, weight: float, instance_type: str | None = None,
            count: int | None = None) -> dict:
    return {"VariantName": name, "ModelName": model, "InitialInstanceCount": count or target.instance_count,
            "InstanceType": instance_type or target.instance_type, "InitialVariantWeight": float(weight)}


def ensure_endpoint_config(hook: SageMakerHook, target: SageMakerTarget, plan: Plan, name: str,
                           variants: list[dict]) -> None:
    if hook.describe_endpoint_config(name):
        plan.did("reused", "endpoint_config", name)
        return
    kwargs = {"KmsKeyId": target.kms_key_id} if target.kms_key_id else {}
    hook.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variants, **kwargs)
    plan.did("created", "endpoint_config", name)


def deployment_config(target: SageMakerTarget, rollout: Rollout) -> dict:
    """UpdateEndpoint's DeploymentConfig: SageMaker's own blue/green with canary or linear traffic shifting."""
    wait = rollout.bake_seconds
    if rollout.strategy == "canary":
        routing = {"Type": "CANARY", "WaitIntervalInSeconds": wait,
                   "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": rollout.canary.challenger}}
    elif rollout.strategy == "linear":
        routing = {"Type": "LINEAR", "WaitIntervalInSeconds": wait,
                   "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": rollout.linear_step_percent}}
    else:
        routing = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": wait}
    config = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                        "TerminationWaitInSeconds": target.termination_wait_seconds,
                                        "MaximumExecutionTimeoutInSeconds": target.max_execution_seconds}}
    if target.alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": name} for name in target.alarms]}
    return config


def roll_out(hook: SageMakerHook, target: SageMakerTarget, rollout: Rollout, plan: Plan) -> dict:
    """Create or update the endpoint so that it serves ``plan.model``; returns the final DescribeEndpoint."""
    ensure_model(hook, target, plan)
    ensure_endpoint_config(hook, target, plan, plan.config, [variant(target, PRIMARY, plan.model, 100)])
    wait = {"timeout": target.wait_seconds, "poll": target.poll_seconds}

    endpoint = hook.describe_endpoint(plan.endpoint)
    if endpoint is None:
        # The first model of an endpoint has nothing to canary against: it takes all traffic.
        hook.sm.create_endpoint(EndpointName=plan.endpoint, EndpointConfigName=plan.config,
                                Tags=[{"Key": "slimops:endpoint", "Value": plan.endpoint}])
        plan.did("created", "endpoint", plan.endpoint)
        plan.traffic.append({PRIMARY: 100})
        return hook.wait_until_settled(plan.endpoint, **wait)

    if endpoint["EndpointStatus"] in BUSY:  # an earlier try's create or update is still running: wait for it
        endpoint = hook.wait_until_settled(plan.endpoint, **wait)
    current = endpoint["EndpointConfigName"]
    if current == plan.config:
        plan.did("reused", "endpoint", plan.endpoint)
        return endpoint
    if current == plan.canary_config:  # an earlier try stopped mid-canary: pick up from its config
        champion_config = hook.describe_endpoint_config(current)
        champion = next(v for v in champion_config["ProductionVariants"] if v["VariantName"] != CANARY)
        previous = _config_serving(hook, champion["ModelName"], plan)
    else:
        previous = hook.describe_endpoint_config(current)
        variants = previous["ProductionVariants"]
        if len(variants) != 1:
            raise BadInput(f"SageMaker endpoint {plan.endpoint} serves {len(variants)} variants "
                           f"({', '.join(v['VariantName'] for v in variants)}) from config {current}, an unfinished "
                           "rollout that slimops did not start; finish or roll it back first")
        champion = variants[0]

    if target.update == "blue_green":
        return _blue_green(hook, target, rollout, plan, previous, wait)
    return _variants(hook, target, rollout, plan, champion, previous, wait)


def _config_serving(hook: SageMakerHook, model: str, plan: Plan) -> dict:
    """The single-variant config of the champion (named like ours: ``<endpoint>-<its hash>``)."""
    config = hook.describe_endpoint_config(model)
    if config is None:
        raise BadInput(f"endpoint config {model} of the model being replaced is gone; roll the endpoint "
                       f"{plan.endpoint} back to one variant by hand, then rerun")
    return config


def _blue_green(hook, target, rollout, plan, previous, wait) -> dict:
    hook.sm.update_endpoint(EndpointName=plan.endpoint, EndpointConfigName=plan.config,
                            DeploymentConfig=deployment_config(target, rollout))
    plan.did("updated", "endpoint", plan.endpoint)
    plan.traffic.append({"blue_green": rollout.strategy, "challenger_stages": rollout.stages()})
    # Allow for every bake interval plus the old fleet's termination wait.
    endpoint = hook.wait_until_settled(plan.endpoint, timeout=max(wait["timeout"], target.max_execution_seconds),
                                       poll=wait["poll"])
    if endpoint["EndpointConfigName"] != plan.config:
        raise CanaryRolledBack(f"SageMaker rolled endpoint {plan.endpoint} back to {endpoint['EndpointConfigName']}"
                               f" (auto-rollback alarms: {', '.join(target.alarms) or 'none'}); the new model "
                               f"{plan.model} serves no traffic")
    _remove_previous(hook, plan, previous)
    return endpoint


def _variants(hook, target, rollout, plan, champion, previous, wait) -> dict:
    old = champion["VariantName"]
    ensure_endpoint_config(hook, target, plan, plan.canary_config, [
        variant(target, old, champion["ModelName"], 100, champion.get("InstanceType"),
                champion.get("InitialInstanceCount")),
        variant(target, CANARY, plan.model, 0)])
    endpoint = hook.describe_endpoint(plan.endpoint)
    if endpoint["EndpointConfigName"] != plan.canary_config:
        # The new model joins at weight 0: up and healthy before it sees a request.
        hook.sm.update_endpoint(EndpointName=plan.endpoint, EndpointConfigName=plan.canary_config)
        plan.did("updated", "endpoint", plan.endpoint)
        hook.wait_until_settled(plan.endpoint, **wait)
    for share in rollout.stages():
        shift_traffic(hook, plan, {CANARY: share, old: 100 - share})
        endpoint = hook.wait_until_settled(plan.endpoint, **wait)
        if share == 100:
            break
        time.sleep(rollout.bake_seconds)
        firing = hook.alarms_firing(target.alarms)
        if firing:
            shift_traffic(hook, plan, {CANARY: 0, old: 100})
            hook.wait_until_settled(plan.endpoint, **wait)
            hook.sm.update_endpoint(EndpointName=plan.endpoint, EndpointConfigName=previous["EndpointConfigName"])
            plan.did("updated", "endpoint", plan.endpoint)
            hook.wait_until_settled(plan.endpoint, **wait)
            raise CanaryRolledBack(f"alarm {', '.join(firing)} fired while {plan.model} served {share}% of "
                                   f"{plan.endpoint}; rolled back to {previous['EndpointConfigName']}")
    if not rollout.finish:
        return endpoint
    # Drop the old variant: the endpoint moves to the config that serves only the new model.
    hook.sm.update_endpoint(EndpointName=plan.endpoint, EndpointConfigName=plan.config)
    plan.did("updated", "endpoint", plan.endpoint)
    endpoint = hook.wait_until_settled(plan.endpoint, **wait)
    _delete(hook, plan, "endpoint_config", plan.canary_config)
    _remove_previous(hook, plan, previous)
    return endpoint


def shift_traffic(hook: SageMakerHook, plan: Plan, weights: dict[str, int]) -> None:
    hook.sm.update_endpoint_weights_and_capacities(
        EndpointName=plan.endpoint,
        DesiredWeightsAndCapacities=[{"VariantName": name, "DesiredWeight": float(w)} for name, w in weights.items()])
    plan.did("updated", "weights", plan.endpoint)
    plan.traffic.append(dict(weights))


def _remove_previous(hook: SageMakerHook, plan: Plan, previous: dict) -> None:
    """The replaced model's endpoint config and model, once nothing routes to them."""
    _delete(hook, plan, "endpoint_config", previous["EndpointConfigName"])
    for v in previous["ProductionVariants"]:
        if v["ModelName"] != plan.model:
            _delete(hook, plan, "model", v["ModelName"])


def _delete(hook: SageMakerHook, plan: Plan, kind: str, name: str) -> None:
    from botocore.exceptions import ClientError

    call = {"endpoint_config": lambda: hook.sm.delete_endpoint_config(EndpointConfigName=name),
            "model": lambda: hook.sm.delete_model(ModelName=name),
            "endpoint": lambda: hook.sm.delete_endpoint(EndpointName=name)}[kind]
    try:
        call()
    except ClientError as err:  # already gone (a retry after a partial cleanup)
        if "ould not find" not in err.response.get("Error", {}).get("Message", ""):
            raise
    plan.did("deleted", kind, name)


def tear_down(hook: SageMakerHook, endpoint: str) -> list[dict]:
    """Delete an endpoint with its config and models (the ones its config names)."""
    plan = Plan(endpoint=endpoint, model="", config="", canary_config="", model_data_url="")
    described = hook.describe_endpoint(endpoint)
    if described is None:
        return plan.actions
    config = hook.describe_endpoint_config(described["EndpointConfigName"])
    _delete(hook, plan, "endpoint", endpoint)
    if config:
        _delete(hook, plan, "endpoint_config", config["EndpointConfigName"])
        for v in config["ProductionVariants"]:
            _delete(hook, plan, "model", v["ModelName"])
    return plan.actions


def terraform_variables(target: SageMakerTarget, rollout: Rollout, plan: Plan) -> dict:
    """Values for terraform/modules/sagemaker-endpoint: every key is a variable of the module and every variable
    without a default is a key (tests/test_terraform.py holds the module to it).

    The module bootstraps the endpoint with the same names the step derives, so a deploy after
    ``terraform apply`` finds the model, config and endpoint there and re-attaches."""
    return {
        "name": plan.endpoint,
        "model_name": plan.model,
        "endpoint_config_name": plan.config,
        "variant_name": PRIMARY,
        "region": target.region,
        "image_uri": target.image_uri,
        "model_data_url": plan.model_data_url,
        "instance_type": target.instance_type,
        "instance_count": target.instance_count,
        "max_instance_count": max(target.max_instance_count, target.instance_count),
        "artifact_bucket_name": target.bucket,
        "canary_percent": rollout.canary.challenger,
        "bake_seconds": rollout.bake_seconds,
        "termination_wait_seconds": target.termination_wait_seconds,
        "max_execution_seconds": target.max_execution_seconds,
        "extra_rollback_alarm_names": list(target.alarms),
    }


# ----------------------------------------------------------------------------- the deployment


def deploy(target: SageMakerTarget, rollout: Rollout, name: str, model_id: str, model_dir: Path, model_file: str,
           out_dir: Path) -> Deployed:
    """Preflight, upload the model tarball, roll out; ``terraform.tfvars.json`` goes into ``out_dir``."""
    hook = SageMakerHook(target.region, target.profile)
    hook.check_credentials()
    preflight(hook, target)

    key = f"{target.prefix}/{name}/{model_id}/model.tar.gz"
    plan = Plan.build(name, model_id, f"s3://{target.bucket}/{key}")
    with tempfile.TemporaryDirectory(prefix="slimops-deploy-") as tmp:
        tarball = write_model_tarball(model_dir, Path(tmp) / "model.tar.gz")
        upload_artifact(hook, tarball, target.bucket, key, target.kms_key_id, plan)
    endpoint = roll_out(hook, target, rollout, plan)
    record = {"actions": plan.actions, "traffic": plan.traffic,
              "resources": {"model": plan.model, "endpoint_config": plan.config, "endpoint": plan.endpoint,
                            "model_data_url": plan.model_data_url},
              "gpu": is_gpu(target.instance_type),
              "endpoint_arn": endpoint.get("EndpointArn"), "endpoint_status": endpoint.get("EndpointStatus")}
    write_tfvars(out_dir, terraform_variables(target, rollout, plan))
    return Deployed(record, {"endpoint": plan.endpoint, "model": plan.model, "instance_type": target.instance_type})


def preflight(hook: SageMakerHook, target: SageMakerTarget) -> None:
    """What would otherwise fail half-way: the bucket and every rollback alarm must exist."""
    from botocore.exceptions import ClientError

    try:
        hook.s3.head_bucket(Bucket=target.bucket)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code")
        raise BadInput(f"S3 bucket {target.bucket!r} is not reachable ({code}); create it (terraform/modules/"
                       "sagemaker-endpoint makes one) or fix target.bucket. Nothing was created") from None
    missing = hook.missing_alarms(target.alarms)
    if missing:
        raise BadInput(f"CloudWatch alarm(s) {', '.join(missing)} not found in {target.region}; create them or fix "
                       "target.alarms. Nothing was created")
