"""quantize: ONNX Runtime quantization. Dynamic INT8, static INT8 (QDQ), weight-only INT4, FP16,
and an accuracy-aware search that keeps the most sensitive nodes in float until the metric holds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slimops.data import DataSpec, load_for_model
from slimops.evaluate import check_inputs
from slimops.quantization import cpu_has_vnni
from slimops.steps import Step, StepConfig, StepResult


class AccuracyTarget(StepConfig):
    data: DataSpec = Field(description="data the metric is checked on while searching (a subset of the eval data)")
    max_metric_drop: float = Field(0.3, ge=0, description="points of task metric the quantized model may lose")
    max_float_nodes: int = Field(16, ge=1, description="give up after keeping this many nodes in float")
    sensitivity_samples: int = Field(64, ge=4, description="examples used to rank node sensitivity")


class QuantizeConfig(StepConfig):
    mode: Literal["dynamic", "static", "int4", "fp16"] = Field("dynamic", description="dynamic/static INT8, weight-only INT4 (MatMulNBits), FP16 (GPU)")
    per_channel: bool = Field(True, description="per-channel weight scales (INT8)")
    reduce_range: bool | Literal["auto"] = Field("auto", description="7-bit weights; auto = on when this CPU lacks VNNI (u8 x s8 products saturate on AVX2)")
    op_types: list[str] | None = Field(None, description="op types to quantize (default: ORT's choice for the mode)")
    exclude_nodes: list[str] = Field(default_factory=list, description="node names kept in float")
    matmul_const_b_only: bool = Field(True, description="dynamic: quantize only MatMuls with a constant weight (skip attention score matmuls)")
    calibration: DataSpec | None = Field(None, description="static: data fed through the model to calibrate activation ranges")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="static: range estimator")
    calibration_samples: int = Field(128, ge=1, description="static: examples used for calibration")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="static: activation type (uint8 x int8 is the VNNI fast path)")
    block_size: int = Field(32, ge=16, description="int4: weights per quantization block (power of two)")
    int4_min_weights: int = Field(65536, ge=1, description="int4: only MatMuls with at least this many weights")
    int4_embeddings: bool = Field(False, description="int4: also embedding tables (Gather) with at least "
                                  "int4_min_weights values, e.g. a causal LM's token embeddings")
    accuracy: AccuracyTarget | None = Field(None, description="accuracy-aware: keep sensitive nodes float until the metric holds")

    @model_validator(mode="after")
    def _check(self):
        if self.mode == "static" and self.calibration is None:
            raise ValueError("static quantization needs 'calibration' data")
        if self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two")
        return self


class Quantize(Step):
    name = "quantize"
    summary = "ONNX Runtime quantization: dynamic/static INT8, INT4 weight-only, FP16; optional accuracy-aware search"
    Config = QuantizeConfig
    accepts = ("onnx",)
    produces = "onnx"

    def resolve(self, config: QuantizeConfig) -> QuantizeConfig:
        """Settle the defaults that depend on the machine or the mode, so the manifest and the cache key say what ran."""
        update = {}
        if config.reduce_range == "auto":
            update["reduce_range"] = not cpu_has_vnni()
        if config.op_types is None and config.mode == "static":
            # Only layers with weights: quantizing Add/Softmax of a transformer (the attention mask spans
            # down to float32 min) wrecks it (MiniLM STS-B Spearman 93.6 -> 42 on a dev subset).
            update["op_types"] = ["Conv", "Gemm", "MatMul"]
        return config.model_copy(update=update) if update else config

    def run(self, ctx, config: QuantizeConfig) -> StepResult:
        from slimops.quantization import count_quantized, quantize_model

        info = ctx.model_info
        ctx.require_onnx("quantize")
        source = ctx.staged_model()  # ONNX Runtime writes <model>-inferred.onnx beside the file it is given
        target = ctx.out_dir / "model.onnx"
        ctx.carry_files()
        calibration = load_for_model(config.calibration, ctx.model_dir) if config.calibration else None
        if calibration is not None:
            check_inputs(info, calibration, "calibration data")
        details: dict = {"cpu_vnni": cpu_has_vnni()}
        if config.accuracy is None:
            quantize_model(source, target, config, config.exclude_nodes, ctx.model_dir, calibration)
        else:
            from slimops.quantization.accuracy import accuracy_aware

            details.update(accuracy_aware(source, target, config, calibration, ctx.model_dir, info, ctx.threads))
        precision = {"dynamic": "int8", "static": "int8", "int4": "int4", "fp16": "fp16"}[config.mode]
        out_info = info.model_copy(update={"file": "model.onnx", "precision": precision})
        size = sum(p.stat().st_size for p in ctx.out_dir.glob("model.onnx*"))
        source_size = sum(p.stat().st_size for p in ctx.model_dir.glob(info.file + "*") if p.is_file())
        details["quantized_nodes"] = count_quantized(target)
        return StepResult(model_info=out_info, metrics={"size_mb": size / 1e6, "source_size_mb": source_size / 1e6},
                          details=details)


STEP = Quantize
