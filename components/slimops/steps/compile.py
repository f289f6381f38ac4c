"""compile: ONNX Runtime graph optimisation (with the BERT transformer fusions), or OpenVINO IR."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Literal

from pydantic import Field, model_validator

from slimops.errors import BadInput
from slimops.steps import Step, StepConfig, StepResult


class CompileConfig(StepConfig):
    target: Literal["onnxruntime", "openvino"] = Field("onnxruntime", description="optimised ONNX for ORT, or OpenVINO IR (extra 'openvino')")
    fusions: Literal["auto", "bert", "none"] = Field("auto", description="transformer fusions: auto = bert for BERT-like text models")
    opt_level: Literal[0, 1, 2, 99] = Field(1, description="ORT level baked into the saved graph; 1 keeps it portable across providers")
    use_gpu: bool = Field(False, description="fuse for the CUDA provider (fp16 targets)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="openvino: the float precision the IR runs in "
                                               "(set explicitly: OpenVINO's default is bf16 on AVX512-BF16/AMX CPUs)")

    @model_validator(mode="after")
    def _check(self):
        if self.precision == "bf16" and self.target != "openvino":
            raise ValueError("precision bf16 is an OpenVINO mode: use target: openvino")
        return self


class Compile(Step):
    name = "compile"
    summary = "ONNX Runtime graph optimisation with transformer fusions (recorded), or OpenVINO IR"
    Config = CompileConfig
    accepts = ("onnx",)
    extra = "openvino (target: openvino)"

    @classmethod
    def writes(cls) -> str:
        return "onnx (openvino with target: openvino)"

    @classmethod
    def output_format(cls, config, input_format):
        return "openvino" if config.target == "openvino" else "onnx"

    def run(self, ctx, config: CompileConfig) -> StepResult:
        info = ctx.model_info
        ctx.require_onnx("compile")
        ctx.carry_files()
        if config.target == "openvino":
            return self._openvino(ctx, info, config.precision)
        from onnxruntime.transformers.optimizer import optimize_model

        bert_like = self._bert_shape(ctx)
        model_type = "bert" if (config.fusions == "bert" or (config.fusions == "auto" and bert_like)) else None
        heads, hidden = bert_like or (0, 0)
        with contextlib.redirect_stdout(io.StringIO()):
            if model_type:
                optimized = optimize_model(str(ctx.model_dir / info.file), model_type="bert", num_heads=heads,
                                           hidden_size=hidden, opt_level=config.opt_level, use_gpu=config.use_gpu)
            else:
                optimized = optimize_model(str(ctx.model_dir / info.file), model_type="bert",
                                           opt_level=max(config.opt_level, 1), only_onnxruntime=True,
                                           use_gpu=config.use_gpu)
        fused = {op: n for op, n in (optimized.get_fused_operator_statistics() or {}).items() if n}
        optimized.save_model_to_file(str(ctx.out_dir / "model.onnx"))
        out_info = info.model_copy(update={"file": "model.onnx"})
        return StepResult(model_info=out_info, details={"fusions": fused, "model_type": model_type or "generic"},
                          metrics={"fused_ops": sum(fused.values())})

    def _bert_shape(self, ctx):
        """(num_heads, hidden_size) from the HF config carried with a text model, else None."""
        config_path = ctx.model_dir / "config.json"
        if ctx.model_info.task == "tensor-classification" or not config_path.is_file():
            return None
        config = json.loads(config_path.read_text())
        if "num_attention_heads" not in config:
            return None
        return config["num_attention_heads"], config["hidden_size"]

    def _openvino(self, ctx, info, precision="fp32"):
        try:
            import openvino as ov
        except ImportError:
            raise BadInput("target 'openvino' needs the OpenVINO runtime: pip install 'slimops[openvino]'") from None
        model = ov.convert_model(str(ctx.model_dir / info.file))
        ov.save_model(model, str(ctx.out_dir / "model.xml"), compress_to_fp16=False)
        from slimops.handlers.openvino_model import compile_properties, ran_precision

        if info.precision not in ("fp32", "bf16"):
            precision = info.precision  # an int8 IR: its float ops run f32
        out_info = info.model_copy(update={"format": "openvino", "file": "model.xml", "precision": precision})
        ran = ran_precision(ov.Core().compile_model(str(ctx.out_dir / "model.xml"), "CPU",
                                                    compile_properties(precision)))
        if precision == "bf16" and ran != "bf16":
            from slimops import progress

            progress.note(f"compile: this CPU has no bf16 arithmetic, OpenVINO runs the bf16 IR in {ran}", "yellow")
        return StepResult(model_info=out_info,
                          details={"openvino": ov.__version__, "precision": precision, "precision_ran": ran})


STEP = Compile
