"""OpenVINO IR runtime (optional extra ``slimops[openvino]``)."""

from __future__ import annotations

import numpy as np

from slimops.handlers.base import Runnable, TextMixin


class OpenVinoModel(TextMixin, Runnable):
    def __init__(self, model_dir, info, threads=None):
        super().__init__(model_dir, info)
        import openvino as ov

        core = ov.Core()
        if threads:
            core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
        # Explicit precision: OpenVINO's default hint runs an fp32 IR in bf16 on CPUs with AVX512-BF16 or AMX,
        # which changes the outputs (0.03 on digits logits) without saying so.
        precision = "bf16" if info.precision == "bf16" else "f32"
        self.compiled = core.compile_model(str(self.model_dir / info.file), "CPU", {"INFERENCE_PRECISION_HINT": precision})
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        if info.task != "tensor-classification":
            self._init_tokenizer()

    def predict(self, batch):
        if self.info.task == "tensor-classification":
            return np.asarray(self.compiled([np.asarray(batch, dtype=np.float32)])[0], dtype=np.float32)
        encoded = self.tokenize(batch)
        feeds = {name: encoded[name].astype(np.int64) for name in self.input_names}
        output = np.asarray(self.compiled(feeds)[0], dtype=np.float32)
        return self.finish(output, encoded["attention_mask"])
