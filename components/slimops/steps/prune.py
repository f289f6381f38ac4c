"""prune: zero the smallest weights of a Hugging Face or PyTorch model (unstructured magnitude pruning).

Weights are read and written with safetensors only (never a pickle). The output has the same format and
the same files as the input, with the weights file rewritten; what it reached is measured by reading the
written file back, not taken from the masks.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from slimops.errors import BadInput
from slimops.handlers.runtime import dump_architecture
from slimops.steps import Step, StepConfig, StepResult

NOTE = ("unstructured zeros save no time in dense kernels: the pruned model runs as fast as the dense one "
        "and is as large on disk; size wins come from the pack step (sparse storage), speed from structured "
        "pruning (whole channels/heads removed)")


class PruneConfig(StepConfig):
    method: Literal["magnitude"] = Field(
        "magnitude", description="how weights are chosen: magnitude = zero the smallest |w| (unstructured)")
    sparsity: float = Field(gt=0, lt=1, description="fraction of the selected weights set to zero, in (0, 1)")
    scope: Literal["global", "layer"] = Field(
        "global", description="global: one |w| threshold over all selected tensors; layer: the same fraction in each")
    exclude: list[str] = Field(
        default_factory=list, description="tensor-name substrings to leave dense (e.g. 'classifier', 'layer.0.')")

    @field_validator("exclude")
    @classmethod
    def _no_empty(cls, value: list[str]) -> list[str]:
        if any(not part for part in value):
            raise ValueError("an empty exclude entry would match every tensor; remove it")
        return value


class Prune(Step):
    name = "prune"
    summary = "Magnitude pruning of linear/conv weights (Hugging Face or PyTorch in, same format out)"
    Config = PruneConfig

    def run(self, ctx, config: PruneConfig) -> StepResult:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        info = ctx.model_info
        if info.format in ("onnx", "openvino"):
            raise BadInput(f"{ctx.model_dir} is an {info.format} model; prune runs before export: "
                           "give the source model (Hugging Face or PyTorch directory)")
        if info.format not in ("hf", "torch"):
            raise BadInput(f"prune cannot take a {info.format} model; give a Hugging Face or PyTorch directory")
        source = ctx.model_dir / info.file
        try:
            with safe_open(str(source), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            state = load_file(str(source))
        except Exception as err:  # safetensors raises SafetensorError / OSError on a damaged file
            raise BadInput(f"cannot read weights {source} ({type(err).__name__}: {str(err)[:200]}); "
                           "re-save them with safetensors") from None
        metadata.setdefault("format", "pt")  # transformers refuses safetensors without it

        selected, excluded = select_tensors(state, config.exclude)
        unmatched = [s for s in config.exclude if not any(s in name for name in state)]
        if unmatched:
            raise BadInput(f"prune exclude entry {unmatched[0]!r} matches no tensor in {source}; "
                           "fix the name (exclude takes substrings of tensor names)")
        if not selected:
            why = (f"all {len(excluded)} candidate weight tensors match exclude {config.exclude}"
                   if excluded else "it has no 2-D (linear) or 4-D (conv) '.weight' tensors outside embeddings")
            raise BadInput(f"nothing to prune in {source}: {why}; "
                           "remove entries from 'exclude' or give a model with linear/conv layers")

        masks = magnitude_masks({name: state[name] for name in selected}, config.sparsity, config.scope)
        for name, mask in masks.items():
            state[name] = state[name].masked_fill(mask, 0)

        ctx.carry_files()
        target = ctx.out_dir / info.file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)  # never write through a hard link carried from the input
        save_file({k: v.contiguous() for k, v in state.items()}, str(target), metadata=metadata)
        if info.format == "torch" and not (ctx.out_dir / "architecture.json").is_file():
            dump_architecture(ctx.out_dir / "architecture.json", info)

        metrics, tensors = measure(load_file(str(target)), selected)
        metrics = {"target_sparsity": config.sparsity, **metrics}
        details = {"method": config.method, "scope": config.scope, "tensors_pruned": len(selected),
                   "excluded": excluded, "tensors": tensors, "note": NOTE}
        return StepResult(model_info=info, metrics=metrics, details=details)


def select_tensors(state: dict, exclude: list[str]) -> tuple[list[str], list[str]]:
    """Weights of linear (2-D) and convolution (4-D) layers, embeddings never; ``exclude`` left dense."""
    selected, excluded = [], []
    for name, tensor in state.items():
        if not name.endswith(".weight") or tensor.ndim not in (2, 4) or not tensor.is_floating_point():
            continue
        if "embed" in name.lower():  # word/position embeddings, embed_tokens, ...
            continue
        (excluded if any(part in name for part in exclude) else selected).append(name)
    return selected, excluded


def magnitude_masks(tensors: dict, sparsity: float, scope: str) -> dict:
    """Boolean masks (True = zero it) of the ``floor(sparsity * n)`` smallest |w|, over all tensors or per tensor."""
    import torch

    if scope == "layer":
        return {name: smallest_mask(t.detach().abs().float().flatten(), math.floor(sparsity * t.numel())).view(t.shape)
                for name, t in tensors.items()}
    flat = torch.cat([t.detach().abs().float().flatten() for t in tensors.values()])
    mask = smallest_mask(flat, math.floor(sparsity * flat.numel()))
    masks, start = {}, 0
    for name, t in tensors.items():
        masks[name] = mask[start:start + t.numel()].view(t.shape)
        start += t.numel()
    return masks


def smallest_mask(values, k: int):
    """Mask of exactly ``k`` smallest entries of a 1-D tensor (ties at the threshold broken by position)."""
    import torch

    mask = torch.zeros(values.shape, dtype=torch.bool)
    if k <= 0:
        return mask
    threshold = torch.kthvalue(values, k).values
    mask = values < threshold
    ties = torch.nonzero(values == threshold).flatten()[: k - int(mask.sum())]
    mask[ties] = True
    return mask


def measure(state: dict, pruned: list[str]) -> tuple[dict, list[dict]]:
    """Sparsity as written: over the pruned tensors, and over every floating-point tensor of the state dict."""
    tensors = []
    pruned_zeros = pruned_total = 0
    for name in pruned:
        t = state[name]
        zeros = int((t == 0).sum())
        pruned_zeros += zeros
        pruned_total += t.numel()
        tensors.append({"name": name, "shape": list(t.shape), "sparsity": round(zeros / t.numel(), 6)})
    floats = [t for t in state.values() if t.is_floating_point()]
    params_total = sum(t.numel() for t in floats)
    zero_params = sum(int((t == 0).sum()) for t in floats)
    metrics = {
        "sparsity": pruned_zeros / pruned_total,
        "overall_sparsity": zero_params / params_total,
        "params_total": params_total,
        "zero_params": zero_params,
        "pruned_params": pruned_total,
    }
    return metrics, tensors


STEP = Prune
