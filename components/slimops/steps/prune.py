"""prune: remove weights (unstructured) or whole structures (channels, heads, FFN neurons, layers).

- ``mode: unstructured`` zeroes the smallest |w| of linear/conv weights. Same shapes, same speed: the
  zeros pay off only in sparse storage (the pack step).
- ``mode: channels`` (PyTorch modules) removes conv/linear channels through torch-pruning's dependency graph;
  ``heads`` / ``ffn`` / ``layers`` (Hugging Face BERT-family encoders) remove attention heads, feed-forward
  neurons or whole layers. These change shapes, so the model does fewer multiply-adds; every such prune
  reports parameters and MACs before/after *and* latency before/after, measured side by side.

Weights are read and written with safetensors only (never a pickle). The output has the input's format and
files: a pruned PyTorch module is rebuilt from the shapes in its weights file (slimops.pruning.reshape), a
pruned encoder's ``config.json`` records its new layout (``pruned_heads``, ``intermediate_size``,
``num_hidden_layers``). Recovery: chain ``prune -> distill`` with the pruned model as the student.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from slimops.data import DataSpec
from slimops.errors import BadInput
from slimops.handlers.runtime import dump_architecture
from slimops.steps import Step, StepConfig, StepResult

NOTE = ("unstructured zeros save no time in dense kernels: the pruned model runs as fast as the dense one "
        "and is as large on disk; size wins come from the pack step (sparse storage), speed from structured "
        "pruning (whole channels/heads removed)")
STRUCTURED = ("channels", "heads", "ffn", "layers")


class PruneConfig(StepConfig):
    mode: Literal["unstructured", "channels", "heads", "ffn", "layers"] = Field(
        "unstructured", description="unstructured: zero single weights; channels (PyTorch conv/linear), heads, ffn, "
                                    "layers (Hugging Face BERT-family encoders): remove whole structures")
    method: Literal["magnitude"] = Field(
        "magnitude", description="unstructured: how weights are chosen (magnitude = zero the smallest |w|)")
    sparsity: float | None = Field(
        None, gt=0, lt=1, description="unstructured: fraction of the selected weights set to zero, in (0, 1)")
    amount: float | None = Field(
        None, gt=0, lt=1, description="structured: fraction of channels / heads / FFN neurons / layers removed, in (0, 1)")
    scope: Literal["global", "layer"] = Field(
        "global", description="global: one ranking over all layers; layer: the same fraction in each layer "
                              "(ffn is always per layer: one width for all layers)")
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="structured: magnitude = Lp norm of the weights; taylor = |w * dL/dw| on calibration data")
    norm: Literal[1, 2] = Field(2, description="magnitude importance: L1 or L2 norm")
    calibration: DataSpec | None = Field(None, description="taylor: data fed through the model for gradients; "
                                                            "also the inputs timed before/after")
    calibration_samples: int = Field(128, ge=1, description="examples of calibration data used")
    keep_layers: list[int] | None = Field(None, description="layers: indices of the encoder layers to keep")
    drop_layers: list[int] | None = Field(None, description="layers: indices of the encoder layers to drop")
    exclude: list[str] = Field(
        default_factory=list, description="unstructured: tensor-name substrings left dense; channels / heads: "
                                          "module names (e.g. 'features.0', 'encoder.layer.0') left whole")
    max_layer_amount: float = Field(0.9, gt=0, lt=1, description="channels, global scope: most of one layer removed")
    timing_samples: int = Field(128, ge=1, description="structured: inputs timed before/after (batch 32 and batch 1)")
    timing_rounds: int = Field(3, ge=1, description="structured: alternating before/after throughput rounds")
    latency_runs: int = Field(30, ge=1, description="structured: batch-1 requests timed per model")
    macs_seq_len: int = Field(128, ge=1, description="heads/ffn/layers: sequence length at which MACs are counted")

    @field_validator("exclude")
    @classmethod
    def _no_empty(cls, value: list[str]) -> list[str]:
        if any(not part for part in value):
            raise ValueError("an empty exclude entry would match every tensor; remove it")
        return value

    @model_validator(mode="after")
    def _fits_mode(self):
        if self.mode == "unstructured":
            if self.sparsity is None:
                raise ValueError("mode unstructured needs 'sparsity' (the fraction of weights to zero, in (0, 1))")
            for key in ("amount", "keep_layers", "drop_layers", "calibration"):
                if getattr(self, key) is not None:
                    raise ValueError(f"'{key}' is for structured pruning; set mode: channels, heads, ffn or layers")
            if self.importance != "magnitude":
                raise ValueError("unstructured pruning ranks by magnitude; taylor is for structured modes")
            return self
        if self.sparsity is not None:
            raise ValueError(f"mode {self.mode} removes structures: give 'amount' (fraction removed), not 'sparsity'")
        if self.mode != "layers" and (self.keep_layers is not None or self.drop_layers is not None):
            raise ValueError("keep_layers / drop_layers are for mode: layers")
        if self.keep_layers is not None and self.drop_layers is not None:
            raise ValueError("give keep_layers or drop_layers, not both")
        named_layers = self.keep_layers is not None or self.drop_layers is not None
        if named_layers and self.amount is not None:
            raise ValueError("give 'amount' or keep_layers / drop_layers, not both")
        if self.amount is None and not named_layers:
            raise ValueError(f"mode {self.mode} needs 'amount' (fraction removed, in (0, 1))"
                             + (" or keep_layers / drop_layers" if self.mode == "layers" else ""))
        if self.mode == "layers" and self.amount is not None and self.importance != "taylor":
            raise ValueError("ranking layers needs importance: taylor with calibration data (every layer has the "
                             "same shapes and similar norms, so magnitude says nothing); or name keep_layers / drop_layers")
        if self.importance == "taylor" and self.calibration is None:
            raise ValueError("importance taylor needs 'calibration' data (its gradients score the units)")
        if self.exclude and self.mode in ("ffn", "layers"):
            raise ValueError(f"exclude is not supported by mode {self.mode}"
                             + (" (every layer keeps the same FFN width)" if self.mode == "ffn" else ""))
        return self


class Prune(Step):
    name = "prune"
    summary = ("Unstructured magnitude pruning, or structured: conv channels (PyTorch), attention heads / FFN "
               "neurons / layers (Hugging Face encoders), with MACs and latency before/after")
    Config = PruneConfig
    accepts = ("hf", "torch")

    def run(self, ctx, config: PruneConfig) -> StepResult:
        info = ctx.model_info
        if info.format in ("onnx", "openvino", "onnx-packed"):
            raise BadInput(f"{ctx.model_dir} is an {info.format} model; prune runs before export: "
                           "give the source model (Hugging Face or PyTorch directory)")
        if info.format not in ("hf", "torch"):
            raise BadInput(f"prune cannot take a {info.format} model; give a Hugging Face or PyTorch directory")
        ctx.carry_files()  # tokenizer, config and architecture files; the pruned weights are written beside them
        if config.mode in STRUCTURED:
            from slimops.pruning.structured import prune_structured

            pruned = prune_structured(ctx.model_dir, info, config, ctx.out_dir, ctx.threads)
            return StepResult(model_info=info, metrics=pruned.metrics, details=pruned.details)

        from slimops.pruning.unstructured import prune_weights_file

        pruned = prune_weights_file(ctx.model_dir / info.file, ctx.out_dir / info.file, config.sparsity, config.scope,
                                    config.exclude)
        if info.format == "torch" and not (ctx.out_dir / "architecture.json").is_file():
            dump_architecture(ctx.out_dir / "architecture.json", info)
        details = {"method": config.method, "scope": config.scope, **pruned.details, "note": NOTE}
        return StepResult(model_info=info, metrics=pruned.metrics, details=details)


STEP = Prune
