"""Azure ML managed online endpoint (extra ``slimops[azure]``, azure-ai-ml).

The new model becomes a deployment of the endpoint at 0% traffic (optionally receiving a mirror copy of
live requests), then takes the canary share, then 100%; the deployment it replaced is deleted. The model is
registered as a ``custom_model`` asset (the validated model directory as it is), and each deployment runs the
slimops image as a custom container: an environment with the image and its ``inference_config`` (liveness,
readiness and scoring routes on port 5001, slimops.serving.platforms.AZUREML_ROUTES), the container started
with ``slimops serve`` and ``SLIMOPS_SERVE_PLATFORM=azureml``, the model under ``$AZUREML_MODEL_DIR``.

``AzureMLHook`` wraps the few MLClient calls the rollout makes; ``plan_rollout`` is pure: it returns the
sequence of endpoint traffic maps and deployment operations, so the sequence can be read (and tested)
without a workspace. Azure does not check traffic maps client-side (a split summing to 80 is accepted by
the SDK), so slimops checks every map before sending it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from slimops.deploy import (MAX_CANARY_PERCENT, Deployed, Rollout, TargetConfig, missing_credentials,
                            require_sdk, resource_name, serving_environment, write_tfvars)
from slimops.manifest import write_json_atomic
from slimops.errors import BadInput

# Managed online endpoint SKUs (Azure ML's "managed online endpoints SKU list"); GPU ones first.
GPU_SKUS = (
    "Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3", "Standard_NC16as_T4_v3", "Standard_NC64as_T4_v3",
    "Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC24rs_v3",
    "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4",
    "Standard_ND40rs_v2", "Standard_ND96asr_v4", "Standard_ND96amsr_A100_v4",
    "Standard_NC40ads_H100_v5", "Standard_NC80adis_H100_v5", "Standard_ND96isr_H100_v5",
)
CPU_SKUS = (
    "Standard_DS1_v2", "Standard_DS2_v2", "Standard_DS3_v2", "Standard_DS4_v2", "Standard_DS5_v2",
    "Standard_F2s_v2", "Standard_F4s_v2", "Standard_F8s_v2", "Standard_F16s_v2", "Standard_F32s_v2",
    "Standard_F48s_v2", "Standard_F64s_v2", "Standard_F72s_v2",
    "Standard_E2s_v3", "Standard_E4s_v3", "Standard_E8s_v3", "Standard_E16s_v3", "Standard_E32s_v3",
    "Standard_E48s_v3", "Standard_E64s_v3",
)
# Deployment and endpoint names: 3-32 characters, letters, digits and '-', starting with a letter.
MAX_NAME = 32


class AzureMLTarget(TargetConfig):
    type: Literal["azureml"]
    subscription_id: str
    resource_group: str
    workspace: str
    location: str = Field(description="Azure region of the workspace, e.g. westeurope")
    image_uri: str | None = Field(None, description="required to deploy: the slimops image (infra/container, built "
                                                    "with the serve extra) in a registry the workspace pulls from, "
                                                    "e.g. <acr>.azurecr.io/slimops:0.1.0")
    instance_type: str = Field("Standard_NC4as_T4_v3", description="managed online endpoint SKU")
    instance_count: int = Field(1, ge=1, le=100)
    mirror_percent: int = Field(0, ge=0, le=MAX_CANARY_PERCENT,
                                description="copy this share of live traffic to the new deployment while it is at 0%")
    identity: Literal["auto", "managed"] = Field(
        "auto", description="auto: env service principal, workload identity, App Service/AML managed identity or "
                            "Azure CLI login must be present; managed: trust the VM's managed identity (IMDS), "
                            "which cannot be checked without a network call")

    @field_validator("instance_type")
    @classmethod
    def _known_sku(cls, value: str) -> str:
        if value not in GPU_SKUS + CPU_SKUS:
            raise ValueError(f"{value!r} is not a managed online endpoint SKU; GPU SKUs: {', '.join(GPU_SKUS[:6])}, ...")
        return value


def credential_sources(env=os.environ) -> list[str]:
    """Which of DefaultAzureCredential's sources are configured, read from the environment and the CLI's files
    only (a token request would be a network call, and this check runs before anything is created)."""
    has = lambda *names: all(env.get(n) for n in names)  # noqa: E731
    sources = []
    if has("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET") or \
            has("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_CERTIFICATE_PATH"):
        sources.append("environment service principal")
    if has("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
        sources.append("workload identity")
    if env.get("IDENTITY_ENDPOINT") or env.get("MSI_ENDPOINT"):
        sources.append("managed identity endpoint")
    cli_dir = Path(env.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    if (cli_dir / "msal_token_cache.json").is_file() or (cli_dir / "msal_token_cache.bin").is_file():
        sources.append("Azure CLI login")
    return sources


def plan_rollout(endpoint: str, new: str, old: str | None, rollout: Rollout, mirror_percent: int) -> list[dict]:
    """The operations, in order: each endpoint update carries the full traffic map it sets."""
    ops: list[dict] = []
    if old is None:
        ops.append({"op": "create_endpoint", "endpoint": endpoint, "traffic": {}})
        ops.append({"op": "create_deployment", "deployment": new})
        ops.append({"op": "set_traffic", "traffic": {new: 100}, "mirror_traffic": {}})
        return ops
    ops.append({"op": "create_deployment", "deployment": new})  # joins at 0%: the endpoint map is unchanged
    if mirror_percent:
        ops.append({"op": "set_traffic", "traffic": {old: 100, new: 0}, "mirror_traffic": {new: mirror_percent}})
    for share in rollout.stages():
        traffic = {old: 100 - share, new: share} if share < 100 else {new: 100}
        ops.append({"op": "set_traffic", "traffic": traffic, "mirror_traffic": {}, "bake_seconds":
                    rollout.bake_seconds if share < 100 else 0})
    if rollout.finish:
        ops.append({"op": "delete_deployment", "deployment": old})
    return ops


def check_traffic(traffic: dict[str, int], mirror: dict[str, int]) -> None:
    """What Azure would reject server-side (or accept and misroute), refused before the call."""
    total = sum(traffic.values())
    if traffic and total != 100:
        raise BadInput(f"endpoint traffic {traffic} sums to {total}, not 100")
    for name, share in mirror.items():
        if traffic.get(name, 0) != 0 or not 0 < share <= MAX_CANARY_PERCENT:
            raise BadInput(f"mirror traffic to {name} ({share}%) needs that deployment at 0% live traffic and a "
                           f"share of 1-{MAX_CANARY_PERCENT}%")


def endpoint_entity(name: str, traffic: dict[str, int], mirror: dict[str, int], tags: dict):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(name=name, auth_mode="key", traffic=dict(traffic), mirror_traffic=dict(mirror),
                                 tags=tags)


def inference_config() -> dict:
    """The custom container's routes, as Azure ML's environment ``inference_config`` declares them: the values
    ``slimops serve --platform azureml`` answers."""
    from slimops.serving.platforms import AZUREML_ROUTES

    port = AZUREML_ROUTES["port"]
    return {"liveness_route": {"port": port, "path": AZUREML_ROUTES["liveness"]},
            "readiness_route": {"port": port, "path": AZUREML_ROUTES["readiness"]},
            "scoring_route": {"port": port, "path": AZUREML_ROUTES["predict"]}}


def environment_entity(target: AzureMLTarget):
    """The slimops image as an inline (anonymous) environment of the deployment, with its routes."""
    from azure.ai.ml.entities import Environment

    return Environment(image=target.image_uri, inference_config=inference_config(),
                       description="slimops serve (custom container)")


def deployment_entity(target: AzureMLTarget, endpoint: str, deployment: str, model_id: str, tags: dict):
    from azure.ai.ml.entities import ManagedOnlineDeployment

    # Azure ML runs the image's own entrypoint and command (`slimops serve`: infra/container/Containerfile)
    # and sets AZUREML_MODEL_DIR to where it mounted the model; the variable below makes the mode explicit.
    deployment = ManagedOnlineDeployment(name=deployment, endpoint_name=endpoint, model=model_id,
                                         environment=environment_entity(target),
                                         environment_variables=serving_environment("azureml"),
                                         instance_type=target.instance_type, instance_count=target.instance_count,
                                         tags=tags)
    return deployment


def model_entity(model_dir: Path, name: str, version: str, tags: dict):
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    return Model(path=str(model_dir), type=AssetTypes.CUSTOM_MODEL, name=name, version=version, tags=tags,
                 description="slimops: validated model directory (gate report and manifest inside), served by "
                             "the slimops image")


class AzureMLHook:
    """The MLClient calls the rollout makes, each waiting for its long-running operation."""

    def __init__(self, target: AzureMLTarget):
        self.target = target  # the SDK is imported on the first call, after the credential check

    def check_credentials(self) -> None:
        if self.target.identity == "managed":
            return
        if not credential_sources():
            raise missing_credentials(
                "Azure", "no service principal or workload identity in the environment, no managed identity "
                "endpoint, no Azure CLI login", "set AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, run "
                "`az login`, or set target.identity: managed on an Azure VM")

    @property
    def client(self):
        if not hasattr(self, "_client"):
            require_sdk("azure.ai.ml", "azure")
            from azure.ai.ml import MLClient
            from azure.identity import DefaultAzureCredential

            self._client = MLClient(DefaultAzureCredential(), self.target.subscription_id,
                                    self.target.resource_group, self.target.workspace)
        return self._client

    def get_endpoint(self, name: str):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.online_endpoints.get(name)
        except ResourceNotFoundError:
            return None

    def ensure_model(self, model) -> tuple[str, bool]:
        """The asset id of the model version, registering it unless a retry finds it there already."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.models.get(model.name, version=model.version).id, False
        except ResourceNotFoundError:
            return self.client.models.create_or_update(model).id, True

    def create_or_update_endpoint(self, endpoint) -> None:
        self.client.online_endpoints.begin_create_or_update(endpoint).result()

    def create_or_update_deployment(self, deployment) -> None:
        self.client.online_deployments.begin_create_or_update(deployment).result()

    def delete_deployment(self, name: str, endpoint: str) -> None:
        self.client.online_deployments.begin_delete(name=name, endpoint_name=endpoint).result()


def names(endpoint: str, model_id: str) -> dict:
    return {"endpoint": endpoint[:MAX_NAME], "deployment": resource_name("d", model_id, MAX_NAME),
            "model": resource_name(endpoint, model_id, 255), "version": "1"}


def terraform_variables(target: AzureMLTarget, rollout: Rollout, endpoint: str, model_uri: str) -> dict:
    """Values for terraform/modules/azureml-online-endpoint: its variables.tf declares exactly these."""
    return {
        "name": endpoint,
        "location": target.location,
        "workspace_id": (f"/subscriptions/{target.subscription_id}/resourceGroups/{target.resource_group}"
                         f"/providers/Microsoft.MachineLearningServices/workspaces/{target.workspace}"),
        "deployment_name": "initial",
        "model_asset_id": model_uri,
        "image_uri": target.image_uri,
        "instance_type": target.instance_type,
        "instance_count": target.instance_count,
    }


# ----------------------------------------------------------------------------- the deployment


def deploy(target: AzureMLTarget, rollout: Rollout, name: str, model_id: str, model_dir: Path, model_file: str,
           out_dir: Path) -> Deployed:
    """Register the model directory, then create or update the endpoint's deployments and traffic; the request bodies
    go to ``out_dir/requests/azureml.json``, the Terraform values to ``out_dir/terraform.tfvars.json``."""
    if not target.image_uri:
        raise BadInput("target.image_uri is missing: Azure ML runs the slimops image as the deployment's custom "
                       "container; push it (infra/container) and give its reference. Nothing was created")
    hook = AzureMLHook(target)
    hook.check_credentials()
    resources = names(name, model_id)
    tags = {"slimops:model": model_id}
    model_ref, created = hook.ensure_model(model_entity(model_dir, resources["model"], resources["version"], tags))
    actions = [{"action": "created" if created else "reused", "kind": "model", "name": model_ref}]
    details = {"endpoint": resources["endpoint"], "deployment": resources["deployment"]}

    existing = hook.get_endpoint(resources["endpoint"])
    traffic = dict(existing.traffic or {}) if existing is not None else None
    old = None
    if traffic is not None:
        if traffic.get(resources["deployment"]) == 100:
            reused = {"action": "reused", "kind": "endpoint", "name": resources["endpoint"]}
            return Deployed({"actions": actions + [reused], "operations": []}, details)
        serving = [d for d, share in traffic.items() if share > 0 and d != resources["deployment"]]
        if len(serving) > 1:
            raise BadInput(f"Azure ML endpoint {resources['endpoint']} splits traffic over {', '.join(serving)}, a "
                           "rollout slimops did not start; finish it first")
        old = serving[0] if serving else None
        if old is None:  # an endpoint with no live deployment: the new one takes everything
            traffic = None
    ops = plan_rollout(resources["endpoint"], resources["deployment"], old, rollout, target.mirror_percent)
    if traffic is not None:  # the endpoint exists: nothing to create, only to update
        ops = [op for op in ops if op["op"] != "create_endpoint"]
    bodies = execute_operations(hook, target, resources, ops, model_ref, tags, actions)
    (out_dir / "requests").mkdir(exist_ok=True)
    write_json_atomic(out_dir / "requests" / "azureml.json", bodies)
    write_tfvars(out_dir, terraform_variables(target, rollout, name, model_ref))
    return Deployed({"actions": actions, "operations": ops}, {**details, "instance_type": target.instance_type})


def execute_operations(hook, target: AzureMLTarget, resources: dict, ops: list[dict], model_ref: str, tags: dict,
                       actions: list[dict]) -> list[dict]:
    """Send the planned operations in order; returns the REST bodies sent (what Azure ML received)."""
    bodies = []
    for op in ops:
        if op["op"] == "create_endpoint":
            entity = endpoint_entity(resources["endpoint"], {}, {}, tags)
            bodies.append({"op": op["op"], "body": entity._to_rest_online_endpoint(target.location).as_dict()})
            hook.create_or_update_endpoint(entity)
            actions.append({"action": "created", "kind": "endpoint", "name": resources["endpoint"]})
        elif op["op"] == "create_deployment":
            entity = deployment_entity(target, resources["endpoint"], op["deployment"], model_ref, tags)
            # The SDK registers the inline environment first (an anonymous environment version: the image and its
            # routes), then sends the deployment naming it: both bodies are recorded.
            bodies.append({"op": "create_environment", "body": entity.environment._to_rest_object().as_dict()})
            bodies.append({"op": op["op"], "body": entity._to_rest_object(target.location).as_dict()})
            hook.create_or_update_deployment(entity)
            actions.append({"action": "created", "kind": "deployment", "name": op["deployment"]})
        elif op["op"] == "set_traffic":
            check_traffic(op["traffic"], op["mirror_traffic"])
            entity = endpoint_entity(resources["endpoint"], op["traffic"], op["mirror_traffic"], tags)
            bodies.append({"op": op["op"], "body": entity._to_rest_online_endpoint(target.location).as_dict()})
            hook.create_or_update_endpoint(entity)
            actions.append({"action": "updated", "kind": "traffic", "name": json.dumps(op["traffic"])})
            time.sleep(op.get("bake_seconds", 0))
        elif op["op"] == "delete_deployment":
            hook.delete_deployment(op["deployment"], resources["endpoint"])
            actions.append({"action": "deleted", "kind": "deployment", "name": op["deployment"]})
    return bodies
