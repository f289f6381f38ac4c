"""KServe InferenceService manifests, rendered from the recipe (no cluster needed, nothing applied).

KServe's own canary: applying a changed predictor with ``canaryTrafficPercent: N`` starts a new revision on
N% of traffic while the last ready revision keeps the rest. The step writes three manifests:

- ``inferenceservice.yaml``: the new model at the canary share (or at 100% for ``all_at_once``);
- ``inferenceservice-promote.yaml``: the same predictor with no canaryTrafficPercent, i.e. 100%;
- ``inferenceservice-rollback.yaml``: canaryTrafficPercent 0, all traffic back to the previous revision;

plus ``model_repository/``, the Triton model repository to copy to ``storage_uri`` before applying.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator

from slimops.deploy import Deployed, Rollout, TargetConfig, write_model_repository

GPU_RESOURCE = "nvidia.com/gpu"


class KServeTarget(TargetConfig):
    type: Literal["kserve"]
    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    storage_uri: str = Field(description="where model_repository/ is copied to: s3://, gs://, pvc://, https://")
    runtime: str | None = Field("kserve-tritonserver", description="ServingRuntime name; none lets KServe pick one "
                                                                     "for the onnx model format")
    gpus: int = Field(0, ge=0, le=8, description="nvidia.com/gpu per replica")
    cpu: str = Field("1", pattern=r"^\d+(\.\d+)?m?$")
    memory: str = Field("2Gi", pattern=r"^\d+(Ki|Mi|Gi|Ti)?$")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    service_account: str | None = Field(None, description="service account holding the storage credentials")
    gpu_node_selector: dict[str, str] = Field(default_factory=dict, description="e.g. {nvidia.com/gpu.product: "
                                                                                  "NVIDIA-L4}")

    @field_validator("storage_uri")
    @classmethod
    def _storage_scheme(cls, value: str) -> str:
        if not re.match(r"^(s3|gs|pvc|https|hdfs|webhdfs)://.+", value) and not value.startswith("oci://"):
            raise ValueError(f"storage_uri {value!r} needs a scheme KServe's storage initializer reads: s3://, gs://, "
                             "pvc://, https://, oci://")
        return value


def inference_service(target: KServeTarget, name: str, model_id: str, canary_percent: int | None,
                      annotations: dict[str, str]) -> dict:
    """One InferenceService (serving.kserve.io/v1beta1) as a dict."""
    resources = {"cpu": target.cpu, "memory": target.memory}
    if target.gpus:
        resources[GPU_RESOURCE] = str(target.gpus)
    model = {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",
        "storageUri": target.storage_uri,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }
    if target.runtime:
        model["runtime"] = target.runtime
    predictor: dict = {"minReplicas": target.min_replicas, "maxReplicas": target.max_replicas}
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    if target.service_account:
        predictor["serviceAccountName"] = target.service_account
    if target.gpus and target.gpu_node_selector:
        predictor["nodeSelector"] = dict(target.gpu_node_selector)
    predictor["model"] = model
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": {"app.kubernetes.io/managed-by": "slimops", "slimops.io/model": model_id},
            "annotations": dict(annotations),
        },
        "spec": {"predictor": predictor},
    }


def render(target: KServeTarget, rollout: Rollout, name: str, model_id: str, annotations: dict[str, str]) -> dict:
    """file name -> YAML text of every manifest the step writes."""
    stage = rollout.stages()[0]
    first = None if stage == 100 else stage
    manifests = {
        "inferenceservice.yaml": inference_service(target, name, model_id, first, annotations),
        "inferenceservice-promote.yaml": inference_service(target, name, model_id, None, annotations),
        "inferenceservice-rollback.yaml": inference_service(target, name, model_id, 0, annotations),
    }
    header = "# Rendered by `slimops step deploy` (target kserve); edit the recipe, not this file.\n"
    return {file: header + yaml.safe_dump(doc, sort_keys=False) for file, doc in manifests.items()}


# ----------------------------------------------------------------------------- the deployment


def deploy(target: KServeTarget, rollout: Rollout, name: str, model_id: str, model_dir: Path, model_file: str,
           out_dir: Path) -> Deployed:
    """Write the manifests and the Triton model repository into ``out_dir``; nothing is applied."""
    manifests = render(target, rollout, name, model_id, {"slimops.io/model-id": model_id, "slimops.io/gate": "passed"})
    for file, text in manifests.items():
        (out_dir / file).write_text(text)
    write_model_repository(model_dir, model_file, name, out_dir / "model_repository")
    record = {"actions": [{"action": "rendered", "kind": "manifest", "name": file} for file in manifests],
              "storage_uri": target.storage_uri,
              "next": f"copy model_repository/ to {target.storage_uri}, then kubectl apply -f inferenceservice.yaml; "
                      "inferenceservice-promote.yaml moves to 100%, inferenceservice-rollback.yaml back to the "
                      "previous revision"}
    return Deployed(record, {"manifests": sorted(manifests), "gpus": target.gpus})
