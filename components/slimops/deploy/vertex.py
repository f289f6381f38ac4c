"""Vertex AI endpoint on GPU or TPU machines (extra ``slimops[gcp]``, google-cloud-aiplatform).

The step builds the real ``aiplatform_v1`` request objects: UploadModelRequest (the validated model directory
in Cloud Storage, served by the slimops image: args ``serve``, ``SLIMOPS_SERVE_PLATFORM=vertex``, port 8080,
predict route ``/predict``, health route ``/health``), CreateEndpointRequest, DeployModelRequest with dedicated
resources (machine type, accelerator type and count; TPU v5e/v6e machine types carry their chips) and a
traffic split, then the traffic updates and the UndeployModelRequest of the replaced model.
``VertexHook`` is the only code that sends them.
"""

from __future__ import annotations

import json
import re
import time
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from slimops.deploy import (SERVE_ARGS, Deployed, Rollout, TargetConfig, missing_credentials, model_files,
                            require_sdk, resource_name, serving_environment, write_tfvars)
from slimops.errors import BadInput

# machine type pattern -> (accelerator type, allowed accelerator counts); None: no accelerator allowed.
GPU_MACHINES = {
    r"n1-(standard|highmem|highcpu)-\d+": ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100",
                                           "NVIDIA_TESLA_P4"),
    r"g2-standard-(4|8|12|16|24|32|48|96)": ("NVIDIA_L4",),
    r"a2-highgpu-(1|2|4|8)g|a2-megagpu-16g": ("NVIDIA_TESLA_A100",),
    r"a2-ultragpu-(1|2|4|8)g": ("NVIDIA_A100_80GB",),
    r"a3-highgpu-(1|2|4|8)g": ("NVIDIA_H100_80GB",),
    r"a3-megagpu-8g": ("NVIDIA_H100_MEGA_80GB",),
}
# Machine types with a fixed GPU count: the count is part of the name (a2-highgpu-4g -> 4) or fixed per size.
G2_GPUS = {"4": 1, "8": 1, "12": 1, "16": 1, "32": 1, "24": 2, "48": 4, "96": 8}
# TPU machine types Vertex AI prediction serves on (v5e and v6e single host); the chips come with the machine.
TPU_MACHINES = {f"ct5lp-hightpu-{n}t": n for n in (1, 4, 8)} | {f"ct6e-standard-{n}t": n for n in (1, 4, 8)}
CPU_MACHINES = r"(n1|n2|n2d|e2|c2|c2d|c3)-(standard|highmem|highcpu)-\d+"


class VertexTarget(TargetConfig):
    type: Literal["vertex"]
    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    location: str = Field("us-central1", description="region, e.g. us-central1")
    bucket: str = Field(description="Cloud Storage bucket for the model directory (the terraform module makes one)")
    prefix: str = "slimops"
    image_uri: str = Field(description="the slimops image (infra/container, built with the serve extra) in "
                                       "Artifact Registry")
    machine_type: str = Field("g2-standard-8", description="GPU (n1/g2/a2/a3) or TPU (ct5lp/ct6e) machine type")
    accelerator_type: str | None = Field("NVIDIA_L4", description="GPU type; none for CPU and TPU machines")
    accelerator_count: int = Field(1, ge=0, le=16)
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    service_account: str | None = Field(None, description="service account the model runs as")
    metadata_credentials: bool = Field(False, description="trust the GCE/GKE metadata server for credentials "
                                                          "(not checked before the first call)")

    @model_validator(mode="after")
    def _machine_fits_accelerator(self):
        machine, accel, count = self.machine_type, self.accelerator_type, self.accelerator_count
        if machine in TPU_MACHINES:
            if accel:
                raise ValueError(f"{machine} is a TPU machine type; its chips come with it: drop accelerator_type")
            return self
        for pattern, accelerators in GPU_MACHINES.items():
            if re.fullmatch(pattern, machine):
                if accel not in accelerators:
                    raise ValueError(f"{machine} takes accelerator_type {' or '.join(accelerators)}, got {accel!r}")
                expected = _fixed_gpu_count(machine)
                if expected and count != expected:
                    raise ValueError(f"{machine} comes with {expected} GPU(s); set accelerator_count {expected}")
                if not expected and count not in (1, 2, 4, 8):
                    raise ValueError(f"accelerator_count on {machine} is 1, 2, 4 or 8, got {count}")
                return self
        if re.fullmatch(CPU_MACHINES, machine):
            if accel:
                raise ValueError(f"{machine} takes no accelerator; use an n1, g2, a2 or a3 machine type for a GPU")
            return self
        raise ValueError(f"{machine!r} is not a Vertex AI prediction machine type; GPU: g2-standard-8 (NVIDIA_L4), "
                         f"n1-standard-8 (NVIDIA_TESLA_T4), a2-highgpu-1g (NVIDIA_TESLA_A100), a3-highgpu-1g; "
                         f"TPU: {', '.join(TPU_MACHINES)}")

    @model_validator(mode="after")
    def _replicas(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self


def _fixed_gpu_count(machine: str) -> int | None:
    if machine.startswith("g2-standard-"):
        return G2_GPUS[machine.rsplit("-", 1)[1]]
    match = re.fullmatch(r"a[23]-\w+-(\d+)g", machine)
    return int(match.group(1)) if match else None


class VertexHook:
    """The aiplatform_v1 clients for one region; the only code that calls Vertex AI."""

    def __init__(self, target: VertexTarget):
        self.target = target  # the SDK is imported on the first call, after the credential check

    def check_credentials(self) -> None:
        """Application Default Credentials from the environment or gcloud's file, without asking the metadata
        server (a network call) unless the target says to rely on it."""
        if self.target.metadata_credentials:
            return
        require_sdk("google.auth", "gcp")
        import google.auth
        from google.auth import exceptions

        class _NoMetadataServer:  # google.auth.default's metadata probe gets an immediate "unreachable"
            def __call__(self, *args, **kwargs):
                raise exceptions.TransportError("metadata server not consulted before deploy")

        try:
            google.auth.default(request=_NoMetadataServer())
        except exceptions.DefaultCredentialsError:
            raise missing_credentials("Google Cloud", "no GOOGLE_APPLICATION_CREDENTIALS and no gcloud application-"
                                      "default login", "run `gcloud auth application-default login`, set "
                                      "GOOGLE_APPLICATION_CREDENTIALS, or set target.metadata_credentials: true on "
                                      "GCE/GKE") from None

    def _options(self):
        return {"api_endpoint": f"{self.target.location}-aiplatform.googleapis.com"}

    @cached_property
    def endpoints(self):
        require_sdk("google.cloud.aiplatform_v1", "gcp")
        from google.cloud import aiplatform_v1

        return aiplatform_v1.EndpointServiceClient(client_options=self._options())

    @cached_property
    def models(self):
        from google.cloud import aiplatform_v1

        return aiplatform_v1.ModelServiceClient(client_options=self._options())

    def upload_directory(self, source: Path, uri: str) -> None:
        from google.cloud import storage

        bucket_name, _, prefix = uri.removeprefix("gs://").partition("/")
        bucket = storage.Client(project=self.target.project).bucket(bucket_name)
        for name, path in model_files(source):
            bucket.blob(f"{prefix}/{name}").upload_from_filename(str(path))

    def get_endpoint(self, name: str):
        from google.api_core.exceptions import NotFound

        try:
            return self.endpoints.get_endpoint(name=name)
        except NotFound:
            return None

    def get_model(self, name: str):
        from google.api_core.exceptions import NotFound

        try:
            return self.models.get_model(name=name)
        except NotFound:
            return None


# ----------------------------------------------------------------------------- request objects


def parent(target: VertexTarget) -> str:
    return f"projects/{target.project}/locations/{target.location}"


def ids(endpoint: str, model_id: str) -> dict:
    """Deterministic ids, so a retry (or the terraform module) finds what an earlier run made. The endpoint id
    is numeric (9 digits, no leading zero): the only form both the API and terraform's google_vertex_ai_endpoint
    accept; the model id is ``<endpoint>-<model hash>``."""
    import hashlib

    number = 10**8 + int(hashlib.sha256(endpoint.encode()).hexdigest()[:12], 16) % (9 * 10**8)
    return {"endpoint": str(number), "model": resource_name(endpoint, model_id)}


def container_spec(target: VertexTarget):
    """The slimops image as Vertex AI's custom container: ``slimops serve`` in its Vertex mode, which reads
    AIP_HTTP_PORT, AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE (Vertex AI sets them from the port and routes here)."""
    from google.cloud import aiplatform_v1 as v1

    from slimops.serving.platforms import VERTEX_ROUTES

    return v1.ModelContainerSpec(image_uri=target.image_uri, args=list(SERVE_ARGS),
                                 env=[v1.EnvVar(name=k, value=v) for k, v in serving_environment("vertex").items()],
                                 ports=[v1.Port(container_port=VERTEX_ROUTES["port"])],
                                 predict_route=VERTEX_ROUTES["predict"], health_route=VERTEX_ROUTES["health"])


def upload_model_request(target: VertexTarget, model_resource_id: str, artifact_uri: str, endpoint_name: str):
    from google.cloud import aiplatform_v1 as v1

    model = v1.Model(display_name=model_resource_id, artifact_uri=artifact_uri, container_spec=container_spec(target),
                     labels={"slimops-endpoint": endpoint_name})
    return v1.UploadModelRequest(parent=parent(target), model_id=model_resource_id, model=model)


def create_endpoint_request(target: VertexTarget, endpoint_id: str):
    from google.cloud import aiplatform_v1 as v1

    return v1.CreateEndpointRequest(parent=parent(target), endpoint_id=endpoint_id,
                                    endpoint=v1.Endpoint(display_name=endpoint_id, labels={"slimops-endpoint": endpoint_id}))


def machine_spec(target: VertexTarget):
    from google.cloud import aiplatform_v1 as v1

    if target.machine_type in TPU_MACHINES or not target.accelerator_type:
        return v1.MachineSpec(machine_type=target.machine_type)
    return v1.MachineSpec(machine_type=target.machine_type,
                          accelerator_type=v1.AcceleratorType[target.accelerator_type],
                          accelerator_count=target.accelerator_count)


def deploy_model_request(target: VertexTarget, endpoint_name: str, model_name: str, deployed_id: str,
                         traffic_split: dict[str, int]):
    """traffic_split keys are deployed-model ids; "0" is the model this request deploys (Vertex's convention)."""
    from google.cloud import aiplatform_v1 as v1

    check_split(traffic_split)
    deployed = v1.DeployedModel(
        id=deployed_id, model=model_name, display_name=deployed_id,
        dedicated_resources=v1.DedicatedResources(machine_spec=machine_spec(target),
                                                  min_replica_count=target.min_replicas,
                                                  max_replica_count=target.max_replicas),
        service_account=target.service_account or "")
    return v1.DeployModelRequest(endpoint=endpoint_name, deployed_model=deployed, traffic_split=traffic_split)


def update_traffic_request(endpoint, traffic_split: dict[str, int]):
    from google.cloud import aiplatform_v1 as v1
    from google.protobuf import field_mask_pb2

    check_split(traffic_split)
    updated = v1.Endpoint(name=endpoint.name, display_name=endpoint.display_name, traffic_split=traffic_split)
    return v1.UpdateEndpointRequest(endpoint=updated, update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]))


def undeploy_model_request(endpoint_name: str, deployed_id: str, traffic_split: dict[str, int]):
    from google.cloud import aiplatform_v1 as v1

    return v1.UndeployModelRequest(endpoint=endpoint_name, deployed_model_id=deployed_id, traffic_split=traffic_split)


def check_split(split: dict[str, int]) -> None:
    total = sum(split.values())
    if total != 100:
        raise BadInput(f"Vertex AI traffic split {split} sums to {total}, not 100")


def deployed_id(model_id: str) -> str:
    """DeployedModel.id: 1-10 digits (the API's rule), derived from the model hash so a retry finds it."""
    return str(10**9 + int(model_id, 16) % (9 * 10**9))


def plan_requests(target: VertexTarget, endpoint_id: str, model_resource_id: str, new_id: str, old_id: str | None,
                  artifact_uri: str, endpoint_label: str, rollout: Rollout) -> list[tuple[str, object]]:
    """Every request of the rollout, in order, as aiplatform_v1 objects."""
    from google.cloud import aiplatform_v1 as v1

    endpoint_name = f"{parent(target)}/endpoints/{endpoint_id}"
    model_name = f"{parent(target)}/models/{model_resource_id}"
    requests: list[tuple[str, object]] = [("upload_model", upload_model_request(target, model_resource_id,
                                                                                 artifact_uri, endpoint_label))]
    if old_id is None:
        requests.append(("create_endpoint", create_endpoint_request(target, endpoint_id)))
        requests.append(("deploy_model", deploy_model_request(target, endpoint_name, model_name, new_id, {"0": 100})))
        return requests
    stages = rollout.stages()
    first = stages[0]
    requests.append(("deploy_model", deploy_model_request(
        target, endpoint_name, model_name, new_id, {"0": first, old_id: 100 - first} if first < 100 else {"0": 100})))
    endpoint = v1.Endpoint(name=endpoint_name, display_name=endpoint_id)
    for share in stages[1:]:
        split = {new_id: share, old_id: 100 - share} if share < 100 else {new_id: 100}
        requests.append(("update_traffic", update_traffic_request(endpoint, split)))
    if rollout.finish:
        requests.append(("undeploy_model", undeploy_model_request(endpoint_name, old_id, {new_id: 100})))
    return requests


def terraform_variables(target: VertexTarget, rollout: Rollout, endpoint: str, artifact_uri: str) -> dict:
    """Values for terraform/modules/vertex-endpoint: its variables.tf declares exactly these."""
    return {
        "name": endpoint,
        "endpoint_id": ids(endpoint, "")["endpoint"],
        "project": target.project,
        "region": target.location,
        "artifact_bucket_name": target.bucket,
    }


# ----------------------------------------------------------------------------- the deployment


def deploy(target: VertexTarget, rollout: Rollout, name: str, model_id: str, model_dir: Path, model_file: str,
           out_dir: Path) -> Deployed:
    """Upload the model directory and register the model, deploy it next to the one it replaces, shift traffic;
    the Terraform values go to ``out_dir/terraform.tfvars.json``."""
    from google.protobuf.json_format import MessageToDict

    hook = VertexHook(target)
    hook.check_credentials()
    resource_ids = ids(name, model_id)
    new_id = deployed_id(model_id)
    endpoint_name = f"{parent(target)}/endpoints/{resource_ids['endpoint']}"
    existing = hook.get_endpoint(endpoint_name)
    old = None
    if existing is not None:
        split = dict(existing.traffic_split)
        if split.get(new_id) == 100:
            return Deployed({"actions": [{"action": "reused", "kind": "endpoint", "name": endpoint_name}],
                             "requests": []}, {"endpoint": endpoint_name})
        serving = [d for d, share in split.items() if share > 0 and d != new_id]
        if len(serving) > 1:
            raise BadInput(f"Vertex AI endpoint {endpoint_name} splits traffic over {', '.join(serving)}, a rollout "
                           "slimops did not start; finish it first")
        old = serving[0] if serving else None
    artifact_uri = f"gs://{target.bucket}/{target.prefix}/{name}/{model_id}"
    requests = plan_requests(target, resource_ids["endpoint"], resource_ids["model"], new_id, old, artifact_uri, name,
                             rollout)
    if existing is not None:
        requests = [(kind, req) for kind, req in requests if kind != "create_endpoint"]
    actions = []
    execute_requests(hook, model_dir, artifact_uri, requests, actions, rollout.bake_seconds)
    write_tfvars(out_dir, terraform_variables(target, rollout, name, artifact_uri))
    record = {"actions": actions, "requests": [{"call": kind, "request": MessageToDict(type(req).pb(req))}
                                               for kind, req in requests]}
    return Deployed(record, {"endpoint": endpoint_name, "machine_type": target.machine_type})


def execute_requests(hook, model_dir: Path, artifact_uri: str, requests: list, actions: list[dict],
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
                hook.upload_directory(model_dir, artifact_uri)
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
