"""OpenVINO IR runtime (optional extra ``slimops[openvino]``)."""

from __future__ import annotations

import numpy as np

from slimops.handlers.base import Runnable, TextMixin
from slimops.tasks import causal_lm


def compile_properties(precision: str, threads: int | None = None) -> dict:
    """OpenVINO CPU properties for an IR of this precision: bf16 runs bf16, and so do the float ops of an
    ``int8-bf16`` IR (an NNCF INT8 model whose non-quantized ops run bf16); everything else (fp32, and an int8 IR
    whose non-quantized ops are float) runs f32, explicitly, because the default hint is bf16 on any CPU with
    AVX512-BF16 or AMX."""
    props = {"INFERENCE_PRECISION_HINT": "bf16" if precision in ("bf16", "int8-bf16") else "f32"}
    if threads:
        props["INFERENCE_NUM_THREADS"] = threads
    return props


def ran_precision(compiled) -> str:
    """The float precision a compiled OpenVINO model computes in: fp32 or bf16 (or f16), from its own property."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(name, name)


class OpenVinoModel(TextMixin, Runnable):
    def __init__(self, model_dir, info, threads=None):
        super().__init__(model_dir, info)
        import openvino as ov

        core = ov.Core()
        if threads:
            core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
        # Explicit precision: OpenVINO's default hint runs an fp32 IR in bf16 on CPUs with AVX512-BF16 or AMX,
        # which changes the outputs (0.03 on digits logits) without saying so.
        self.compiled = core.compile_model(str(self.model_dir / info.file), "CPU", compile_properties(info.precision))
        # What the plugin will compute in, read back from the compiled model (not what was asked for).
        self.precision_ran = ran_precision(self.compiled)
        if info.precision.startswith("int8"):
            self.precision_ran = f"int8/{self.precision_ran}"  # quantized ops int8, the rest in this float precision
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        if info.task != "tensor-classification":
            self._init_tokenizer()

    def predict(self, batch):
        if self.info.task == "tensor-classification":
            return np.asarray(self.compiled([np.asarray(batch, dtype=np.float32)])[0], dtype=np.float32)
        encoded = self.tokenize(batch)
        if self.info.task == "causal-lm" and "position_ids" in self.input_names:
            encoded["position_ids"] = causal_lm.position_ids(encoded["attention_mask"])
        feeds = {name: encoded[name].astype(np.int64) for name in self.input_names}
        result = self.compiled(feeds)
        outputs = [np.asarray(result[port], dtype=np.float32) for port in self.compiled.outputs]
        return self.finish_outputs(outputs, [port.get_any_name() for port in self.compiled.outputs], encoded)
