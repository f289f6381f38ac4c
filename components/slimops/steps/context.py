"""What a step receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slimops.errors import BadInput
from slimops.handlers.info import ModelInfo
from slimops.manifest import MANIFEST, link_or_copy


@dataclass
class StepContext:
    model_dir: Path  # the input model (read only)
    model_info: ModelInfo
    out_dir: Path  # a temporary directory, renamed into place when the step succeeds
    inputs: dict[str, Path] = field(default_factory=dict)  # extra model inputs, e.g. "baseline"
    threads: int | None = None
    final_out: Path | None = None  # where out_dir will be renamed to (for state kept beside it, e.g. checkpoints)
    work_dir: Path | None = None  # private scratch space, removed after the step (never write into model_dir)

    def staged_model(self) -> Path:
        """The input's model file (with its external data) linked or copied into ``work_dir``, for libraries that
        write beside the file they are given."""
        source = self.model_dir / self.model_info.file
        if self.work_dir is None:
            return source
        stage = self.work_dir / "input"
        if not stage.is_dir():
            stage.mkdir()
            for path in self.model_dir.iterdir():
                if path.is_file() and path.name != MANIFEST:
                    link_or_copy(path, stage / path.name)
        return stage / self.model_info.file

    def require_onnx(self, step: str) -> None:
        """The graph steps (compile, quantize, factorize, pack) take a plain ONNX model."""
        fmt = self.model_info.format
        if fmt == "onnx":
            return
        if fmt == "onnx-packed":
            raise BadInput(f"{self.model_dir} is a packed artifact ({fmt}); {step} takes the unpacked ONNX model "
                           "(pack is the last step of a chain)")
        raise BadInput(f"{step} takes an ONNX model, got {fmt} in {self.model_dir}; run the export step first")

    def carry_files(self, skip_suffixes: tuple[str, ...] = (".onnx", ".onnx.data", ".safetensors", ".bin")) -> None:
        """Bring tokenizer and config files along to the output (hard links when possible)."""
        for path in self.model_dir.rglob("*"):
            rel = path.relative_to(self.model_dir)
            if not path.is_file() or path.name == MANIFEST or path.name.endswith(skip_suffixes) or path.name == "gate_report.json":
                continue
            target = self.out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(path, target)


@dataclass
class StepResult:
    model_info: ModelInfo  # what the output directory holds
    metrics: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # step-specific facts for the manifest (fusions, float nodes, ...)
    gate_passed: bool | None = None  # only validate sets this
    gate_reasons: list[str] = field(default_factory=list)
    gate_verdict: str | None = None  # "pass", "fail" or "inconclusive" (validate); None: pass/fail from gate_passed
