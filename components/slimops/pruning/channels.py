"""Channel pruning of a PyTorch module with torch-pruning's dependency graph.

Removing output channel i of a conv also removes input channel i of every layer that consumes it (the next
conv, its batch norm, the flattened linear after it, a depthwise conv's group); torch-pruning's dependency
graph finds those coupled groups, so the pruned module still runs. Importance is scored per group:
``magnitude`` (Lp norm of the group's weights) or ``taylor`` (|w * dL/dw| with gradients of the task loss on
calibration data, Molchanov et al. 2019). The layer that produces the model's output is never pruned.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slimops.errors import BadInput

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def output_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the conv/linear layers whose output is the model's output (the classifier head)."""
    produced: dict[int, str] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: produced.__setitem__(id(o), name))
             for name, module in model.named_modules() if isinstance(module, PRUNABLE)]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for hook in hooks:
            hook.remove()
    if id(out) in produced:
        return [produced[id(out)]]
    # The output went through something else (softmax, a reshape): keep the last conv/linear layer.
    return [name for name, module in model.named_modules() if isinstance(module, PRUNABLE)][-1:]


def excluded_layers(model: nn.Module, exclude: list[str]) -> list[str]:
    """Conv/linear layers named by ``exclude`` (a module name or the name of a block that holds them)."""
    names = [name for name, module in model.named_modules() if isinstance(module, PRUNABLE)]
    chosen = []
    for entry in exclude:
        matched = [n for n in names if n == entry or n.startswith(entry + ".")]
        if not matched:
            raise BadInput(f"prune exclude entry {entry!r} names no conv/linear layer (layers: {', '.join(names)}); "
                           "give module names such as 'features.0' or a block such as 'features'")
        chosen += matched
    return chosen


def widths(model: nn.Module) -> dict[str, int]:
    return {name: int(m.weight.shape[1] if getattr(m, "transposed", False) else m.weight.shape[0])
            for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def prune_channels(model: nn.Module, example: torch.Tensor, *, amount: float, scope: str, importance: str,
                   norm: int, exclude: list[str], calibration=None, max_layer_amount: float = 0.9) -> dict:
    """Prune ``model`` in place; returns what was kept per layer. ``calibration``: (inputs, labels or None)."""
    import torch_pruning as tp

    modules = dict(model.named_modules())
    keep_whole = output_layers(model, example) + excluded_layers(model, exclude)
    before = widths(model)
    candidates = [name for name in before if name not in keep_whole]
    if not candidates:
        raise BadInput(f"nothing to prune: every conv/linear layer is the output layer or excluded ({keep_whole}); "
                       "remove entries from 'exclude'")
    if scope == "layer":
        # torch-pruning keeps int(n * (1 - amount)) channels of a layer; zero would disconnect the model.
        emptied = [name for name in candidates if int(before[name] * (1 - amount)) < 1]
        if emptied:
            raise BadInput(f"amount {amount} would remove all {before[emptied[0]]} channels of layer {emptied[0]}; "
                           "lower 'amount' or add the layer to 'exclude'")
    if importance == "taylor":
        scorer = tp.importance.GroupTaylorImportance()
        taylor_gradients(model, calibration)
    else:
        scorer = tp.importance.GroupMagnitudeImportance(p=norm)
    pruner = tp.pruner.BasePruner(
        model, example, importance=scorer, pruning_ratio=amount, global_pruning=scope == "global",
        # Global ranking may favour one layer's channels; never let it take more than this share of a layer.
        max_pruning_ratio=max_layer_amount if scope == "global" else 1.0,
        ignored_layers=[modules[name] for name in keep_whole])
    pruner.step()
    model.zero_grad(set_to_none=True)
    after = widths(model)
    emptied = [name for name, width in after.items() if width == 0]
    if emptied:
        raise BadInput(f"amount {amount} removed every channel of layer {emptied[0]}; lower 'amount'")
    return {"output_layers": keep_whole[:1], "kept_whole": keep_whole,
            "layers": [{"name": name, "channels_before": before[name], "channels_after": after.get(name)}
                       for name in before]}


def taylor_gradients(model: nn.Module, calibration, batch_size: int = 64) -> str:
    """Accumulate dL/dw over the calibration data (cross-entropy on its labels, or on the model's own top-1)."""
    inputs, labels = calibration
    model.zero_grad(set_to_none=True)
    model.eval()  # batch-norm statistics stay those of the trained model
    x_all = torch.from_numpy(np.asarray(inputs, dtype=np.float32))
    y_all = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    for start in range(0, len(x_all), batch_size):
        x = x_all[start:start + batch_size]
        logits = model(x)
        target = y_all[start:start + batch_size] if y_all is not None else logits.detach().argmax(1)
        nn.functional.cross_entropy(logits, target, reduction="sum").backward()
    return "cross-entropy on labels" if y_all is not None else "cross-entropy on the model's own top-1"
