"""Re-shape a freshly built module to the tensors of a weights file (a structurally pruned model).

The weights file is the record: a pruned ``Conv2d(8, 16)`` saved as a [9, 8, 3, 3] weight is rebuilt as a
``Conv2d(8, 9)`` before ``load_state_dict``. Nothing has to be stored beside the weights, so the steps that
re-save a module (train, distill) keep a pruned model loadable without knowing it was pruned, and nothing is
unpickled. Only the layer types below are re-shaped; any other mismatch is left to ``load_state_dict``, which
reports it.
"""

from __future__ import annotations

import torch
from torch import nn

SUPPORTED = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def fit_to_state(model: nn.Module, state: dict) -> list[str]:
    """Give ``model``'s layers the shapes of the tensors in ``state``; the names of the re-shaped modules."""
    changed: dict[str, nn.Module] = {}
    modules = dict(model.named_modules())
    for name, tensor in state.items():
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        if not isinstance(module, SUPPORTED):
            continue
        if attr in module._parameters and module._parameters[attr] is not None:
            current = module._parameters[attr]
            if current.shape != tensor.shape:
                module._parameters[attr] = nn.Parameter(torch.empty(tensor.shape, dtype=current.dtype),
                                                        requires_grad=current.requires_grad)
                changed[module_name] = module
        elif attr in module._buffers and module._buffers[attr] is not None:
            current = module._buffers[attr]
            if current.shape != tensor.shape:
                module._buffers[attr] = torch.empty(tensor.shape, dtype=current.dtype)
                changed[module_name] = module
    for module in changed.values():
        _fix_attributes(module)
    return sorted(changed)


def _fix_attributes(module: nn.Module) -> None:
    """Make the shape attributes (read by forward, repr and exporters) agree with the new tensors."""
    if isinstance(module, nn.modules.conv._ConvNd):
        first, per_group = module.weight.shape[0], module.weight.shape[1]
        if module.transposed:  # [in, out/groups, ...]
            module.in_channels, module.out_channels = first, per_group * module.groups
            return
        if module.groups > 1 and module.groups == module.in_channels:
            # Depthwise: pruning removes whole groups (one input channel each); the channel multiplier stays.
            module.groups = first // (module.out_channels // module.groups)
        module.out_channels, module.in_channels = first, per_group * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        source = module.running_mean if module.running_mean is not None else module.weight
        module.num_features = source.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = module.weight.shape[0]
