"""Unstructured magnitude pruning of a safetensors weights file: zero the smallest |w| of linear and conv weights.

Same shapes, same speed: the zeros pay off only in sparse storage (the pack step). Embeddings, norms and biases
are never touched.
"""

from __future__ import annotations

import math
from pathlib import Path

from slimops.errors import BadInput
from slimops.pruning import Pruned


def prune_weights_file(source: Path, target: Path, sparsity: float, scope: str, exclude: list[str]) -> Pruned:
    """Write ``source`` with ``sparsity`` of its selected weights zeroed to ``target``; measure what was written."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    try:
        with safe_open(str(source), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        state = load_file(str(source))
    except Exception as err:  # safetensors raises SafetensorError / OSError on a damaged file
        raise BadInput(f"cannot read weights {source} ({type(err).__name__}: {str(err)[:200]}); "
                       "re-save them with safetensors") from None
    metadata.setdefault("format", "pt")  # transformers refuses safetensors without it

    selected, excluded = select_tensors(state, exclude)
    unmatched = [s for s in exclude if not any(s in name for name in state)]
    if unmatched:
        raise BadInput(f"prune exclude entry {unmatched[0]!r} matches no tensor in {source}; "
                       "fix the name (exclude takes substrings of tensor names)")
    if not selected:
        why = (f"all {len(excluded)} candidate weight tensors match exclude {exclude}"
               if excluded else "it has no 2-D (linear) or 4-D (conv) '.weight' tensors outside embeddings")
        raise BadInput(f"nothing to prune in {source}: {why}; "
                       "remove entries from 'exclude' or give a model with linear/conv layers")

    masks = magnitude_masks({name: state[name] for name in selected}, sparsity, scope)
    for name, mask in masks.items():
        state[name] = state[name].masked_fill(mask, 0)

    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # never write through a hard link carried from the input
    save_file({k: v.contiguous() for k, v in state.items()}, str(target), metadata=metadata)

    metrics, tensors = measure(load_file(str(target)), selected)
    return Pruned(metrics={"target_sparsity": sparsity, **metrics},
                  details={"tensors_pruned": len(selected), "excluded": excluded, "tensors": tensors})


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
