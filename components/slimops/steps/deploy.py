"""deploy: put a validated model behind an endpoint (SageMaker, Azure ML, Vertex AI) or render it for KServe.

Order matters, and it is the point of this step:
1. the gate: only a model whose gate_report.json passed and still matches its files goes anywhere (exit 3);
2. the config: target, instance type, traffic split and canary size were checked when it was parsed (exit 2);
3. credentials, then the target's own preflight (bucket, alarms): all before anything is created (exit 2);
4. only then the artifact upload and the endpoint calls, through the target's hook.

The output directory holds the deployed model's files (hard links), ``deployment.json`` (what was created,
reused, updated and deleted, and the traffic at each stage), the request bodies sent, and
``terraform.tfvars.json`` for the target's module under terraform/modules/.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from slimops.deploy import Rollout, model_hash, write_model_repository, write_model_tarball
from slimops.deploy.azureml import AzureMLTarget
from slimops.deploy.kserve import KServeTarget
from slimops.deploy.sagemaker import SageMakerTarget
from slimops.deploy.vertex import VertexTarget
from slimops.errors import BadInput
from slimops.manifest import MANIFEST, write_json_atomic
from slimops.steps import Step, StepConfig, StepResult
from slimops.steps.context import link_or_copy

Target = Annotated[Union[SageMakerTarget, AzureMLTarget, VertexTarget, KServeTarget], Field(discriminator="type")]


class DeployConfig(StepConfig):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$",
                      description="endpoint name (usually the recipe's); cloud resources are <name>-<model hash>")
    target: Target = Field(description="type: sagemaker | azureml | vertex | kserve, and that target's options")
    rollout: Rollout = Field(default_factory=Rollout, description="strategy, canary split, bake time, finish")


class Deploy(Step):
    name = "deploy"
    summary = "validated model -> SageMaker / Azure ML / Vertex AI endpoint with canary, or KServe manifests"
    Config = DeployConfig
    accepts = ("onnx",)
    role = "deploy"
    side_effects = True
    extra = "aws, azure or gcp (by target; none for kserve)"

    def run(self, ctx, config: DeployConfig) -> StepResult:
        from slimops.gate import require_passing_gate

        report = require_passing_gate(ctx.model_dir)  # GateFailed (exit 3) before anything else happens
        ctx.require_onnx("deploy")
        model_id = model_hash(report)
        record = {"target": config.target.type, "endpoint": config.name, "model_id": model_id,
                  "gate": {"passed": report["passed"], "checks": report.get("checks", [])},
                  "rollout": config.rollout.model_dump(), "stages": config.rollout.stages()}

        runner = {"sagemaker": _sagemaker, "azureml": _azureml, "vertex": _vertex, "kserve": _kserve}
        details = runner[config.target.type](ctx, config, model_id, record)

        _carry_model(ctx.model_dir, ctx.out_dir)
        write_json_atomic(ctx.out_dir / "deployment.json", record)
        actions = record.get("actions", [])
        metrics = {"target": config.target.type, "model_id": model_id,
                   **{f"{kind}_count": sum(a["action"] == kind for a in actions)
                      for kind in ("created", "reused", "updated", "deleted", "rendered")}}
        return StepResult(model_info=ctx.model_info, metrics=metrics, details=details)


def _carry_model(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        if path.is_file() and path.name not in (MANIFEST, "gate_report.json"):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)


def _write_tfvars(out: Path, values: dict) -> None:
    write_json_atomic(out / "terraform.tfvars.json", values)


# ----------------------------------------------------------------------------- targets


def _sagemaker(ctx, config: DeployConfig, model_id: str, record: dict) -> dict:
    from slimops.deploy import sagemaker as sm

    target: SageMakerTarget = config.target
    hook = sm.SageMakerHook(target.region, target.profile)
    hook.check_credentials()
    _sagemaker_preflight(hook, target)

    key = f"{target.prefix}/{config.name}/{model_id}/model.tar.gz"
    plan = sm.Plan.build(config.name, model_id, f"s3://{target.bucket}/{key}")
    with tempfile.TemporaryDirectory(prefix="slimops-deploy-") as tmp:
        tarball = write_model_tarball(ctx.model_dir, ctx.model_info.file, plan.triton_name, Path(tmp) / "model.tar.gz")
        sm.upload_artifact(hook, tarball, target.bucket, key, target.kms_key_id, plan)
    endpoint = sm.roll_out(hook, target, config.rollout, plan)
    record.update(actions=plan.actions, traffic=plan.traffic, resources={
        "model": plan.model, "endpoint_config": plan.config, "endpoint": plan.endpoint,
        "model_data_url": plan.model_data_url}, gpu=sm.is_gpu(target.instance_type))
    record["endpoint_arn"] = endpoint.get("EndpointArn")
    record["endpoint_status"] = endpoint.get("EndpointStatus")
    _write_tfvars(ctx.out_dir, sm.terraform_variables(target, config.rollout, plan))
    return {"endpoint": plan.endpoint, "model": plan.model, "instance_type": target.instance_type}


def _sagemaker_preflight(hook, target: SageMakerTarget) -> None:
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


def _azureml(ctx, config: DeployConfig, model_id: str, record: dict) -> dict:
    from slimops.deploy import azureml as az

    target: AzureMLTarget = config.target
    hook = az.AzureMLHook(target)
    hook.check_credentials()
    names = az.names(config.name, model_id)
    repository = write_model_repository(ctx.model_dir, ctx.model_info.file, config.name,
                                        ctx.out_dir / "model_repository")
    tags = {"slimops:model": model_id}
    model_id_ref, created = hook.ensure_model(az.model_entity(repository, names["model"], names["version"], tags))
    actions = [{"action": "created" if created else "reused", "kind": "model", "name": model_id_ref}]

    existing = hook.get_endpoint(names["endpoint"])
    traffic = dict(existing.traffic or {}) if existing is not None else None
    old = None
    if traffic is not None:
        if traffic.get(names["deployment"]) == 100:
            record.update(actions=actions + [{"action": "reused", "kind": "endpoint", "name": names["endpoint"]}],
                          operations=[])
            return {"endpoint": names["endpoint"], "deployment": names["deployment"]}
        serving = [d for d, share in traffic.items() if share > 0 and d != names["deployment"]]
        if len(serving) > 1:
            raise BadInput(f"Azure ML endpoint {names['endpoint']} splits traffic over {', '.join(serving)}, a rollout "
                           "slimops did not start; finish it first")
        old = serving[0] if serving else None
        if old is None:  # an endpoint with no live deployment: the new one takes everything
            traffic = None
    ops = az.plan_rollout(names["endpoint"], names["deployment"], old, config.rollout, target.mirror_percent)
    if traffic is not None:  # the endpoint exists: nothing to create, only to update
        ops = [op for op in ops if op["op"] != "create_endpoint"]
    bodies = execute_azure(hook, target, names, ops, model_id_ref, tags, actions)
    record.update(actions=actions, operations=ops)
    (ctx.out_dir / "requests").mkdir(exist_ok=True)
    write_json_atomic(ctx.out_dir / "requests" / "azureml.json", bodies)
    _write_tfvars(ctx.out_dir, az.terraform_variables(target, config.rollout, config.name, model_id_ref))
    return {"endpoint": names["endpoint"], "deployment": names["deployment"], "instance_type": target.instance_type}


def execute_azure(hook, target, names: dict, ops: list[dict], model_ref: str, tags: dict,
                  actions: list[dict]) -> list[dict]:
    """Send the planned operations in order; returns the REST bodies sent (what Azure ML received)."""
    from slimops.deploy import azureml as az

    bodies = []
    for op in ops:
        if op["op"] == "create_endpoint":
            entity = az.endpoint_entity(names["endpoint"], {}, {}, tags)
            bodies.append({"op": op["op"], "body": entity._to_rest_online_endpoint(target.location).as_dict()})
            hook.create_or_update_endpoint(entity)
            actions.append({"action": "created", "kind": "endpoint", "name": names["endpoint"]})
        elif op["op"] == "create_deployment":
            entity = az.deployment_entity(target, names["endpoint"], op["deployment"], model_ref, tags)
            bodies.append({"op": op["op"], "body": entity._to_rest_object(target.location).as_dict()})
            hook.create_or_update_deployment(entity)
            actions.append({"action": "created", "kind": "deployment", "name": op["deployment"]})
        elif op["op"] == "set_traffic":
            az.check_traffic(op["traffic"], op["mirror_traffic"])
            entity = az.endpoint_entity(names["endpoint"], op["traffic"], op["mirror_traffic"], tags)
            bodies.append({"op": op["op"], "body": entity._to_rest_online_endpoint(target.location).as_dict()})
            hook.create_or_update_endpoint(entity)
            actions.append({"action": "updated", "kind": "traffic", "name": json.dumps(op["traffic"])})
            time.sleep(op.get("bake_seconds", 0))
        elif op["op"] == "delete_deployment":
            hook.delete_deployment(op["deployment"], names["endpoint"])
            actions.append({"action": "deleted", "kind": "deployment", "name": op["deployment"]})
    return bodies


def _vertex(ctx, config: DeployConfig, model_id: str, record: dict) -> dict:
    from google.protobuf.json_format import MessageToDict

    from slimops.deploy import vertex as vx

    target: VertexTarget = config.target
    hook = vx.VertexHook(target)
    hook.check_credentials()
    ids = vx.ids(config.name, model_id)
    new_id = vx.deployed_id(model_id)
    endpoint_name = f"{vx.parent(target)}/endpoints/{ids['endpoint']}"
    existing = hook.get_endpoint(endpoint_name)
    old = None
    if existing is not None:
        split = dict(existing.traffic_split)
        if split.get(new_id) == 100:
            record.update(actions=[{"action": "reused", "kind": "endpoint", "name": endpoint_name}], requests=[])
            return {"endpoint": endpoint_name}
        serving = [d for d, share in split.items() if share > 0 and d != new_id]
        if len(serving) > 1:
            raise BadInput(f"Vertex AI endpoint {endpoint_name} splits traffic over {', '.join(serving)}, a rollout "
                           "slimops did not start; finish it first")
        old = serving[0] if serving else None
    artifact_uri = f"gs://{target.bucket}/{target.prefix}/{config.name}/{model_id}"
    requests = vx.plan_requests(target, ids["endpoint"], ids["model"], new_id, old, artifact_uri, config.name,
                                config.rollout)
    if existing is not None:
        requests = [(kind, req) for kind, req in requests if kind != "create_endpoint"]
    repository = write_model_repository(ctx.model_dir, ctx.model_info.file, config.name,
                                        ctx.out_dir / "model_repository")
    actions = []
    execute_vertex(hook, repository, artifact_uri, requests, actions, config.rollout.bake_seconds)
    record.update(actions=actions, requests=[{"call": kind, "request": MessageToDict(type(req).pb(req))}
                                             for kind, req in requests])
    _write_tfvars(ctx.out_dir, vx.terraform_variables(target, config.rollout, config.name, artifact_uri))
    return {"endpoint": endpoint_name, "machine_type": target.machine_type}


def execute_vertex(hook, repository: Path, artifact_uri: str, requests: list, actions: list[dict],
                   bake_seconds: int) -> None:
    """Send the requests in order, each long-running operation waited for."""
    uploaded = False
    for kind, request in requests:
        if kind == "upload_model":
            model_name = f"{request.parent}/models/{request.model_id}"
            if hook.get_model(model_name) is not None:  # a retry: the model is already registered
                actions.append({"action": "reused", "kind": "model", "name": model_name})
                continue
            if not uploaded:
                hook.upload_directory(repository, artifact_uri)
                uploaded = True
                actions.append({"action": "created", "kind": "gcs_objects", "name": artifact_uri})
            hook.models.upload_model(request=request).result()
            actions.append({"action": "created", "kind": "model", "name": model_name})
        elif kind == "create_endpoint":
            hook.endpoints.create_endpoint(request=request).result()
            actions.append({"action": "created", "kind": "endpoint", "name": request.endpoint_id})
        elif kind == "deploy_model":
            hook.endpoints.deploy_model(request=request).result()
            actions.append({"action": "created", "kind": "deployed_model", "name": request.deployed_model.id})
            if len(request.traffic_split) > 1:
                time.sleep(bake_seconds)
        elif kind == "update_traffic":
            hook.endpoints.update_endpoint(request=request)
            actions.append({"action": "updated", "kind": "traffic", "name": json.dumps(dict(request.endpoint.traffic_split))})
            if len(request.endpoint.traffic_split) > 1:
                time.sleep(bake_seconds)
        elif kind == "undeploy_model":
            hook.endpoints.undeploy_model(request=request).result()
            actions.append({"action": "deleted", "kind": "deployed_model", "name": request.deployed_model_id})


def _kserve(ctx, config: DeployConfig, model_id: str, record: dict) -> dict:
    from slimops.deploy import kserve as ks

    target: KServeTarget = config.target
    annotations = {"slimops.io/model-id": model_id,
                   "slimops.io/gate": "passed"}
    manifests = ks.render(target, config.rollout, config.name, model_id, annotations)
    for file, text in manifests.items():
        (ctx.out_dir / file).write_text(text)
    write_model_repository(ctx.model_dir, ctx.model_info.file, config.name, ctx.out_dir / "model_repository")
    record.update(actions=[{"action": "rendered", "kind": "manifest", "name": file} for file in manifests],
                  storage_uri=target.storage_uri,
                  next=f"copy model_repository/ to {target.storage_uri}, then kubectl apply -f inferenceservice.yaml; "
                       "inferenceservice-promote.yaml moves to 100%, inferenceservice-rollback.yaml back to the "
                       "previous revision")
    return {"manifests": sorted(manifests), "gpus": target.gpus}


STEP = Deploy
