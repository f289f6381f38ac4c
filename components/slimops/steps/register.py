"""register: put a validated model into the MLflow model registry, alias ``challenger``.

Takes a validate step's output (the candidate files + gate_report.json + manifest.json). Only a model whose
gate passed and whose files still match the report is registered (exit 3 otherwise). The files are logged as
plain run artifacts (no MLflow flavour, nothing pickled); the version is tagged with the gate verdict, the
gate report's sha256, the files' digest, the manifest's sha256 and the lineage.

OUT holds the same model files and gate report (so promote and deploy can check them again) and records the
registration (name, version, run, tracking URI) in its manifest's details.
"""

from __future__ import annotations

from pydantic import Field

from slimops.manifest import link_or_copy, read_manifest
from slimops.steps import Step, StepConfig, StepResult

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class RegistryLocation(StepConfig):
    registry_dir: str | None = Field(None, description="directory for registry.json and audit.jsonl (and the "
                                                       "default SQLite store); default <run dir>/registry")
    tracking_uri: str | None = Field(None, description="any MLflow tracking URI; default "
                                                       "sqlite:///<registry_dir>/mlflow.db")

    def open(self, final_out):
        from slimops.registry import Registry, default_registry_dir

        return Registry.open(self.registry_dir or default_registry_dir(final_out), self.tracking_uri)


class RegisterConfig(RegistryLocation):
    name: str = Field(pattern=MODEL_NAME_PATTERN, description="registered model name")


def carry_validated(ctx) -> None:
    """The validated files and their gate report, hard-linked into OUT (the manifest is the step's own)."""
    for path in ctx.model_dir.rglob("*"):
        if path.is_file() and path.name != "manifest.json":
            target = ctx.out_dir / path.relative_to(ctx.model_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)


class Register(Step):
    name = "register"
    summary = "Register a validated model in the MLflow model registry (files + gate report + lineage tags), alias challenger"
    Config = RegisterConfig
    role = "registry"
    side_effects = True
    extra = "registry"

    def run(self, ctx, config: RegisterConfig) -> StepResult:
        from slimops.gate import require_passing_gate

        report = require_passing_gate(ctx.model_dir)
        registry = config.open(ctx.final_out or ctx.out_dir)
        record = registry.register(ctx.model_dir, config.name, report, read_manifest(ctx.model_dir))
        carry_validated(ctx)
        return StepResult(model_info=ctx.model_info,
                          metrics={"registered_version": int(record["version"])},
                          details={"registration": record})


STEP = Register
