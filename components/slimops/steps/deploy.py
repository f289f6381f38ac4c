"""deploy: put a validated model behind an endpoint (SageMaker, Azure ML, Vertex AI) or render it for KServe.

Order matters, and it is the point of this step:
1. the gate: only a model whose gate_report.json passed and still matches its files goes anywhere (exit 3);
2. the config: target, instance type, traffic split and canary size were checked when it was parsed (exit 2);
3. credentials, then the target's own preflight (bucket, alarms): all before anything is created (exit 2);
4. only then the artifact upload and the endpoint calls, through the target's hook.

On SageMaker, Azure ML and Vertex AI the endpoint runs the slimops image itself (``target.image_uri``) in its
serving mode, ``slimops serve`` under that platform's container contract (slimops.serving.platforms), and the
artifact is the validated model directory as it is; KServe gets Triton manifests and a Triton model repository.

The output directory holds the deployed model's files (hard links), ``deployment.json`` (what was created,
reused, updated and deleted, and the traffic at each stage), the request bodies sent, and
``terraform.tfvars.json`` for the target's module under terraform/modules/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field

from slimops.deploy import SERVES, SERVES_WHY, Rollout, azureml, kserve, model_hash, sagemaker, vertex
from slimops.deploy.azureml import AzureMLTarget
from slimops.deploy.kserve import KServeTarget
from slimops.deploy.sagemaker import SageMakerTarget
from slimops.deploy.vertex import VertexTarget
from slimops.errors import BadInput
from slimops.manifest import MANIFEST, link_or_copy, write_json_atomic
from slimops.steps import Step, StepConfig, StepResult

Target = Annotated[Union[SageMakerTarget, AzureMLTarget, VertexTarget, KServeTarget], Field(discriminator="type")]
CLIENTS = {"sagemaker": sagemaker, "azureml": azureml, "vertex": vertex, "kserve": kserve}  # each has deploy()


class DeployConfig(StepConfig):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$",
                      description="endpoint name (usually the recipe's); cloud resources are <name>-<model hash>")
    target: Target = Field(description="type: sagemaker | azureml | vertex | kserve, and that target's options")
    rollout: Rollout = Field(default_factory=Rollout, description="strategy, canary split, bake time, finish")


class Deploy(Step):
    name = "deploy"
    summary = "validated model -> SageMaker / Azure ML / Vertex AI endpoint with canary, or KServe manifests"
    Config = DeployConfig
    accepts = ("onnx", "openvino")  # per target: SERVES (KServe's Triton takes ONNX only)
    role = "deploy"
    side_effects = True
    extra = "aws, azure or gcp (by target; none for kserve)"

    def run(self, ctx, config: DeployConfig) -> StepResult:
        from slimops.gate import require_passing_gate

        report = require_passing_gate(ctx.model_dir)  # GateFailed (exit 3) before anything else happens
        fmt = ctx.model_info.format
        if fmt != "openvino":
            ctx.require_onnx("deploy")
        elif fmt not in SERVES[config.target.type]:
            raise BadInput(f"target {config.target.type} serves {', '.join(SERVES[config.target.type])} models "
                           f"({SERVES_WHY.get(config.target.type, 'its runtime')}), and {ctx.model_dir} holds {fmt}; "
                           f"compile with search.serve_on: {config.target.type} so the search leaves {fmt} out")
        model_id = model_hash(report)
        record = {"target": config.target.type, "endpoint": config.name, "model_id": model_id,
                  "gate": {"passed": report["passed"], "checks": report.get("checks", [])},
                  "rollout": config.rollout.model_dump(), "stages": config.rollout.stages()}

        deployed = CLIENTS[config.target.type].deploy(config.target, config.rollout, config.name, model_id,
                                                      ctx.model_dir, ctx.model_info.file, ctx.out_dir)
        record.update(deployed.record)

        _carry_model(ctx.model_dir, ctx.out_dir)
        write_json_atomic(ctx.out_dir / "deployment.json", record)
        actions = record.get("actions", [])
        metrics = {"target": config.target.type, "model_id": model_id,
                   **{f"{kind}_count": sum(a["action"] == kind for a in actions)
                      for kind in ("created", "reused", "updated", "deleted", "rendered")}}
        return StepResult(model_info=ctx.model_info, metrics=metrics, details=deployed.details)


def _carry_model(src: Path, dst: Path) -> None:
    for path in src.rglob("*"):
        if path.is_file() and path.name not in (MANIFEST, "gate_report.json"):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)


STEP = Deploy
