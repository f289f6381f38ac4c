"""export: Hugging Face or PyTorch model -> ONNX, with a parity check against the source."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pydantic import Field

from slimops.errors import BadInput
from slimops.handlers.info import TASK_HELP, ModelInfo, TaskName, describe
from slimops.handlers.runtime import library_error, load, sample_batch
from slimops.steps import Step, StepConfig, StepResult


class ExportConfig(StepConfig):
    opset: int = Field(17, ge=13, le=21, description="ONNX opset")
    tolerance: float = Field(1e-3, gt=0, description="max |source - onnx| on sample inputs before the export is an error")
    max_length: int = Field(128, ge=8, le=4096, description="text models: truncation length used at inference "
                            "(question-answering, when not set: the model's, 384)")
    task: TaskName = Field(None, description=TASK_HELP)


class Export(Step):
    name = "export"
    summary = "Hugging Face / PyTorch -> ONNX (optimum's exporter for HF, torch.onnx otherwise), parity-checked"
    Config = ExportConfig
    accepts = ("hf", "torch")
    produces = "onnx"

    def run(self, ctx, config: ExportConfig) -> StepResult:
        info = ctx.model_info
        if info.task == "question-answering" and "max_length" not in config.model_fields_set:
            # question + context need more tokens than one text: a QA model's own length (384)
            config = config.model_copy(update={"max_length": info.max_length})
        if info.format == "onnx":
            raise BadInput(f"{ctx.model_dir} is already ONNX; skip export or give the source model")
        if info.format not in ("hf", "torch"):
            raise BadInput(f"export cannot take a {info.format} model")
        if info.task == "causal-lm":
            from slimops.tasks.causal_lm import check_max_length

            check_max_length(ctx.model_dir, config.max_length)
        with _quiet_exporters():
            (self._export_hf if info.format == "hf" else self._export_torch)(ctx, config, info)
        out_info = describe(ctx.out_dir).model_copy(update={
            "max_length": config.max_length, "pooling": info.pooling, "normalize": info.normalize,
            "num_labels": info.num_labels, "input_shape": info.input_shape or describe(ctx.out_dir).input_shape,
            **({"task": info.task} if info.task == "causal-lm" else {}),  # its graph reads like a classifier's
        })
        diff = self._parity(ctx, info, out_info, config)
        if diff > config.tolerance:
            raise BadInput(f"exported ONNX differs from the source by {diff:.2e} > tolerance {config.tolerance:g}; "
                           "try another opset or raise 'tolerance'")
        return StepResult(model_info=out_info, metrics={"parity_max_abs_diff": diff})

    def _export_hf(self, ctx, config, info):
        from optimum.exporters.onnx import main_export

        # A causal LM: logits for every position, without past key values (slimops scores whole texts).
        task = {"text-classification": "text-classification", "token-classification": "token-classification",
                "tensor-classification": "image-classification",  # input pixel_values, output logits
                "question-answering": "question-answering", "causal-lm": "text-generation"}.get(info.task,
                                                                                                "feature-extraction")
        # optimum prints its own validation chatter; the parity check below is ours.
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                main_export(str(ctx.model_dir), output=ctx.out_dir, task=task, opset=config.opset,
                            library_name="transformers", local_files_only=True, do_validation=False,
                            trust_remote_code=False)
        except Exception as err:  # noqa: BLE001 - tokenizers raises bare Exception; any failure here is the input's
            # an architecture optimum cannot export, or a config that does not fit its weights
            raise BadInput(f"optimum cannot export {ctx.model_dir} ({library_error(err)}); check that transformers "
                           "supports the architecture in config.json") from None
        for extra in ctx.out_dir.glob("*.onnx_data"):
            extra.unlink(missing_ok=True)  # none expected for encoders; never keep stray files

    def _export_torch(self, ctx, config, info):
        import torch

        from slimops.handlers.runtime import TorchModule

        module = TorchModule(ctx.model_dir, info).model
        example = torch.from_numpy(sample_batch(info, 2))
        torch.onnx.export(module, (example,), str(ctx.out_dir / "model.onnx"), input_names=["input"],
                          output_names=["logits"], opset_version=config.opset, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    def _parity(self, ctx, info: ModelInfo, out_info: ModelInfo, config) -> float:
        batch = sample_batch(info, 4)
        source = load(ctx.model_dir, info.model_copy(update={"max_length": config.max_length}), ctx.threads)
        exported = load(ctx.out_dir, out_info, ctx.threads)
        a, b = source.predict(batch), exported.predict(batch)
        if info.task == "causal-lm":  # each text's NLL (nats); its top-1 ids may flip on a near-tie
            a, b = a[:, :2], b[:, :2]
        return float(np.max(np.abs(a - b)))


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters warn about tracing details on every call; the parity check is what tells a user
    whether the export is right, and it is recorded in the manifest."""
    import logging
    import warnings

    from optimum.exporters.onnx import main_export  # noqa: F401  (configures its loggers on import: first)
    from transformers.utils import logging as hf_logging

    level, optimum_logger = hf_logging.get_verbosity(), logging.getLogger("optimum")
    optimum_level = optimum_logger.level
    hf_logging.set_verbosity_error()
    optimum_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)
            optimum_logger.setLevel(optimum_level)


STEP = Export
