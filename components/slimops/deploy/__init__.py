"""Deploy targets: one module per cloud, each a complete client: its typed target config, a thin client wrapper
("hook"), and ``deploy()``, which checks credentials and the target's preflight, packages the validated model,
then creates or updates the endpoint (or renders manifests, for KServe). The ``deploy`` step checks the gate
before calling it and writes ``deployment.json`` after. Cloud SDKs are imported only inside the target module
that needs them, and only when that target runs.

What every target shares lives here: the rollout policy (canary / linear / all at once), the traffic-split
checks, deterministic resource names, and the serving artifacts:

- SageMaker, Azure ML and Vertex AI run the slimops image itself in its serving mode (``slimops serve``, which
  meets each platform's container contract: slimops.serving.platforms). The artifact is the validated model
  directory as it is (ONNX model, tokenizer, manifest, gate report); ``serving_container`` says how each
  platform starts the image.
- KServe runs Triton over the Open Inference Protocol: the artifact is a Triton model repository.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimops.errors import BadInput
from slimops.manifest import MANIFEST, digest_of, link_or_copy, write_json_atomic

# The model formats each target serves. SageMaker, Azure ML and Vertex AI run `slimops serve` (ONNX Runtime and the
# OpenVINO runtime); KServe runs Triton with its onnxruntime backend (triton_config), which takes ONNX only. `local`
# is `slimops serve` on this machine. compile target auto leaves out of its search what its serve_on cannot take.
SERVES: dict[str, tuple[str, ...]] = {
    "local": ("onnx", "openvino"),
    "sagemaker": ("onnx", "openvino"),
    "azureml": ("onnx", "openvino"),
    "vertex": ("onnx", "openvino"),
    "kserve": ("onnx",),
}
SERVES_WHY = {"kserve": "Triton's onnxruntime backend"}

MAX_CANARY_PERCENT = 50  # a canary is a minority of traffic; more than half is a cut-over, not a canary
LINEAGE_FILES = (MANIFEST, "gate_report.json")


class TargetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Traffic(BaseModel):
    """A traffic split in percent between the new model (challenger) and the one it replaces (champion)."""

    model_config = ConfigDict(extra="forbid")

    challenger: int = Field(ge=0, le=100, description="percent of requests to the new model")
    champion: int = Field(ge=0, le=100, description="percent of requests to the model being replaced")

    @model_validator(mode="after")
    def _sums_to_100(self):
        total = self.challenger + self.champion
        if total != 100:
            raise ValueError(f"traffic percentages challenger {self.challenger} + champion {self.champion} = {total}; "
                             "they must sum to 100")
        return self


class Rollout(BaseModel):
    """How traffic moves from the current model to the new one once the new one is up at 0%."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["canary", "linear", "all_at_once"] = Field(
        "canary", description="canary: `canary` split, bake, then 100%; linear: +linear_step_percent per stage; "
                              "all_at_once: straight to 100%")
    canary: Traffic = Field(default_factory=lambda: Traffic(challenger=10, champion=90),
                            description=f"canary stage split; the challenger takes at most {MAX_CANARY_PERCENT}%")
    linear_step_percent: int = Field(20, ge=1, le=MAX_CANARY_PERCENT, description="linear: traffic added per stage")
    bake_seconds: int = Field(600, ge=0, le=24 * 3600, description="time each stage serves before the next one")
    finish: bool = Field(True, description="go to 100% and remove the previous model; false stops at the first stage")

    @model_validator(mode="after")
    def _canary_is_a_minority(self):
        if self.canary.challenger > MAX_CANARY_PERCENT:
            raise ValueError(f"a canary takes at most {MAX_CANARY_PERCENT}% of traffic, got challenger "
                             f"{self.canary.challenger}%; use strategy all_at_once for a cut-over")
        if self.strategy == "canary" and self.canary.challenger == 0:
            raise ValueError("a canary of 0% sends the new model no traffic; give canary.challenger 1-50")
        return self

    def stages(self) -> list[int]:
        """The challenger's share at each stage, ending at 100 (or at the first stage when finish is false)."""
        if self.strategy == "all_at_once":
            shares = [100]
        elif self.strategy == "canary":
            shares = [self.canary.challenger, 100]
        else:
            shares = list(range(self.linear_step_percent, 100, self.linear_step_percent)) + [100]
        return shares if self.finish else shares[:1]


@dataclass
class Deployed:
    """What a target's ``deploy()`` did: ``record`` goes into deployment.json, ``details`` into the manifest."""

    record: dict  # actions (created, reused, updated, deleted, rendered) and what the target reports
    details: dict


def write_tfvars(out_dir: Path, values: dict) -> None:
    """``terraform.tfvars.json`` for the target's module under terraform/modules/."""
    write_json_atomic(out_dir / "terraform.tfvars.json", values)


def model_hash(gate_report: dict) -> str:
    """A short, stable id of the validated files: the same artifact always gets the same resource names."""
    return digest_of(gate_report["candidate_files"])[:10]


def resource_name(base: str, model_id: str, max_len: int = 63) -> str:
    """``<base>-<model hash>``: deterministic, so a retried deploy finds what an earlier try created."""
    base = re.sub(r"[^a-z0-9-]", "-", base.lower()).strip("-")
    return f"{base[:max_len - len(model_id) - 1].rstrip('-')}-{model_id}"


def missing_credentials(cloud: str, what: str, fix: str) -> BadInput:
    return BadInput(f"no {cloud} credentials found ({what}); {fix}. Nothing was created")


def require_sdk(module: str, extra: str):
    """Import an optional SDK, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BadInput(f"this deploy target needs {module}, which is not installed; "
                       f"pip install 'slimops[{extra}]'") from None


# ----------------------------------------------------------------------------- serving artifacts

SERVE_ARGS = ("serve",)  # the image's entrypoint is `slimops`: the container runs `slimops serve`


def serving_environment(platform: str) -> dict[str, str]:
    """The container environment that puts ``slimops serve`` in ``platform``'s mode (auto detection would find
    it too: this makes it explicit)."""
    from slimops.serving.platforms import PLATFORM_ENV

    return {PLATFORM_ENV: platform}


def model_files(model_dir: Path) -> list[tuple[str, Path]]:
    """Every file of the model directory, by its path inside it: what the serving image reads."""
    return [(path.relative_to(model_dir).as_posix(), path) for path in sorted(Path(model_dir).rglob("*"))
            if path.is_file()]


def write_model_tarball(model_dir: Path, dest: Path) -> Path:
    """model.tar.gz of the model directory, its files at the archive's root (SageMaker unpacks it into
    /opt/ml/model), byte-identical for identical inputs (fixed mtimes and owners) so its hash, and the object
    key derived from it, are stable across retries."""
    def info(arcname: str, size: int) -> tarfile.TarInfo:
        entry = tarfile.TarInfo(arcname)
        entry.size, entry.mtime, entry.mode, entry.uid, entry.gid = size, 0, 0o644, 0, 0
        entry.uname = entry.gname = ""
        return entry

    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, path in model_files(model_dir):
                with open(path, "rb") as handle:
                    tar.addfile(info(arcname, os.path.getsize(path)), handle)
    return dest


def triton_layout(model_dir: Path, model_file: str, name: str) -> list[tuple[str, Path]]:
    """KServe's artifact: archive path -> file for a Triton model repository holding this ONNX model directory.

    ``<name>/config.pbtxt`` names the ONNX Runtime backend and lets Triton read inputs and outputs from the
    graph; the model and every file beside it (external data, tokenizer) go in version ``1/`` as
    ``model.onnx``; the manifest and gate report travel beside config.pbtxt so the deployed artifact can be
    traced to its validation.
    """
    entries = []
    for path in sorted(Path(model_dir).rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(model_dir).as_posix()
        if rel in LINEAGE_FILES:
            entries.append((f"{name}/{rel}", path))
        elif rel == model_file:
            entries.append((f"{name}/1/model.onnx", path))
        else:
            entries.append((f"{name}/1/{rel}", path))
    return entries


def triton_config(name: str) -> bytes:
    # max_batch_size 0 + no tensors listed: Triton's auto-complete reads them from the ONNX graph, so dynamic
    # batch axes exported by slimops stay as they are.
    return f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'.encode()


def write_model_repository(model_dir: Path, model_file: str, name: str, dest: Path) -> Path:
    """The Triton model repository as a directory (hard links: no copy of the weights)."""
    for arcname, path in triton_layout(model_dir, model_file, name):
        target = dest / arcname
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, target)
    (dest / name / "config.pbtxt").write_bytes(triton_config(name))
    return dest
